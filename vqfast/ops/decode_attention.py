"""Single-query attention against a KV cache: one incremental decoding step."""

import functools
import math
from typing import Optional

import torch

from vqfast import _ext
from vqfast.ops._checks import check_same_device, check_tensor
from vqfast.ops._dispatch import resolve_backend, triton_unavailable_reason
from vqfast.reference.decode_attention import decode_attention as _reference

ATTN_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


@torch.library.custom_op("vqfast::decode_attention", mutates_args=())
def _decode_attention_op(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: int, scale: float,
                         backend: str) -> torch.Tensor:
    if backend == "cuda":
        return _ext._C.decode_attention_cuda(q, k_cache, v_cache, length, scale)
    if backend == "triton":
        from vqfast.kernels.decode_attention_triton import decode_attention_triton  # Triton is optional: imported when its backend runs

        return decode_attention_triton(q, k_cache, v_cache, length, scale)
    if backend == "cpu" and q.dtype in (torch.float32, torch.float64):
        return _ext._C.decode_attention_cpu(q, k_cache, v_cache, length, scale)
    return _reference(q, k_cache, v_cache, length, scale)


@_decode_attention_op.register_fake
def _(q, k_cache, v_cache, length, scale, backend):
    return torch.empty_like(q)


@functools.lru_cache(maxsize=None)
def _cuda_max_length(device_index: int, head_dim: int, dtype: torch.dtype) -> int:
    """The CUDA kernel's longest cache on one device: a constant, asked once (the
    extension reads it from the device's attributes)."""
    probe = torch.empty(1, 1, head_dim, dtype=dtype, device=torch.device("cuda", device_index))
    return _ext._C.decode_attention_cuda_max_length(probe)


def resolve(backend: str, device: torch.device, head_dim: int, length: int = 1,
            dtype: torch.dtype = torch.float32) -> str:
    """The concrete backend for ``head_dim``-wide heads and caches of up to ``length``
    positions on ``device``: the dispatch rule, plus the CUDA kernel's limits. Its head
    size limit sends "auto" to the reference; its length limit (scores in shared memory:
    about 57k positions in float32 on an H200) to Triton, which streams the cache."""
    resolved = resolve_backend("decode_attention", backend, device)
    if resolved != "cuda":
        return resolved
    if head_dim > _ext._C.decode_attention_cuda_max_d:
        if backend == "cuda":
            raise ValueError(f"backend='cuda' supports head size d <= {_ext._C.decode_attention_cuda_max_d}, "
                             f"got {head_dim}")
        return "reference"
    max_length = _cuda_max_length(device.index if device.index is not None else torch.cuda.current_device(),
                                  head_dim, dtype)
    if length > max_length:
        if backend == "cuda":
            raise ValueError(f"backend='cuda' takes length <= {max_length} for {dtype} heads of {head_dim} here, "
                             f"got {length}; use 'auto' or 'triton'")
        return "triton" if triton_unavailable_reason(device) is None else "reference"
    return resolved


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: int,
                     scale: Optional[float] = None, backend: str = "auto") -> torch.Tensor:
    """out[m, h] = softmax(scale q[m, h] . k_cache[m, h, :length]^T) v_cache[m, h, :length].

    Args:
        q: (M, H, d) float32 / float64 / float16 / bfloat16.
        k_cache, v_cache: (M, H, T, d), same dtype and device; may be views of a larger
            preallocated cache as long as each (m, h) block of (T, d) is contiguous.
        length: 1 <= length <= T cached positions that count.
        scale: default 1/sqrt(d).
        backend: "auto" | "cuda" | "triton" | "cpu" | "reference" (the CPU kernel takes
            float32/float64; half precision on the CPU uses the reference).

    Returns:
        (M, H, d) in q's dtype.
    """
    check_tensor(q, "q", ndim=3, layout="(M, H, d)", dtypes=ATTN_DTYPES)
    check_tensor(k_cache, "k_cache", ndim=4, layout="(M, H, T, d)", dtypes=ATTN_DTYPES)
    check_tensor(v_cache, "v_cache", ndim=4, layout="(M, H, T, d)", dtypes=ATTN_DTYPES)
    check_same_device(q, "q", k_cache, "k_cache")
    check_same_device(q, "q", v_cache, "v_cache")
    m, h, d = q.shape
    if k_cache.shape != v_cache.shape:
        raise ValueError(f"k_cache {tuple(k_cache.shape)} and v_cache {tuple(v_cache.shape)} differ")
    if (k_cache.shape[0], k_cache.shape[1], k_cache.shape[3]) != (m, h, d):
        raise ValueError(f"k_cache must be ({m}, {h}, T, {d}) for q {tuple(q.shape)}, got {tuple(k_cache.shape)}")
    if q.dtype != k_cache.dtype or q.dtype != v_cache.dtype:
        raise TypeError(f"q, k_cache and v_cache must share a dtype, got {q.dtype}, {k_cache.dtype}, {v_cache.dtype}")
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= k_cache.shape[2]:
        raise ValueError(f"length must be an int in [1, T={k_cache.shape[2]}], got {length!r}")
    if k_cache.stride(3) != 1 or k_cache.stride(2) != d or v_cache.stride() != k_cache.stride():
        k_cache, v_cache = k_cache.contiguous(), v_cache.contiguous()
    resolved = resolve(backend, q.device, d, length, q.dtype)
    if q.numel() == 0:
        return torch.empty_like(q)
    return _decode_attention_op(q, k_cache, v_cache, length, 1.0 / math.sqrt(d) if scale is None else float(scale),
                                resolved)
