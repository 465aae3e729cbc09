"""Triton nearest-codebook search on tensor cores, answered exactly.

One program per BLOCK_M rows streams the codebook in BLOCK_N-code tiles through
``tl.dot``: float32 inputs, centred on mu (as the CPU and CUDA kernels do), multiply as
TF32; bfloat16 and float16 inputs multiply natively, uncentred (their products are exact
in float32). The products only *bound* each ranking value r = ||c||^2 - 2 x.c
(x = z - mu, c = code - mu; the distance is ||x||^2 + r): the epilogue turns each into
the lower end ``lo`` of a proved interval [lo, lo + 2e] and keeps, per row, the KC
smallest lower ends (KC = the power of two at or above k + 3) in registers. The host then

1. bounds the k-th smallest distance by T, the k-th smallest upper end among the kept codes;
2. calls the row *resolved* when every code it did not keep has ``lo`` above
   T plus the recompute's rounding (the largest kept ``lo`` is above it, since the kept
   ones are the smallest), recomputes the kept codes' distances exactly as
   sum((z - c)^2) in float32 and returns their k smallest, ties to the lower index;
3. ranks every other row's codes with a float64 GEMM (in bounded row chunks) and
   recomputes, exactly, the few whose float64 distance the recompute's rounding cannot
   separate from the k-th.

So the answer is the k smallest recomputed float32 distances over all codes, never the
products' rounded ranking (the contract of the CPU kernel's bfloat16 variants), with
O(N KC) extra memory. Near-ties and duplicated codes only send rows to step 3.

The error model (``_bound_terms``) assumes TF32 conversion by truncation (2^-10, the
worse of truncation and rounding), tensor-core float32 accumulation with a unit roundoff
of 2^-21 (four times float32's: truncating adds and block alignment, as measured for
NVIDIA tensor cores by Fasi et al. 2021), subnormals flushed, and a 1.01 safety factor
for second-order terms. A wrong model can only cost speed where it is loose; where it
were too tight the answer could differ from the exact one, which the GPU check's
correctness pass compares against a float64 reference on every run.
"""

import math

import torch
import triton
import triton.language as tl

from vqfast.kernels import interpreting


