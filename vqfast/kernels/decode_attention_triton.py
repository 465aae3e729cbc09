"""Triton single-query attention over a KV cache: one program per (row, head), the
cache streamed in BLOCK_T tiles with an online softmax (running max and sum)."""

import torch
import triton
import triton.language as tl

from vqfast.kernels import interpreting


@triton.jit
def _decode_attention_kernel(q_ptr, k_ptr, v_ptr, out_ptr, H, D, s0, s1, length, scale,
                             BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, F64: tl.constexpr):
    mh = tl.program_id(0).to(tl.int64)
    m = mh // H
    h = mh % H
    work = tl.float64 if F64 else tl.float32
    dims = tl.arange(0, BLOCK_D)
    d_ok = dims < D
    q = tl.load(q_ptr + mh * D + dims, mask=d_ok, other=0.0).to(work)
    base = m * s0 + h * s1
    top = tl.full((), float("-inf"), work)
    z = tl.zeros((), work)
    acc = tl.zeros((BLOCK_D,), work)
    for t0 in range(0, length, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_ok = t < length
        mask = t_ok[:, None] & d_ok[None, :]
        offs = base + t.to(tl.int64)[:, None] * D + dims[None, :]
        k = tl.load(k_ptr + offs, mask=mask, other=0.0).to(work)
        s = tl.where(t_ok, tl.sum(k * q[None, :], axis=1) * scale, float("-inf"))
        new_top = tl.maximum(top, tl.max(s, axis=0))
        alpha = tl.exp(top - new_top)
        p = tl.exp(s - new_top)
        v = tl.load(v_ptr + offs, mask=mask, other=0.0).to(work)
        acc = acc * alpha + tl.sum(p[:, None] * v, axis=0)
        z = z * alpha + tl.sum(p, axis=0)
        top = new_top
    tl.store(out_ptr + mh * D + dims, (acc / z).to(out_ptr.dtype.element_ty), mask=d_ok)


def decode_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: int,
                            scale: float) -> torch.Tensor:
    """q (M, H, d), caches (M, H, T, d) with contiguous (T, d) blocks -> (M, H, d)."""
    q = q.contiguous()
    m, h, d = q.shape
    out = torch.empty_like(q)
    block_t = 1024 if interpreting() else 64  # the interpreter pays per tile
    _decode_attention_kernel[(m * h,)](q, k_cache, v_cache, out, h, d, k_cache.stride(0), k_cache.stride(1), length,
                                       float(scale), BLOCK_T=block_t, BLOCK_D=triton.next_power_of_2(d),
                                       F64=q.dtype == torch.float64)
    return out
