"""Batched orthogonal matching pursuit (subspace-guided feature reconstruction, Algorithm 1)."""

from typing import Optional, Tuple

import torch

from vqfast import _ext, reference
from vqfast.ops import lowered
from vqfast.ops._checks import check_finite, check_same_device, check_tensor
from vqfast.ops._dispatch import resolve_backend, triton_unavailable_reason

OMP_DTYPES = (torch.float32, torch.float64)


@torch.library.custom_op("vqfast::omp", mutates_args=())
def _omp_op(gram: torch.Tensor, xty: torch.Tensor, n_nonzero: int, tol: float, y_norm_sq: torch.Tensor,
            backend: str) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    check_finite(gram, "gram")
    check_finite(xty, "xty")
    check_finite(y_norm_sq.unsqueeze(1), "y_norm_sq")
    if backend == "cpu":
        return _ext._C.omp_cpu(gram, xty, n_nonzero, tol, y_norm_sq)
    if backend == "cuda":
        return _ext._C.omp_cuda(gram, xty, n_nonzero, tol, y_norm_sq)
    if backend == "triton":
        from vqfast.kernels.omp_triton import omp_triton  # Triton is optional: imported when its backend runs

        return omp_triton(gram, xty, n_nonzero, tol, y_norm_sq)
    return reference.omp(gram, xty, n_nonzero, tol if tol >= 0 else None, y_norm_sq)


@_omp_op.register_fake
def _(gram, xty, n_nonzero, tol, y_norm_sq, backend):
    b, n = xty.shape
    return xty.new_empty((b, n)), xty.new_empty((b, n_nonzero), dtype=torch.int64), xty.new_empty((b,))