# long: one kernel body on purpose; the tiles, the dot loop and the top-k epilogue share
# registers, and a @triton.jit helper would only be inlined back into it.
@triton.jit
def _nearest_code_kernel(
    z_ptr,  # (N, D) float32 / float16 / bfloat16, row stride stride_z, unit column stride
    cb_ptr,  # (K, D) contiguous: float32 centred codes (CENTRED) or the raw half codes
    mu_ptr,  # (D,) float32 centre (read only when CENTRED)
    cn_ptr,  # (K,) float32 ||c||^2
    xn_ptr,  # (N,) float32 out: ||x||, rounded up
    e1_ptr,  # (K,) float32: the half-width of (row, code) is xn * e1 + e0
    e0_ptr,  # (K,) float32
    lo_ptr,  # (N, KC) float32 out: the row's KC smallest lower ends, unsorted (+inf: unused)
    ix_ptr,  # (N, KC) int32 out: their codes (-1: unused)
    N,
    K,
    D,
    stride_z,
    xn_scale,  # 1 + 2^-23 (D + 4): rounds a float32 sum of D squares up past its error
    KC: tl.constexpr,
    CENTRED: tl.constexpr,
    UPCAST: tl.constexpr,  # half inputs multiplied as float32 (interpreter only)
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
    slot = tl.arange(0, KC)
    # ||x|| per row, for the half-widths: one pass over the rows before the codebook's.
    xsq = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + dims
        d_ok = d < D
        zt = tl.load(z_ptr + rows64[:, None] * stride_z + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                     other=0.0).to(tl.float32)
        if CENTRED:
            zt = zt - tl.load(mu_ptr + d, mask=d_ok, other=0.0)[None, :]
        xsq += tl.sum(zt * zt, axis=1)
    xn = tl.sqrt(xsq * xn_scale) * 1.000001  # and past the square root's and the centring's roundings
    tl.store(xn_ptr + rows, xn, mask=row_ok)
    best = tl.full((BLOCK_M, KC), float("inf"), tl.float32)
    best_ix = tl.full((BLOCK_M, KC), -1, tl.int32)
    worst = tl.max(best, axis=1)  # the largest kept lower end: what a new code must beat

    for n0 in range(0, K, BLOCK_N):
        codes = n0 + cols
        code_ok = codes < K
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            d = d0 + dims
            d_ok = d < D
            zt = tl.load(z_ptr + rows64[:, None] * stride_z + d[None, :], mask=row_ok[:, None] & d_ok[None, :],
                         other=0.0)
            ct = tl.load(cb_ptr + codes.to(tl.int64)[:, None] * D + d[None, :], mask=code_ok[:, None] & d_ok[None, :],
                         other=0.0)
            if CENTRED:
                mu = tl.load(mu_ptr + d, mask=d_ok, other=0.0)
                zt = zt.to(tl.float32) - mu[None, :]  # masked dims: 0 - 0
                acc = tl.dot(zt, tl.trans(ct), acc, input_precision="tf32")
            elif UPCAST:  # the interpreter's bfloat16 dot is wrong (Triton 3.6); the products are exact either way
                acc = tl.dot(zt.to(tl.float32), tl.trans(ct.to(tl.float32)), acc, input_precision="ieee")
            else:
                acc = tl.dot(zt, tl.trans(ct), acc)  # exact half products, float32 sums
        cn = tl.load(cn_ptr + codes, mask=code_ok, other=0.0)
        e1 = tl.load(e1_ptr + codes, mask=code_ok, other=0.0)
        e0 = tl.load(e0_ptr + codes, mask=code_ok, other=0.0)
        lo = (cn[None, :] - 2.0 * acc) - (xn[:, None] * e1[None, :] + e0[None, :])
        lo = tl.where(lo == lo, lo, float("-inf"))  # an overflowed bound keeps its code in play
        lo = tl.where(code_ok[None, :], lo, float("inf"))
        live = lo < worst[:, None]
        # Insert this tile's winners one at a time, smallest first; most tiles need none
        # or one pass, so the loop runs while any row of the block still has a winner.
        n_live = tl.max(tl.max(live.to(tl.int32), axis=1), axis=0)
        while n_live > 0:
            m, j = tl.min(tl.where(live, lo, float("inf")), axis=1, return_indices=True,
                          return_indices_tie_break_left=True)
            take = m < worst  # strict: an equal lower end from a lower code stays
            _, w = tl.max(best, axis=1, return_indices=True, return_indices_tie_break_left=True)
            put = (slot[None, :] == w[:, None]) & take[:, None]
            best = tl.where(put, m[:, None], best)
            best_ix = tl.where(put, (n0 + j)[:, None], best_ix)
            worst = tl.max(best, axis=1)
            live = live & (cols[None, :] != j[:, None]) & (lo < worst[:, None])
            n_live = tl.max(tl.max(live.to(tl.int32), axis=1), axis=0)

    out = rows64[:, None] * KC + slot[None, :]
    tl.store(lo_ptr + out, best, mask=row_ok[:, None])
    tl.store(ix_ptr + out, best_ix, mask=row_ok[:, None])


_U = 2.0**-24  # float32's unit roundoff


def _gamma(m: float, u: float) -> float:
    return m * u / (1.0 - m * u)


def _bound_terms(d_padded: int, centred: bool):
    """(A, B, C, E): a ranking value's half-width is A |x||c| + B ||c||^2 + C (|x| + |c|) + E.

    |x||c| terms: the inputs' roundings (centring in float32, then TF32 conversion) and
    the products' float32 accumulation; ||c||^2: its own rounding and those of
    cn - 2 acc and of the lower end; C and E: subnormals flushed (tau = 2^-126)."""
    n, tau = float(d_padded), 2.0**-126
    eps = (2.0**-10 + _U + 2.0**-10 * _U) if centred else 0.0
    acc = _gamma(n, 2.0**-21) * (1 + eps) ** 2
    a = (2 * (2 * eps + eps * eps + acc) + 4.2 * _U) * 1.01
    b = (3.01 * _U + 2.1 * _U) * 1.01
    c = 2.1 * (1 + eps) * tau * math.sqrt(n) if centred else 0.0
    e = 8 * n * tau
    return a, b, c, e


def _centre(codebook: torch.Tensor) -> torch.Tensor:
    """(K, D) -> (D,) float32: the mean rounded to a multiple of the power of two just
    above the RMS spread (csrc/cpu/nearest_code.cpp explains why); no host sync."""
    c = codebook.double()
    mean = c.mean(0)
    spread = c.var(0, unbiased=False).mean().sqrt()
    q = torch.ldexp(torch.ones_like(spread), torch.frexp(spread).exponent)
    return torch.where(spread > 0, torch.round(mean / q) * q, mean).float()


def _blocks(kc: int):
    if interpreting():  # the interpreter pays per program and per op, not per element
        return 256, 256, 64
    # Registers: BLOCK_M x KC kept (value, index) pairs beside the BLOCK_M x BLOCK_N tile.
    return (128 if kc <= 4 else 64 if kc <= 16 else 16), 128, 32


def _sqdist(z: torch.Tensor, codebook: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(R, D), (K, D), (R, C) int64 codes -> (R, C) float32 sum((z - c)^2), in row chunks
    of at most 2^24 gathered values (the (R, C, D) gather never exists whole)."""
    out = torch.empty(idx.shape, dtype=torch.float32, device=z.device)
    step = max(1, (1 << 24) // max(1, idx.shape[1] * z.shape[1]))
    for r0 in range(0, z.shape[0], step):
        zr = z[r0:r0 + step].float().unsqueeze(1)
        out[r0:r0 + step] = (zr - codebook[idx[r0:r0 + step]].float()).square().sum(-1)
    return out


def _smallest(dist: torch.Tensor, idx: torch.Tensor, k: int):
    """The k smallest (dist, idx) pairs of each row, ascending, ties to the lower index.
    Padding (idx < 0) must carry dist = +inf."""
    idx, order = idx.sort(dim=1)  # padding first, then codes ascending
    dist = dist.gather(1, order)
    dist, order = dist.sort(dim=1, stable=True)
    return idx.gather(1, order)[:, :k].contiguous(), dist[:, :k].contiguous()


def _exact_rows(z: torch.Tensor, codebook: torch.Tensor, k: int):
    """Rows of z against every code: (R, k) int64, (R, k) float32, the k smallest
    recomputed float32 distances. A float64 GEMM ranks every code (its expanded form is
    within 4 (D + 2) 2^-53 (||z||^2 + ||c||^2) of the true distance, far inside float32's
    rounding); the codes within the recompute's rounding of the k-th are recomputed directly.
    Row chunks keep each (rows, K) float64 block near 2^24 values."""
    n, d = z.shape
    c64 = codebook.double()
    cn = c64.square().sum(1)
    g = _gamma(d + 4, _U)
    idx_out = torch.empty((n, k), dtype=torch.int64, device=z.device)
    dist_out = torch.empty((n, k), dtype=torch.float32, device=z.device)
    step = max(1, (1 << 24) // codebook.shape[0])
    for r0 in range(0, n, step):
        zr = z[r0:r0 + step]
        z64 = zr.double()
        zn = z64.square().sum(1, keepdim=True)
        d64 = torch.addmm(zn + cn, z64, c64.T, alpha=-2)
        err = 4 * (d + 2) * 2.0**-53 * (zn + cn.max())
        kth = d64.kthvalue(k, dim=1, keepdim=True).values
        # a code beats the k-th recomputed distance only if its true distance is within
        # the recompute's rounding of (kth + err), and its float64 value within err of that
        limit = (kth + err) * (1 + 1.01 * g) / (1 - 1.01 * g) + err
        width = int((d64 <= limit).sum(1).max())  # >= k: the k-th itself is a candidate
        vals, idx = torch.topk(d64, width, dim=1, largest=False, sorted=False)
        idx = torch.where(vals <= limit, idx, -1)
        dist = torch.where(idx >= 0, _sqdist(zr, codebook, idx.clamp(min=0)), math.inf)
        idx_out[r0:r0 + step], dist_out[r0:r0 + step] = _smallest(dist, idx, k)
    return idx_out, dist_out


def kept_codes(z: torch.Tensor, codebook: torch.Tensor, k: int):
    """The kernel's pass and the bound's verdict. z: (N, D) with unit column stride,
    codebook: (K, D), one float dtype -> kept codes (N, KC) int64 (-1: unused slot) and
    resolved (N,) bool: whether the kept codes provably hold the row's k nearest."""
    n, d = z.shape
    num_codes = codebook.shape[0]
    centred = z.dtype == torch.float32
    if centred:
        mu = _centre(codebook)
        cb = (codebook.float() - mu).contiguous()
    else:
        mu = torch.zeros(d, dtype=torch.float32, device=z.device)
        cb = codebook.contiguous()
    cn64 = cb.double().square().sum(1)
    cnorm = cn64.sqrt() * (1 + 2.0**-20)
    kc = triton.next_power_of_2(k + 3)  # room for a few near-ties before a row needs the full recompute
    block_m, block_n, block_d = _blocks(kc)
    a, b, c, e = _bound_terms(triton.cdiv(d, block_d) * block_d, centred)
    e1 = (a * cnorm + c).float() * (1 + 2.0**-20)
    e0 = (b * cn64 * (1 + 4 * _U) + c * cnorm + e).float() * (1 + 2.0**-20)
    xn = torch.empty(n, dtype=torch.float32, device=z.device)
    lo = torch.empty((n, kc), dtype=torch.float32, device=z.device)
    ix = torch.empty((n, kc), dtype=torch.int32, device=z.device)
    _nearest_code_kernel[(triton.cdiv(n, block_m),)](
        z, cb, mu, cn64.float(), xn, e1, e0, lo, ix, n, num_codes, d, z.stride(0), 1 + 2.0**-23 * (d + 4),
        KC=kc, CENTRED=centred, UPCAST=interpreting(), BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=block_d,
        num_warps=8,
    )
    idx = ix.long()
    kept = idx >= 0
    safe = idx.clamp(min=0)
    # Upper ends, in float64 with room for the kernel's float32 evaluation of e and lo.
    half = xn.double()[:, None] * e1.double()[safe] + e0.double()[safe]
    lo64 = lo.double()
    hi = torch.where(kept, lo64 + 2.001 * half + 4 * _U * lo64.abs(), math.inf)
    top = hi.sort(dim=1).values[:, k - 1]  # >= the k-th smallest ranking value
    g = _gamma(d + 4, _U)
    limit = top + 2 * g / (1 - g) * (xn.double().square() + top).clamp(min=0) * 1.01
    largest_kept = torch.where(kept, lo64, math.inf).max(dim=1).values
    finite = torch.where(kept, hi.isfinite(), True).all(1) & limit.isfinite()  # else a bound overflowed
    return idx, finite & (largest_kept > limit)


def nearest_code_triton(z: torch.Tensor, codebook: torch.Tensor, k: int):
    """z: (N, D), codebook: (K, D), one float dtype on one device -> (indices (N, k)
    int64, distances (N, k) float32): the k smallest float32 sum((z - c)^2) over all
    codes, ascending, ties to the lower index."""
    if z.stride(1) != 1:
        z = z.contiguous()
    idx, resolved = kept_codes(z, codebook, k)
    dist = torch.where(idx >= 0, _sqdist(z, codebook, idx.clamp(min=0)), math.inf)
    out_idx, out_dist = _smallest(dist, idx, k)
    rest = (~resolved).nonzero()[:, 0]
    if rest.numel():
        out_idx[rest], out_dist[rest] = _exact_rows(z[rest], codebook, k)
    return out_idx, out_dist
