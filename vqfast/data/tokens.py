"""Token grids of a trained VQ model, computed once, as a dataset for the priors."""

import math

import torch
from tqdm import tqdm


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