def omp(gram: torch.Tensor, xty: torch.Tensor, n_nonzero: int, tol: Optional[float] = None,
        y_norm_sq: Optional[torch.Tensor] = None, backend: str = "auto"):
    """Sparse codes of B targets over N atoms, all targets at once (Batch-OMP).

    For each target: repeatedly add the atom with the largest |x_j^T e| (ties: lowest
    index; the paper writes x_j^T e, the usual OMP takes the magnitude), refit on the
    support, update the residual e; stop after ``n_nonzero`` atoms, once
    ||e||^2 <= ``tol``, or early when no atom can be added. Early stops leave -1 in
    ``support``. With alpha_j = x_j^T e for the atom j about to be added, the early stops
    are (the same on every backend, and scale-free: multiplying X or y by a constant
    changes no decision):

    - no correlation left: alpha_j^2 <= eps * E * G_jj, E = alpha_j0^2 / G_j0j0 the energy
      the first atom explains. For unit atoms and unit energy this is scikit-learn's
      alpha_j^2 < eps; an absolute floor (the smallest normal) would let OMP keep adding
      atoms on rounding noise once y is explained (n_nonzero past the rank).
    - x_j in the support's span: its Schur complement G_jj - G_Sj^T G_SS^-1 G_Sj
      <= 16 eps G_jj (a duplicate's is rounding noise, ~eps G_jj). On an ill-conditioned
      support a dependent atom's computed Schur complement can exceed that floor, but
      its correlation with the refitted residual is then rounding noise too, which the
      relative stop above catches first. Scaling the floor by the support's conditioning
      (max ||x_i|| / L_ii) was tried and measured worse: it refused atoms scikit-learn
      rightly takes and raised the reconstruction error (float32 atoms with singular
      values 1..1e-3: 0.39 against 0.037 relative), while with the relative stop no
      target of 720 (rank 12, spectra down to 1e-11) took more atoms than the rank.
    - a zero atom: G_jj <= the dtype's smallest normal.

    Args:
        gram: (N, N) X^T X, float32 or float64.
        xty: (B, N) Y X (row b is X^T y_b), same dtype and device.
        n_nonzero: 1 <= n_nonzero <= N.
        tol: stop once the squared residual norm is <= tol (needs ``y_norm_sq``).
        y_norm_sq: (B,) ||y_b||^2; omitted, it counts as 0, so residual_norm_sq is
            then minus the explained energy ||X c||^2.
        backend: "auto" | "cuda" | "triton" | "cpu" | "reference" (see README). The
            CUDA kernel takes n_nonzero <= ``vqfast._C.omp_cuda_max_nonzero`` (1024);
            "auto" sends larger requests to Triton.

    Returns:
        coef (B, N), support (B, n_nonzero) int64 in selection order, residual_norm_sq (B,).
    """
    check_tensor(gram, "gram", ndim=2, layout="(N, N)", dtypes=OMP_DTYPES)
    check_tensor(xty, "xty", ndim=2, layout="(B, N)", dtypes=OMP_DTYPES)
    check_same_device(gram, "gram", xty, "xty")
    n = gram.shape[0]
    if gram.shape[1] != n:
        raise ValueError(f"gram must be square (N, N), got {tuple(gram.shape)}")
    if xty.shape[1] != n:
        raise ValueError(f"xty has {xty.shape[1]} columns but gram has N={n} atoms")
    if xty.dtype != gram.dtype:
        raise TypeError(f"gram is {gram.dtype} but xty is {xty.dtype}")
    if torch.compiler.is_exporting():  # standard operators in an exported graph (vqfast.ops.lowered)
        return lowered.omp(gram, xty, n_nonzero, tol, y_norm_sq)
    _check_symmetric(gram)
    if n == 0:
        raise ValueError("gram has no atoms (N=0)")
    if isinstance(n_nonzero, bool) or not isinstance(n_nonzero, int) or not 1 <= n_nonzero <= n:
        raise ValueError(f"n_nonzero must be an int in [1, N={n}], got {n_nonzero!r}")
    if tol is not None:
        if tol < 0:
            raise ValueError(f"tol must be >= 0, got {tol}")
        if y_norm_sq is None:
            raise ValueError("tol needs y_norm_sq (the targets' squared norms)")
    if y_norm_sq is None:
        y_norm_sq = xty.new_zeros(xty.shape[0])
    else:
        check_tensor(y_norm_sq, "y_norm_sq", ndim=1, layout="(B,)", dtypes=OMP_DTYPES)
        check_same_device(y_norm_sq, "y_norm_sq", xty, "xty")
        if y_norm_sq.shape[0] != xty.shape[0] or y_norm_sq.dtype != xty.dtype:
            raise ValueError(f"y_norm_sq must be ({xty.shape[0]},) {xty.dtype}, got {tuple(y_norm_sq.shape)} {y_norm_sq.dtype}")
    resolved = resolve_backend("omp", backend, xty.device)
    if resolved == "cuda" and n_nonzero > _ext._C.omp_cuda_max_nonzero:
        if backend == "cuda":
            raise ValueError(f"backend='cuda' supports n_nonzero <= {_ext._C.omp_cuda_max_nonzero}, got {n_nonzero}; "
                             "use 'auto' or 'triton'")
        resolved = "triton" if triton_unavailable_reason(xty.device) is None else "reference"
    if xty.shape[0] == 0:
        return xty.new_zeros((0, n)), xty.new_zeros((0, n_nonzero), dtype=torch.int64), xty.new_zeros((0,))
    return _omp_op(gram, xty, n_nonzero, -1.0 if tol is None else float(tol), y_norm_sq, resolved)


def _check_symmetric(gram: torch.Tensor) -> None:
    """The kernels read G's rows as its columns; a non-symmetric gram (not X^T X) would
    give silently wrong codes. Tolerance sqrt(eps) of the largest diagonal entry: far
    above a GEMM's rounding of X^T X, far below any real asymmetry."""
    if gram.numel() == 0:
        return
    asym = float((gram - gram.T).abs().amax())
    scale = float(gram.diagonal().abs().amax())
    if asym > torch.finfo(gram.dtype).eps ** 0.5 * scale:
        raise ValueError(f"gram must be symmetric (X^T X): max |gram - gram^T| = {asym:.3g} "
                         f"against a largest diagonal entry of {scale:.3g}")


def omp_dictionary(X: torch.Tensor, Y: torch.Tensor, n_nonzero: int, tol: Optional[float] = None,
                   backend: str = "auto"):
    """OMP of targets Y (B, D) over the columns of X (D, N): one GEMM for X^T X, one
    for Y X, then ``omp``. Returns coef (B, N), support, residual_norm_sq (B,)."""
    check_tensor(X, "X", ndim=2, layout="(D, N)", dtypes=OMP_DTYPES)
    check_tensor(Y, "Y", ndim=2, layout="(B, D)", dtypes=OMP_DTYPES)
    if Y.shape[1] != X.shape[0]:
        raise ValueError(f"Y has D={Y.shape[1]} but X has D={X.shape[0]} rows")
    return omp(X.T @ X, Y @ X, n_nonzero, tol, Y.square().sum(1), backend)
