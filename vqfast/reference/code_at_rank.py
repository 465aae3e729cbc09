"""Reference rank selection: every distance, a stable sort, then the code at the rank."""

import torch


def code_at_rank(z: torch.Tensor, codebook: torch.Tensor, rank: torch.Tensor) -> torch.Tensor:
    """The code at 0-based position ``rank[n]`` of row n's ascending distance order.

    Args:
        z: (N, D) floating point.
        codebook: (K, D), same dtype.
        rank: (N,) int64 in [0, K).

    Returns:
        (N,) int64 code indices; equal distances rank by lower index.

    Builds the (N, K) distance matrix and sorts it by design: it is the plain version.
    Differences are taken directly (cdist without the matmul expansion), so the order
    carries no cancellation error.
    """
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    d = torch.cdist(z.to(acc), codebook.to(acc), compute_mode="donot_use_mm_for_euclid_dist")
    order = torch.sort(d, dim=1, stable=True).indices
    return order.gather(1, rank.view(-1, 1)).view(-1)
