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
    ranking carries no cancellation error; the winners' squared distances are then
    summed directly rather than squared back from cdist's square root.
    """
    acc = torch.float64 if z.dtype == torch.float64 else torch.float32
    z, codebook = z.to(acc), codebook.to(acc)
    d = torch.cdist(z, codebook, compute_mode="donot_use_mm_for_euclid_dist")
    if k == 1:
        idx = d.argmin(dim=1, keepdim=True)  # first index among equal minima
    else:
        idx = torch.sort(d, dim=1, stable=True).indices[:, :k].contiguous()
    dist = (z.unsqueeze(1) - codebook[idx]).square().sum(-1)
    return order_by_distance(idx, dist)


def order_by_distance(idx: torch.Tensor, dist: torch.Tensor):
    """Sorts each row's (idx, dist) pairs by distance, ties by lower index.

    Candidates ranked by one formula (cdist's square roots, a kernel's expanded form)
    and then given exact distances can land out of order by a rounding: this restores
    the contract's order. idx: (N, k) int64, dist: (N, k).
    """
    if idx.shape[1] == 1:
        return idx, dist
    idx, order = idx.sort(dim=1)
    dist, order2 = dist.gather(1, order).sort(dim=1, stable=True)
    return idx.gather(1, order2), dist
