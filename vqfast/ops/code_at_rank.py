"""The code at a given rank of each row's distance order (DSR's feature-space anomalies)."""

import torch

from vqfast import _ext
from vqfast.ops._checks import check_finite, check_same_device, check_tensor
from vqfast.ops._dispatch import _warn_once, resolve_backend
from vqfast.reference.code_at_rank import code_at_rank as _reference

DTYPES = (torch.float32, torch.float64)
_CHUNK_ELEMS = 1 << 22  # the (rows, K) block a chunk may hold: the (N, K) matrix is never built


@torch.library.custom_op("vqfast::code_at_rank", mutates_args=())
def _code_at_rank_op(z: torch.Tensor, codebook: torch.Tensor, rank: torch.Tensor, backend: str) -> torch.Tensor:
    if backend == "cpu":
        return _ext._C.code_at_rank_cpu(z, codebook, rank)
    # Elsewhere (CUDA tensors included) the reference runs in chunks of rows: a GPU
    # sorts a (rows, K) block at memory speed, so no selection kernel is written for it.
    rows = max(1, _CHUNK_ELEMS // codebook.shape[0])
    return torch.cat([_reference(z[i:i + rows], codebook, rank[i:i + rows]) for i in range(0, z.shape[0], rows)]) \
        if z.shape[0] else rank.new_empty((0,))


@_code_at_rank_op.register_fake
def _(z, codebook, rank, backend):
    return rank.new_empty((z.shape[0],))


def code_at_rank(z: torch.Tensor, codebook: torch.Tensor, rank: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Per row of ``z``, the index of the code at position ``rank[n]`` (0-based) of its
    ascending squared-L2 distance order over ``codebook``; equal distances rank by lower
    index. ``rank=0`` is the nearest code (what nearest_code(k=1) returns).

    Args:
        z: (N, D) float32 / float64.
        codebook: (K, D), same dtype and device.
        rank: (N,) int64 in [0, K), same device.
        backend: "auto" | "cpu" | "reference" ("cuda" and "triton" have no kernel:
            "auto" on CUDA tensors runs the reference in row chunks, with one warning).

    Returns:
        (N,) int64.

    The CPU kernel ranks by ||e||^2 - 2 z.e from one GEMM per chunk of rows and selects
    with nth_element (O(K) per row) instead of sorting, so codes whose distances differ
    by less than the expansion's rounding may rank differently from the reference
    (which takes differences directly); in float64 the two agree.

    Raises:
        TypeError / ValueError: wrong dtype, shape, device, NaN/Inf, or a rank outside [0, K).
    """
    check_tensor(z, "z", ndim=2, layout="(N, D)", dtypes=DTYPES)
    check_tensor(codebook, "codebook", ndim=2, layout="(K, D)", dtypes=DTYPES)
    check_tensor(rank, "rank", ndim=1, layout="(N,)", dtypes=(torch.int64,))
    check_same_device(z, "z", codebook, "codebook")
    check_same_device(z, "z", rank, "rank")
    n, d = z.shape
    k, cd = codebook.shape
    if cd != d:
        raise ValueError(f"codebook has D={cd} but z has D={d}")
    if k == 0 or d == 0:
        raise ValueError(f"codebook must be non-empty with D >= 1, got {tuple(codebook.shape)}")
    if rank.shape[0] != n:
        raise ValueError(f"rank must be ({n},) like z's rows, got {tuple(rank.shape)}")
    if z.dtype != codebook.dtype:
        raise TypeError(f"z and codebook must share a dtype, got {z.dtype} and {codebook.dtype}")
    check_finite(z, "z")
    check_finite(codebook, "codebook")
    if n and (int(rank.min()) < 0 or int(rank.max()) >= k):
        raise ValueError(f"rank holds values outside [0, K={k}) (min {int(rank.min())}, max {int(rank.max())})")
    if backend in ("cuda", "triton"):
        raise RuntimeError(f"backend={backend!r} is unavailable for code_at_rank: it has no {backend} kernel "
                           "(on CUDA tensors 'auto' sorts in row chunks)")
    if z.is_cuda and backend == "auto":
        _warn_once("code_at_rank", z.device, "it has no CUDA kernel; rows are sorted in chunks on the GPU")
        resolved = "reference"
    else:
        resolved = resolve_backend("code_at_rank", backend, z.device)
    return _code_at_rank_op(z, codebook, rank, resolved)
