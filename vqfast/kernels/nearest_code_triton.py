"""Triton nearest-codebook search: one program per row tile, codebook streamed in tiles.

Each (row, code) pair is ranked by a single int64 key: the order-preserving bits of
the float32 expanded distance in the high word and the code index in the low word.
Comparing keys is then comparing (distance, index) lexicographically, so ties go
to the lower index, and top-k needs no separate index bookkeeping.
"""

import torch
import triton
import triton.language as tl

from vqfast.ops._dispatch import triton_interpret
from vqfast.reference.nearest_code import order_by_distance

_SENTINEL = 0x7FFFFFFF_FFFFFFFF  # above every real key (real high words are <= +inf's bits)


@triton.jit
def _nearest_code_kernel(
    z_ptr,  # (N, D) any float dtype, row stride stride_z
    cb_ptr,  # (K, D) float32, centred on mu, contiguous
    mu_ptr,  # (D,) float32
    cn_ptr,  # (K,) float32, ||codebook - mu||^2
    keys_ptr,  # (N, KP) int64 out: slots [0, TOPK) hold the row's TOPK smallest keys, unsorted
    N,
    K,
    D,
    stride_z,
    KP: tl.constexpr,  # next power of two >= k
    TOPK: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < N
    rows64 = rows.to(tl.int64)
    cols = tl.arange(0, BLOCK_N)
    dims = tl.arange(0, BLOCK_D)
    slot = tl.arange(0, KP)
    # Distinct sentinels, so "replace the current maximum" touches exactly one slot.
    best = tl.full((BLOCK_M, KP), _SENTINEL, tl.int64) - slot[None, :].to(tl.int64)
    if TOPK < KP:  # unused slots must never be replaced: park them below every key
        best = tl.where(slot[None, :] >= TOPK, -_SENTINEL + slot[None, :].to(tl.int64), best)

    for n0 in range(0, K, BLOCK_N):
        codes = n0 + cols
        code_ok = codes < K
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + dims
            d_ok = d < D
            mu = tl.load(mu_ptr + d, mask=d_ok, other=0.0)
            zt = tl.load(z_ptr + rows64[:, None] * stride_z + d[None, :], mask=row_ok[:, None] & d_ok[None, :], other=0.0)
            zt = zt.to(tl.float32) - mu[None, :]  # masked dims: 0 - 0
            ct = tl.load(cb_ptr + codes.to(tl.int64)[:, None] * D + d[None, :], mask=code_ok[:, None] & d_ok[None, :], other=0.0)
            # IEEE float32: TF32 would reorder near neighbours against the reference.
            acc += tl.dot(zt, tl.trans(ct), input_precision="ieee")
        cn = tl.load(cn_ptr + codes, mask=code_ok, other=0.0)
        dist = cn[None, :] - 2.0 * acc + 0.0  # + 0.0 turns -0.0 into +0.0 before bit ordering
        bits = dist.to(tl.int32, bitcast=True)
        bits = tl.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
        key = (bits.to(tl.int64) << 32) | codes[None, :].to(tl.int64)
        key = tl.where(code_ok[None, :], key, _SENTINEL)
        if TOPK == 1:
            best = tl.minimum(best, tl.min(key, axis=1)[:, None])
        else:
            for _ in tl.static_range(TOPK):
                m = tl.min(key, axis=1)
                worst = tl.max(best, axis=1)
                take = (best == worst[:, None]) & (m < worst)[:, None]
                best = tl.where(take, m[:, None], best)
                key = tl.where(key == m[:, None], _SENTINEL, key)

    out = keys_ptr + rows64[:, None] * KP + slot[None, :]
    tl.store(out, best, mask=row_ok[:, None])


def _blocks(device: torch.device):
    # The interpreter pays per program and per op, not per element: big tiles.
    if device.type == "cpu" and triton_interpret():
        return 256, 256, 64
    return 64, 64, 32


def _centre(codebook: torch.Tensor) -> torch.Tensor:
    """(K, D) -> (D,) float32: the mean rounded to a multiple of the power of two just
    above the RMS spread (csrc/cpu/nearest_code.cpp explains why); no host sync."""
    c = codebook.double()
    mean = c.mean(0)
    spread = c.var(0, unbiased=False).mean().sqrt()
    q = torch.ldexp(torch.ones_like(spread), torch.frexp(spread).exponent)
    return torch.where(spread > 0, torch.round(mean / q) * q, mean).float()


def nearest_code_triton(z: torch.Tensor, codebook: torch.Tensor, k: int):
    """z: (N, D), codebook: (K, D) float on one device -> (indices (N, k) int64, distances (N, k) float32)."""
    n, d = z.shape
    if z.stride(1) != 1:
        z = z.contiguous()
    mu = _centre(codebook)
    cb = (codebook.float() - mu).contiguous()
    cn = cb.square().sum(1)
    kp = triton.next_power_of_2(k)
    keys = torch.empty((n, kp), dtype=torch.int64, device=z.device)
    block_m, block_n, block_d = _blocks(z.device)
    grid = (triton.cdiv(n, block_m),)
    _nearest_code_kernel[grid](
        z, cb, mu, cn, keys, n, cb.shape[0], d, z.stride(0),
        KP=kp, TOPK=k, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
    )
    keys = torch.sort(keys[:, :k], dim=1).values if k > 1 else keys[:, :1]
    idx = keys & 0xFFFFFFFF
    dist = (z.float().unsqueeze(1) - codebook.float()[idx]).square().sum(-1)
    return order_by_distance(idx, dist)
