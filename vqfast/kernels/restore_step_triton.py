"""Triton restoration step: BLOCK_M sequences per program, the vocabulary in BLOCK_V tiles.

Three passes over the logits: the running max, the sums (partition function and
the tempered one), then the tempered prefix sums until they cross u * total, where u
is the counter-based uniform (the same integer hash as vqfast.reference.restore_step,
in uint32). Rows that need no sample skip the third pass's work by masking.
"""

import torch
import triton
import triton.language as tl

from vqfast.kernels import interpreting


@triton.jit
def _lowbias32(x):
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    x ^= x >> 16
    return x


# position is never specialised: Triton turns an int argument equal to 1 into a
# constexpr, which has no .to(), so the second step of every pass would not compile.
@triton.jit(do_not_specialize=["position"])
def _restore_step_kernel(logits_ptr, cur_ptr, seed_ptr, tok_ptr, nll_ptr, M, V, threshold, position, temperature,
                         BLOCK_M: tl.constexpr, BLOCK_V: tl.constexpr, F64: tl.constexpr):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    row_ok = rows < M
    cols0 = tl.arange(0, BLOCK_V)
    work = tl.float64 if F64 else tl.float32
    top = tl.full((BLOCK_M,), float("-inf"), work)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + cols0
        x = tl.load(logits_ptr + rows[:, None] * V + cols[None, :], mask=row_ok[:, None] & (cols < V)[None, :],
                    other=float("-inf")).to(work)
        top = tl.maximum(top, tl.max(x, axis=1))
    top = tl.where(row_ok, top, 0.0)
    z = tl.zeros((BLOCK_M,), work)
    total = tl.zeros((BLOCK_M,), work)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + cols0
        x = tl.load(logits_ptr + rows[:, None] * V + cols[None, :], mask=row_ok[:, None] & (cols < V)[None, :],
                    other=float("-inf")).to(work)
        z += tl.sum(tl.exp(x - top[:, None]), axis=1)
        total += tl.sum(tl.exp((x - top[:, None]) / temperature), axis=1)
    cur = tl.load(cur_ptr + rows, mask=row_ok, other=0)
    # Out of [0, V): no read; NaN marks the row (as the CUDA kernel does) and the token stays.
    cur_ok = row_ok & (cur >= 0) & (cur < V)
    x_cur = tl.load(logits_ptr + rows * V + cur, mask=cur_ok, other=0.0).to(work)
    nll = tl.where(cur_ok, top + tl.log(tl.where(row_ok, z, 1.0)) - x_cur, float("nan"))
    restore = row_ok & (nll > threshold)
    seed = tl.load(seed_ptr + rows, mask=row_ok, other=0)
    h = _lowbias32((seed & 0xFFFFFFFF).to(tl.uint32) ^ 0x9E3779B9)
    h = _lowbias32(h ^ ((seed >> 32) & 0xFFFFFFFF).to(tl.uint32))
    h = _lowbias32(h ^ position.to(tl.uint32))  # position < 2^31, checked by the op
    u = (h >> 8).to(tl.float64) * (1.0 / 16777216.0)
    target = u.to(work) * total
    found = tl.full((BLOCK_M,), V - 1, tl.int64)  # rounding can leave the last prefix below the target
    searching = restore
    carry = tl.zeros((BLOCK_M,), work)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + cols0
        m2 = searching[:, None] & (cols < V)[None, :]
        x = tl.load(logits_ptr + rows[:, None] * V + cols[None, :], mask=m2, other=float("-inf")).to(work)
        c = carry[:, None] + tl.cumsum(tl.exp((x - top[:, None]) / temperature), axis=1)
        hit = m2 & (c > target[:, None])
        first = tl.min(tl.where(hit, cols[None, :].to(tl.int64), V), axis=1)
        newly = searching & (first < V)
        found = tl.where(newly, first, found)
        searching = searching & ~newly
        carry = tl.where(searching, tl.max(tl.where(m2, c, 0.0), axis=1), carry)
    tl.store(tok_ptr + rows, tl.where(restore, found, cur), mask=row_ok)
    tl.store(nll_ptr + rows, nll, mask=row_ok)


def restore_step_triton(logits: torch.Tensor, current: torch.Tensor, threshold: float, seeds: torch.Tensor,
                        position: int, temperature: float):
    """logits (M, V), current and seeds (M,) int64 -> tokens (M,) int64, nll (M,)."""
    logits, current, seeds = logits.contiguous(), current.contiguous(), seeds.contiguous()
    m, v = logits.shape
    f64 = logits.dtype == torch.float64
    tokens = torch.empty_like(current)
    nll = torch.empty(m, dtype=torch.float64 if f64 else torch.float32, device=logits.device)
    interp = interpreting()
    block_m = 64 if interp else 4  # the interpreter pays per program: few, wide ones
    block_v = min(triton.next_power_of_2(v), 4096 if interp else 1024)
    _restore_step_kernel[(triton.cdiv(m, block_m),)](logits, current, seeds, tokens, nll, m, v, float(threshold),
                                                     position, float(temperature), BLOCK_M=block_m, BLOCK_V=block_v,
                                                     F64=f64)
    return tokens, nll
