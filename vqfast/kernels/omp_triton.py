"""Triton Batch-OMP: one program per block of BLOCK_B targets, each target a lane.

Every iteration streams the support's Gram rows in BLOCK_N-wide tiles to form the
correlations alpha = X^T y - G[:, S] gamma on the fly and reduce them to the next
atom (alpha is never stored); the per-target Cholesky factor of the support, the
support itself and the solve vectors live in global scratch and are grown by one row
per atom. Targets that stop early go inactive and their lanes are masked.
"""

import torch
import triton
import triton.language as tl

from vqfast.kernels import interpreting


# long: one kernel body on purpose; the selection, the Cholesky update and the residual
# update share one program's registers and loop-carried state.
@triton.jit
def _omp_kernel(
    g_ptr,  # (N, N) gram, contiguous
    xty_ptr,  # (B, N) contiguous
    yn_ptr,  # (B,)
    sup_ptr,  # (B, S) int64 out, prefilled with -1
    gam_ptr,  # (B, S) out: coefficients in support order, prefilled with 0
    res_ptr,  # (B,) out
    l_ptr,  # (B, S, S) scratch: Cholesky factor of G[S, S]
    w_ptr,  # (B, S) scratch: triangular-solve vector
    rhs_ptr,  # (B, S) scratch: xty on the support
    B,
    N,
    S,
    tol,
    tiny,  # smallest normal of the dtype
    eps,  # machine epsilon of the dtype: the stopping rules of vqfast.ops.omp
    USE_TOL: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    active = rows < B
    cols0 = tl.arange(0, BLOCK_N)
    yn = tl.load(yn_ptr + rows, mask=active, other=0.0)
    explained = yn * 0
    energy = yn * 0  # what the first atom explains
    srow = rows * S
    lrow = rows * S * S
    it = 0
    n_active = tl.sum(active.to(tl.int32))
    while (it < S) & (n_active > 0):  # every active lane holds exactly `it` atoms
        # Next atom: largest |alpha| among those not chosen, ties to the lower index.
        best = tl.full((BLOCK_B,), -1.0, yn.dtype)
        best_i = tl.full((BLOCK_B,), -1, tl.int64)
        for n0 in range(0, N, BLOCK_N):
            cols = n0 + cols0
            col_ok = cols < N
            m2 = active[:, None] & col_ok[None, :]
            a = tl.load(xty_ptr + rows[:, None] * N + cols[None, :], mask=m2, other=0.0)
            chosen = m2 & False  # full (BLOCK_B, BLOCK_N): a loop-carried value keeps its shape
            for r in range(0, it):
                sr = tl.load(sup_ptr + srow + r, mask=active, other=0)
                gr = tl.load(gam_ptr + srow + r, mask=active, other=0.0)
                a -= gr[:, None] * tl.load(g_ptr + sr[:, None] * N + cols[None, :], mask=m2, other=0.0)
                chosen = chosen | (sr[:, None] == cols[None, :])
            score = tl.where(chosen | ~col_ok[None, :], -1.0, tl.abs(a))
            tile_best, tile_i = tl.max(score, axis=1, return_indices=True, return_indices_tie_break_left=True)
            take = tile_best > best  # strict: earlier tiles hold lower indices
            best_i = tl.where(take, n0 + tile_i.to(tl.int64), best_i)
            best = tl.where(take, tile_best, best)
        active = active & (best_i >= 0)
        j = tl.where(active, best_i, 0)
        gjj = tl.load(g_ptr + j * N + j, mask=active, other=1.0)
        active = active & (gjj > tiny)  # a zero atom (or a gram that is not X^T X)
        if it == 0:
            energy = best * best / gjj
        active = active & (best * best > eps * energy * gjj)  # residual orthogonal to every atom left
        j = tl.where(active, j, 0)
        # New Cholesky row: L w = G[S, j], L_kk = sqrt(G_jj - |w|^2).
        wn = yn * 0
        for r in range(0, it):
            sr = tl.load(sup_ptr + srow + r, mask=active, other=0)
            v = tl.load(g_ptr + j * N + sr, mask=active, other=0.0)
            for c in range(0, r):
                v -= tl.load(l_ptr + lrow + r * S + c, mask=active, other=0.0) * tl.load(w_ptr + srow + c, mask=active, other=0.0)
            v = v / tl.load(l_ptr + lrow + r * S + r, mask=active, other=1.0)
            tl.store(w_ptr + srow + r, v, mask=active)
            tl.debug_barrier()
            wn += v * v
        lkk = gjj - wn
        active = active & (lkk > 16 * eps * gjj)  # x_j lies in the support's span
        for c in range(0, it):
            tl.store(l_ptr + lrow + it * S + c, tl.load(w_ptr + srow + c, mask=active, other=0.0), mask=active)
        tl.store(l_ptr + lrow + it * S + it, tl.sqrt(tl.where(active, lkk, 1.0)), mask=active)
        tl.store(sup_ptr + srow + it, j, mask=active)
        tl.store(rhs_ptr + srow + it, tl.load(xty_ptr + rows * N + j, mask=active, other=0.0), mask=active)
        tl.debug_barrier()
        # gamma = (L L^T)^-1 xty_S by two triangular solves.
        for r in range(0, it + 1):
            v = tl.load(rhs_ptr + srow + r, mask=active, other=0.0)
            for c in range(0, r):
                v -= tl.load(l_ptr + lrow + r * S + c, mask=active, other=0.0) * tl.load(w_ptr + srow + c, mask=active, other=0.0)
            tl.store(w_ptr + srow + r, v / tl.load(l_ptr + lrow + r * S + r, mask=active, other=1.0), mask=active)
            tl.debug_barrier()
        for rr in range(0, it + 1):
            r = it - rr
            v = tl.load(w_ptr + srow + r, mask=active, other=0.0)
            for c in range(r + 1, it + 1):
                v -= tl.load(l_ptr + lrow + c * S + r, mask=active, other=0.0) * tl.load(gam_ptr + srow + c, mask=active, other=0.0)
            tl.store(gam_ptr + srow + r, v / tl.load(l_ptr + lrow + r * S + r, mask=active, other=1.0), mask=active)
            tl.debug_barrier()
        e = yn * 0
        for r in range(0, it + 1):
            e += tl.load(gam_ptr + srow + r, mask=active, other=0.0) * tl.load(rhs_ptr + srow + r, mask=active, other=0.0)
        explained = tl.where(active, e, explained)
        if USE_TOL:
            active = active & (yn - explained > tol)
        it += 1
        n_active = tl.sum(active.to(tl.int32))
    tl.store(res_ptr + rows, yn - explained, mask=rows < B)


def omp_triton(gram: torch.Tensor, xty: torch.Tensor, n_nonzero: int, tol: float, y_norm_sq: torch.Tensor):
    """gram (N, N), xty (B, N), y_norm_sq (B,) float32/float64 on one device; tol < 0:
    none. Returns coef (B, N), support (B, n_nonzero) int64, residual_norm_sq (B,)."""
    gram, xty, y_norm_sq = gram.contiguous(), xty.contiguous(), y_norm_sq.contiguous()
    b, n = xty.shape
    s = n_nonzero
    support = torch.full((b, s), -1, dtype=torch.int64, device=xty.device)
    gamma = xty.new_zeros((b, s))
    residual = xty.new_empty((b,))
    scratch_l = xty.new_empty((b, s, s))
    scratch_w = xty.new_empty((b, s))
    scratch_rhs = xty.new_empty((b, s))
    info = torch.finfo(xty.dtype)
    interp = interpreting()
    block_b = 128 if interp else 16  # the interpreter pays per program: few, wide ones
    block_n = 1024 if interp else 128
    grid = (triton.cdiv(b, block_b),)
    _omp_kernel[grid](gram, xty, y_norm_sq, support, gamma, residual, scratch_l, scratch_w, scratch_rhs, b, n, s,
                      float(tol), info.tiny, info.eps, USE_TOL=tol >= 0, BLOCK_B=block_b, BLOCK_N=block_n)
    coef = xty.new_zeros((b, n))
    # Unfilled support slots add 0 to column 0.
    coef.scatter_add_(1, support.clamp(min=0), torch.where(support >= 0, gamma, 0))
    return coef, support, residual
