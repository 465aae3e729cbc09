"""The custom ops as standard operators, for ``torch.export`` and the ONNX exporter.

``nearest_code`` and ``omp`` take this path while ``torch.compiler.is_exporting()``: an
exported graph then holds only MatMul, ArgMin, Gather and elementwise nodes that any ONNX
runtime runs, with no vqfast kernel. The Python path keeps the fused kernels.

- nearest code: the (N, K) distance matrix in the expanded form around the codebook's
  mean (the C++ and Triton kernels' ranking), then argmin / top-k. Materialising it is
  what a fixed graph of standard operators can do; codes whose distances differ by float32
  rounding may rank differently from the kernels'.
- OMP: the greedy loop unrolled for its fixed number of atoms, batched over targets, the
  Cholesky factor of the support grown one row a step and both triangular solves written
  out (ONNX has no Cholesky or solve). A target that stops early (the early-stop rules and
  ``tol`` of ``vqfast.ops.omp``) is frozen by masks from then on.
"""

from typing import List, Optional

import torch


def nearest_code(z: torch.Tensor, codebook: torch.Tensor, k: int = 1):
    """z (N, D), codebook (K, D) -> indices (N, k) int64 by ascending squared distance,
    distances (N, k) float32."""
    z, codebook = z.float(), codebook.float()
    mean = codebook.mean(0, keepdim=True)
    zc, cc = z - mean, codebook - mean
    dist = zc.square().sum(1, keepdim=True) - 2 * zc @ cc.T + cc.square().sum(1)[None]
    if k == 1:
        idx = dist.argmin(1, keepdim=True)
    else:
        idx = dist.topk(k, dim=1, largest=False).indices
    exact = (z[:, None, :] - codebook[idx]).square().sum(-1)
    return idx, exact


def _forward_solve(rows: List[List[torch.Tensor]], b: List[torch.Tensor]) -> List[torch.Tensor]:
    """L x = b for a lower-triangular L given as rows of (B,) entries."""
    x = []
    for i, row in enumerate(rows):
        acc = b[i]
        for m in range(i):
            acc = acc - row[m] * x[m]
        x.append(acc / row[i])
    return x


def _backward_solve(rows: List[List[torch.Tensor]], b: List[torch.Tensor]) -> List[torch.Tensor]:
    """L^T x = b for the same L."""
    n = len(rows)
    x: List[Optional[torch.Tensor]] = [None] * n
    for i in reversed(range(n)):
        acc = b[i]
        for m in range(i + 1, n):
            acc = acc - rows[m][i] * x[m]
        x[i] = acc / rows[i][i]
    return x


def omp(gram: torch.Tensor, xty: torch.Tensor, n_nonzero: int, tol: Optional[float] = None,
        y_norm_sq: Optional[torch.Tensor] = None, available: Optional[torch.Tensor] = None):
    """``vqfast.ops.omp`` unrolled (see the module docstring): gram (N, N) shared or
    (B, N, N) per target, xty (B, N), y_norm_sq (B,), available (B, N) bool: atoms a
    target may choose (default all). Returns coef (B, N), support (B, n_nonzero) int64
    (-1 after a stop) and residual_norm_sq (B,), as the op does."""
    b, n = xty.shape
    dtype, info = xty.dtype, torch.finfo(xty.dtype)
    grams = gram.expand(b, n, n) if gram.dim() == 2 else gram
    diag = torch.diagonal(grams, dim1=1, dim2=2)  # (B, N)
    free = torch.ones_like(xty, dtype=torch.bool) if available is None else available.clone()
    ynorm = torch.zeros_like(xty[:, 0]) if y_norm_sq is None else y_norm_sq.to(dtype)
    coef, residual = torch.zeros_like(xty), ynorm
    active = torch.ones_like(ynorm, dtype=torch.bool)
    energy = torch.ones_like(ynorm)
    rows: List[List[torch.Tensor]] = []  # the support's Cholesky factor, a (B,) tensor an entry
    picks: List[torch.Tensor] = []  # (B,) chosen atom per step
    steps: List[torch.Tensor] = []  # (B,) whether the step added an atom
    one = torch.ones_like(ynorm)
    for t in range(n_nonzero):
        alpha = xty - (coef[:, None, :] @ grams)[:, 0]
        score = torch.where(free, alpha.abs(), torch.full_like(alpha, -1.0))
        j = score.argmax(1, keepdim=True)
        a, g = alpha.gather(1, j)[:, 0], diag.gather(1, j)[:, 0]
        ok = active & free.gather(1, j)[:, 0] & (g > info.tiny)
        if t == 0:
            energy = torch.where(ok, a * a / torch.where(g > info.tiny, g, one), one)
        ok = ok & (a * a > info.eps * energy * g)
        g_sj = [grams.gather(1, p[:, None, None].expand(b, 1, n))[:, 0].gather(1, j)[:, 0] for p in picks]
        w = _forward_solve(rows, g_sj)
        schur = g - sum((v * v for v in w), torch.zeros_like(g))
        ok = ok & (schur > 16 * info.eps * g)
        # a frozen target keeps a harmless factor row (1 on the diagonal) so no NaN spreads
        rows.append([torch.where(ok, v, torch.zeros_like(v)) for v in w] +
                    [torch.where(ok, schur.clamp_min(info.tiny).sqrt(), one)])
        picks.append(j[:, 0])
        steps.append(ok)
        chosen = xty.gather(1, torch.stack(picks, 1))  # (B, t + 1)
        c = _backward_solve(rows, _forward_solve(rows, [chosen[:, m] * steps[m] for m in range(t + 1)]))
        c = torch.stack(c, 1) * torch.stack(steps, 1)
        new_coef = torch.zeros_like(coef).scatter_add(1, torch.stack(picks, 1), c)
        coef = torch.where(ok[:, None], new_coef, coef)
        residual = torch.where(ok, ynorm - (c * chosen).sum(1), residual)
        free = free & ((torch.arange(n, device=j.device)[None] != j) | ~ok[:, None])
        active = ok if tol is None else ok & (residual > tol)
    support = torch.stack([torch.where(s, p, torch.full_like(p, -1)) for p, s in zip(picks, steps)], 1)
    return coef, support, residual
