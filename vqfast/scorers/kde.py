"""KDE abnormality maps (the VQ-VAE + transformer paper's scoring): resample the tokens
the prior finds unlikely, decode several restorations (optionally each several times
with the decoder's dropout on), and at every pixel estimate how likely the original
value is under a Gaussian kernel density of the restored values.

- Tokens with probability below ``t`` (NLL > -log t) are resampled by the Pixel-wise
  pass (vqfast.scorers.restoration: KV-cached or recurrent for GPT-2 and the Performer,
  batched full forwards otherwise), S restorations per image, each decoded D times.
- Per pixel and channel: density p = mean_n N(x; s_n, h^2) over the S D samples, with
  Silverman's bandwidth h = 1.06 sigma n^(-1/5) (sigma the samples' standard deviation,
  ddof 1) floored at ``bandwidth_floor``; abnormality -log p, summed over channels.
- Only inside the smoothed resampling mask (the tokens some restoration changed or whose
  NLL under the original tokens exceeds -log t, upsampled to the image, Gaussian-smoothed with ``mask_sigma``, above ``mask_cutoff``); outside it the
  constant ``outside`` (default: log(bandwidth_floor sqrt(2 pi)) per channel, the
  abnormality of a value every sample matches at the floor bandwidth, the least the
  floor allows).
- Everything is vectorised over pixels and samples (the public implementation loops
  over pixels with scikit-learn's KernelDensity); the tests hold it to
  scipy.stats.gaussian_kde per pixel.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F

from vqfast.profiling import time_stages
from vqfast.scorers.base import ScoreBatch, gaussian_blur, reduce_map
from vqfast.scorers.restoration import PixelWiseScorer


def kde_abnormality(images: torch.Tensor, samples: torch.Tensor, bandwidth_floor: float = 0.01) -> torch.Tensor:
    """images (B, C, H, W), samples (B, N, C, H, W), N >= 2 -> (B, H, W) float32:
    sum over channels of -log of the Gaussian KDE density of each pixel's value under
    its N samples (Silverman's bandwidth, floored)."""
    if samples.dim() != 5 or samples.shape[0] != images.shape[0] or samples.shape[2:] != images.shape[1:]:
        raise ValueError(f"samples must be (B, N, C, H, W) for images {tuple(images.shape)}, got {tuple(samples.shape)}")
    n = samples.shape[1]
    if n < 2:
        raise ValueError(f"the KDE needs at least 2 samples per pixel, got {n}")
    if not bandwidth_floor > 0:
        raise ValueError(f"bandwidth_floor must be > 0, got {bandwidth_floor}")
    s, x = samples.double(), images.double()
    h = (1.06 * s.std(dim=1) * n ** -0.2).clamp_min(bandwidth_floor)  # (B, C, H, W)
    z = (x.unsqueeze(1) - s) / h.unsqueeze(1)
    # log mean_n N(x; s_n, h^2), by logsumexp: far-off values stay finite instead of -inf
    log_p = torch.logsumexp(-0.5 * z.square(), dim=1) - math.log(n) - torch.log(h * math.sqrt(2 * math.pi))
    return (-log_p).sum(1).float()


def resampling_mask(token_mask: torch.Tensor, size, sigma: float) -> torch.Tensor:
    """token_mask (B, h, w) bool -> (B, H, W) float32 in [0, 1]: upsampled (nearest) and
    Gaussian-smoothed with ``sigma`` pixels (0: not smoothed)."""
    up = F.interpolate(token_mask.float().unsqueeze(1), size=tuple(size), mode="nearest").squeeze(1)
    return gaussian_blur(up, sigma)


class KDEScorer(PixelWiseScorer):
    """Args: vq_model, prior, ``probability`` t (tokens with p < t are resampled; the
    NLL threshold is -log t), restorations S, dropout_decodes D (decodes per restoration;
    D > 1 turns the decoder's dropout on, with masks drawn from the image's seed), the
    mask (``mask_sigma``, ``mask_cutoff``), ``bandwidth_floor``, ``outside``, the image
    score's ``reduction``/``topk`` (default "mean", as the restoration scorers'), ``seed``, ``decode_precision`` and ``prior_precision`` as
    the restoration scorers'. The paper's anchor uses S = 20 and D = 20.

    score(images (B, C, H, W)) -> ScoreBatch(reduction of the map, abnormality map (B, H, W)).
    """

    def __init__(self, vq_model, prior, probability: float, restorations: int = 5, dropout_decodes: int = 1,
                 mask_sigma: float = 2.0, mask_cutoff: float = 0.05, bandwidth_floor: float = 0.01,
                 outside: Optional[float] = None, reduction: str = "mean", topk: float = 0.01, fast: bool = True,
                 op_backend: str = "auto", seed: int = 0, decode_precision: str = "float32",
                 prior_precision: str = "float32"):
        if not 0 < probability < 1:
            raise ValueError(f"probability must be in (0, 1), got {probability}")
        if dropout_decodes < 1 or restorations * dropout_decodes < 2:
            raise ValueError(f"need dropout_decodes >= 1 and at least 2 samples per pixel, got {restorations} "
                             f"restorations x {dropout_decodes} decodes")
        super().__init__(vq_model, prior, -math.log(probability), restorations=restorations, reduction=reduction,
                         topk=topk, fast=fast, op_backend=op_backend, seed=seed, decode_precision=decode_precision,
                         prior_precision=prior_precision)
        self.probability, self.dropout_decodes = probability, dropout_decodes
        self.mask_sigma, self.mask_cutoff, self.bandwidth_floor = mask_sigma, mask_cutoff, bandwidth_floor
        self.outside = outside

    def _decode_samples(self, restored: torch.Tensor, seeds: torch.Tensor, image_shape) -> torch.Tensor:
        """restored (B, S, h, w) -> (B, S D, C, H, W) decodings, clamped to [0, 1]."""
        b, s = restored.shape[:2]
        if self.dropout_decodes == 1:
            return self.decode(restored)
        flat = restored.flatten(0, 1)
        dropouts = [m for m in self.vq_model.modules() if isinstance(m, torch.nn.Dropout)]
        if not dropouts:
            raise ValueError("dropout_decodes > 1 needs a VQ model whose decoder has dropout")
        outs = []
        with torch.random.fork_rng(devices=[flat.device] if flat.is_cuda else []):
            for m in dropouts:
                m.train()
            try:
                for n in range(b):  # masks drawn from the image's seed: a pure function of the image
                    torch.manual_seed(int(seeds[n]) % 2**63)
                    outs.append(torch.stack([self.vq_model.decode_grids(restored[n], self.decode_precision,
                                                                        distinct=False).clamp(0, 1)
                                             for _ in range(self.dropout_decodes)], 1))
            finally:
                for m in dropouts:
                    m.eval()
        return torch.stack(outs).reshape(b, s * self.dropout_decodes, *image_shape)

    @torch.no_grad()
    def score(self, images: torch.Tensor, seeds: Optional[torch.Tensor] = None) -> ScoreBatch:
        self._eval()
        if seeds is None:
            seeds = self.image_seeds(images)
        tokens = self._tokens(images)
        restored = self.restore(tokens, seeds)
        samples = self._decode_samples(restored, seeds, tuple(images.shape[1:]))
        abnormality = kde_abnormality(images, samples, self.bandwidth_floor)
        # resampled: changed by some restoration, or over the threshold under the original tokens
        resampled = (restored != tokens[:, None]).any(1) | (self.prior_nll(tokens) > self.threshold)
        inside = resampling_mask(resampled, images.shape[-2:], self.mask_sigma) > self.mask_cutoff
        outside = self.outside
        if outside is None:
            outside = images.shape[1] * math.log(self.bandwidth_floor * math.sqrt(2 * math.pi))
        maps = torch.where(inside, abnormality, torch.full_like(abnormality, outside))
        return ScoreBatch(reduce_map(maps, self.reduction, self.topk), maps)

    @torch.no_grad()
    def profile(self, images: torch.Tensor, repeats: int = 3):
        """Timings of each stage: encode (VQ), restoration, decodes, the KDE map, and
        the whole score call."""
        self._eval()
        shape = tuple(images.shape[1:])
        seeds = self.image_seeds(images)
        tokens = self._tokens(images)
        restored = self.restore(tokens, seeds)
        samples = self._decode_samples(restored, seeds, shape)
        # one warm-up call a stage: restoring is the slow part, and its first call is not special
        return time_stages({
            "encode (VQ)": lambda: self.vq_model.encode_indices(images),
            "restore (prior + sampling)": lambda: self.restore(tokens, seeds),
            "decode (VQ, every sample)": lambda: self._decode_samples(restored, seeds, shape),
            "KDE map": lambda: kde_abnormality(images, samples, self.bandwidth_floor),
            "score (total)": lambda: self.score(images, seeds)}, images.device, repeats, warmup=1)
