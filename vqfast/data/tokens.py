"""Token grids of a trained VQ model, computed once, as a dataset for the priors."""

import math
from typing import Optional

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqfast.data.augment import Augment, EpochKeyed


@torch.no_grad()
def encode_dataset(vq_model, dataset, batch_size: int = 32, device=None, progress: bool = False) -> torch.Tensor:
    """Code indices (N, h, w) int64 (on the CPU) of every item's "image" under a VQ
    autoencoder in eval mode."""
    device = device or next(vq_model.parameters()).device
    vq_model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts = [vq_model.encode_indices(b["image"].to(device)).cpu()
             for b in tqdm(loader, desc="encoding tokens", disable=not progress)]
    if not parts:
        raise ValueError("dataset is empty")
    return torch.cat(parts)


def mask_tokens(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """A masked grid in one int64 tensor (what the Trainer feeds a prior): a masked token
    t is stored as -1 - t. ILTM's rounds train on these."""
    return torch.where(mask, -1 - tokens, tokens)


def unmask_tokens(grid: torch.Tensor):
    """The inverse of mask_tokens: (tokens, mask) with mask True where a token is masked."""
    mask = grid < 0
    return torch.where(mask, -1 - grid, grid), mask


def prior_loss(prior, grids: torch.Tensor) -> dict:
    """Mean NLL per token (nats) of (B, h, w) grids under ``prior`` (with nll(tokens,
    key_mask)); tokens masked by mask_tokens are left out of the mean and passed as the
    key mask, so no position attends to them."""
    tokens, mask = unmask_tokens(grids)
    masked = bool(mask.any())
    nll = prior.nll(tokens, mask if masked else None)
    keep = (~mask).to(nll.dtype)
    loss = (nll * keep).sum() / keep.sum().clamp_min(1) if masked else nll.mean()
    return {"loss": loss, "bits_per_token": loss / math.log(2)}


class TokenGrids(torch.utils.data.Dataset):
    """Items {"tokens": (h, w) int64} from a (N, h, w) tensor, for
    Trainer(..., input_key="tokens"); with ``masks`` (N, h, w) bool, the masked tokens
    are encoded by mask_tokens (left out of the loss and of attention as keys)."""

    def __init__(self, tokens: torch.Tensor, masks: torch.Tensor = None):
        if tokens.dim() != 3 or tokens.dtype != torch.int64:
            raise ValueError(f"tokens must be (N, h, w) int64, got {tuple(tokens.shape)} {tokens.dtype}")
        if tokens.shape[0] == 0:
            raise ValueError("tokens is empty (N=0)")
        if masks is not None:
            if masks.shape != tokens.shape or masks.dtype != torch.bool:
                raise ValueError(f"masks must be {tuple(tokens.shape)} bool, got {tuple(masks.shape)} {masks.dtype}")
            tokens = mask_tokens(tokens, masks)
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"tokens": self.tokens[i]}


class MaskedGrids(EpochKeyed):
    """Items {"tokens": (h, w) int64} of (N, h, w) grids with a random set of positions
    hidden (encoded by mask_tokens), for Trainer(..., input_key="tokens").

    Each draw is keyed by (seed, epoch, index): a ratio r = cos(pi/2 u), u ~ U[0, 1) (the
    cosine schedule of masked-token image models, which hides much more often than
    little), and ceil(r T) >= 1 positions drawn without replacement. A validation set
    (never given an epoch by the Trainer) keeps epoch 0's draws, so its loss compares
    across epochs."""

    def __init__(self, tokens: torch.Tensor, seed: int = 0):
        if tokens.dim() != 3 or tokens.dtype != torch.int64 or tokens.shape[0] == 0:
            raise ValueError(f"tokens must be non-empty (N, h, w) int64, got {tuple(tokens.shape)} {tokens.dtype}")
        super().__init__(tokens)
        self.tokens, self.seed = tokens, seed

    def __getitem__(self, i: int) -> dict:
        key = ((self.seed * 1_000_003 + (self.epoch or 0)) * 1_000_003 + i) % 2**63
        g = torch.Generator().manual_seed(key)
        grid = self.tokens[i]
        t = grid.numel()
        ratio = math.cos(math.pi / 2 * float(torch.rand((), generator=g, dtype=torch.float64)))
        n = min(t, max(1, math.ceil(ratio * t)))
        hidden = torch.zeros(t, dtype=torch.bool)
        hidden[torch.randperm(t, generator=g)[:n]] = True
        return {"tokens": mask_tokens(grid, hidden.view(grid.shape))}


class AugmentedGrids(EpochKeyed):
    """Items {"tokens": (h, w) int64} of ``images`` (items {"image": (C, H, W)}) encoded by
    ``vq_model`` after ``augment``, drawn per (seed, epoch, index): the Performer paper's
    prior trains on augmented data "to avoid extra overfitting" (its appendix B), the
    augmentations being the VQ-VAE's. ``masks`` (N, h, w) bool (ILTM's): warped with their
    image, and a token is masked (mask_tokens) where any of its pixels is. Without an
    epoch (validation) the plain images are encoded.

    Encoding per item costs one VQ encoder pass per image and epoch: 0.74 s for 16 images
    of 128 x 128 against 1.13 s for the Performer's training step on their grids
    (benchmarks/augmented_grids_cost.py, RESULTS.md), so a time-budgeted prior sees about
    40 % fewer epochs. A cache could not save it: every epoch draws new augmentations."""

    def __init__(self, images, vq_model, augment: Augment, masks: Optional[torch.Tensor] = None):
        super().__init__(images)
        if masks is not None and masks.shape[0] != len(images):
            raise ValueError(f"masks hold {masks.shape[0]} grids for {len(images)} images")
        self.vq_model, self.augment, self.masks = vq_model.eval(), augment, masks

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        size = item["image"].shape[-2:]
        if self.masks is not None:  # the token mask at image resolution, warped like the image
            item["mask"] = F.interpolate(self.masks[i][None, None].float(), size=tuple(size), mode="nearest")[0, 0]
        if self.epoch is not None:
            item = self.augment(item, self.epoch * len(self.dataset) + i)
        with torch.no_grad():
            tokens = self.vq_model.encode_indices(item["image"][None])[0]
        if self.masks is None:
            return {"tokens": tokens}
        hidden = F.adaptive_max_pool2d(item["mask"][None, None].float(), tuple(tokens.shape))[0, 0] > 0
        return {"tokens": mask_tokens(tokens, hidden)}
