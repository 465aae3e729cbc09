"""Reference nearest-codebook search: every distance, then argmin / stable sort."""

import torch


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, k: int = 1):
    """Exact k nearest codes by squared L2 distance.

    Args:
        z: (N, D) floating point.
        codebook: (K, D), same dtype as ``z``.
        k: number of neighbours, 1 <= k <= K.

    Returns:
        indices (N, k) int64, ascending distance, ties broken by lower index;
        distances (N, k) squared L2 in float32 (float64 for float64 inputs).

    Materialises the (N, K) distance matrix by design: it is the plain version.
    Differences are taken directly (no ||z||^2 + ||c||^2 - 2 z.c expansion), so the
    distances carry no cancellation error.
    """
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    d = torch.cdist(z.to(acc), codebook.to(acc), compute_mode="donot_use_mm_for_euclid_dist").square()
    if k == 1:
        dist, idx = d.min(dim=1, keepdim=True)  # first index among equal minima
    else:
        dist, idx = torch.sort(d, dim=1, stable=True)
        dist, idx = dist[:, :k], idx[:, :k]
    return idx, dist
