"""DSR's feature-space anomalies, batched: the per-image loop of
vqfast.reference.dsr_anomalies for a whole minibatch, drawing the same codes."""

import torch

from vqfast.ops import code_at_rank
from vqfast.reference.dsr_anomalies import pooled_mask, rank_bounds
from vqfast.reference.restore_step import counter_uniform


def feature_anomalies(z: torch.Tensor, quantized: torch.Tensor, codebook: torch.Tensor, mask: torch.Tensor,
                      strength: torch.Tensor, seeds: torch.Tensor, skip_fraction: float = 0.05,
                      backend: str = "auto") -> torch.Tensor:
    """DSR's feature-space anomalies for a whole minibatch at once.

    Args:
        z: (B, D, h, w) unquantised features (the ranking is by distance from them,
            as in the authors' code).
        quantized: (B, D, h, w) their quantised vectors (replaced inside the mask).
        codebook: (K, D).
        mask: (B, 1, H, W) {0, 1} at image resolution, max-pooled to (h, w).
        strength: (B,) s in (0, 1]: codes are drawn among the k = clamp(int(s K) + 1, 1,
            K - 1) nearest, after the nearest int(skip_fraction K).
        seeds: (B,) int64: position p of image b draws with counter_uniform(seeds[b], p).

    Returns:
        (B, D, h, w): ``quantized`` with every vector inside the pooled mask replaced by
        a code drawn uniformly among its allowed ranks; equal to
        vqfast.reference.dsr_anomalies.feature_anomalies (the per-image loop).

    Only the masked positions are ranked (the others are discarded by the blend): on
    the CPU they are gathered first, and code_at_rank selects each one's code without a
    sort. On CUDA every position is ranked, so the call never waits on the host.
    """
    b, d, h, w = z.shape
    skip, k = rank_bounds(strength, codebook.shape[0], skip_fraction)
    m = pooled_mask(mask, (h, w)).view(b, h * w) > 0
    positions = torch.arange(h * w, device=z.device)
    u = counter_uniform(seeds.view(b, 1).expand(b, h * w), positions.view(1, -1).expand(b, h * w))
    rank = skip + (u * (k.view(b, 1) - skip).to(u.dtype)).floor().long()  # (B, h*w)
    flat = z.detach().permute(0, 2, 3, 1).reshape(b * h * w, d).to(codebook.dtype)
    out = quantized.permute(0, 2, 3, 1).reshape(b * h * w, d).clone()
    if z.is_cuda:
        codes = codebook[code_at_rank(flat, codebook, rank.view(-1), backend)]
        out = torch.where(m.view(-1, 1), codes.to(out.dtype), out)
    else:
        rows = m.view(-1).nonzero()[:, 0]
        out[rows] = codebook[code_at_rank(flat[rows], codebook, rank.view(-1)[rows], backend)].to(out.dtype)
    return out.view(b, h, w, d).permute(0, 3, 1, 2)
