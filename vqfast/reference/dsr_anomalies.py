"""Reference feature-space anomalies of DSR: the authors' per-image loop.

For each image: the distances of every latent feature to every code, the codes in
ascending order up to k = clamp(int(s K) + 1, 1, K - 1), the nearest int(0.05 K)
dropped, one of the rest drawn uniformly per position; inside the (max-pooled) mask the
quantised vector is replaced by that code. The authors draw with torch.randint and rank
with torch.topk; here the draw is the counter-based uniform of (seed, position) and the
order a stable sort (equal distances by lower index), so the batched path can be
compared token for token.
"""

import torch
import torch.nn.functional as F

from vqfast.reference.restore_step import counter_uniform


def rank_bounds(strength: torch.Tensor, num_codes: int, skip_fraction: float):
    """(B,) strengths in (0, 1] -> (skip, (B,) int64 k): ranks [skip, k) are drawn from."""
    k = (strength.double() * num_codes).floor().long() + 1
    k = k.clamp(1, max(num_codes - 1, 1))
    skip = int(num_codes * skip_fraction)
    if bool((k <= skip).any()):
        raise ValueError(f"strength {float(strength.min()):.3g} leaves no code after skipping the nearest {skip} of "
                         f"K={num_codes}")
    return skip, k


def pooled_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """(B, 1, H, W) {0, 1} mask -> (B, 1, h, w) by max-pooling with the integer ratio."""
    ry, rx = mask.shape[2] // size[0], mask.shape[3] // size[1]
    return F.max_pool2d(mask.float(), (ry, rx))


def feature_anomalies(z: torch.Tensor, quantized: torch.Tensor, codebook: torch.Tensor, mask: torch.Tensor,
                      strength: torch.Tensor, seeds: torch.Tensor, skip_fraction: float = 0.05) -> torch.Tensor:
    """z, quantized (B, D, h, w); codebook (K, D); mask (B, 1, H, W); strength (B,) in
    (0, 1]; seeds (B,) int64 -> (B, D, h, w) quantized with the masked vectors replaced."""
    b, d, h, w = z.shape
    skip, k = rank_bounds(strength, codebook.shape[0], skip_fraction)
    m = pooled_mask(mask, (h, w))
    out = []
    for i in range(b):
        flat = z[i].permute(1, 2, 0).reshape(-1, d)
        dist = torch.cdist(flat.double(), codebook.double(), compute_mode="donot_use_mm_for_euclid_dist")
        allowed = torch.sort(dist, dim=1, stable=True).indices[:, :int(k[i])][:, skip:]
        u = counter_uniform(seeds[i].expand(h * w), torch.arange(h * w, device=z.device))
        pick = (u * allowed.shape[1]).floor().long()
        codes = codebook[allowed[torch.arange(h * w, device=z.device), pick]]
        replaced = codes.view(h, w, d).permute(2, 0, 1)
        out.append(m[i] * replaced + (1 - m[i]) * quantized[i])
    return torch.stack(out)
