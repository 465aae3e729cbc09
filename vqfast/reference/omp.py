"""Reference orthogonal matching pursuit in Gram space: the textbook per-target loop."""

import torch


def omp(gram: torch.Tensor, xty: torch.Tensor, n_nonzero: int, tol=None, y_norm_sq=None):
    """Greedy sparse coding of each target (subspace-guided reconstruction, Algorithm 1).

    For every target: pick the atom with the largest |x_j^T e| among those not chosen
    (ties: lowest index), solve least squares on the support from scratch, update the
    residual e; stop after ``n_nonzero`` atoms, or once ||e||^2 <= ``tol``, or when no
    atom can be added. The two early stops, shared by every backend (see ``vqfast.ops.omp``):
    the residual is orthogonal to every atom left, alpha_j^2 <= eps E G_jj with E the
    energy the first atom explains; or x_j lies in the support's span, its Schur
    complement G_jj - G_Sj^T G_SS^-1 G_Sj <= 16 eps G_jj.

    Args:
        gram: (N, N) X^T X.  xty: (B, N) rows Y X.  y_norm_sq: (B,) ||y||^2 (needed by tol;
        omitted, it counts as 0 and residual_norm_sq is minus the explained energy).

    Returns:
        coef (B, N); support (B, n_nonzero) int64 in selection order, -1 after a stop;
        residual_norm_sq (B,) = ||y||^2 - ||X c||^2.
    """
    b, n = xty.shape
    coef = torch.zeros(b, n, dtype=xty.dtype, device=xty.device)
    support = torch.full((b, n_nonzero), -1, dtype=torch.int64, device=xty.device)
    ynorm = y_norm_sq if y_norm_sq is not None else torch.zeros(b, dtype=xty.dtype, device=xty.device)
    residual = ynorm.clone()
    info = torch.finfo(xty.dtype)
    for t in range(b):
        chosen = []
        c = xty.new_zeros(0)
        energy = None  # what the first atom explains: the scale of "no correlation left"
        for _ in range(n_nonzero):
            alpha = xty[t] - (gram[:, chosen] @ c if chosen else 0)
            score = alpha.abs()
            if chosen:
                score[chosen] = -1
            j = int(score.argmax())
            a, g = float(alpha[j]), float(gram[j, j])
            if g <= info.tiny:  # a zero atom (or a gram that is not X^T X)
                break
            if energy is None:
                energy = a * a / g
            if a * a <= info.eps * energy * g:  # the residual is orthogonal to every atom left
                break
            schur = g
            if chosen:
                schur -= float(gram[chosen, j] @ torch.linalg.solve(gram[chosen][:, chosen], gram[chosen, j]))
            if schur <= 16 * info.eps * g:  # x_j lies in the support's span
                break
            chosen.append(j)
            c = torch.linalg.solve(gram[chosen][:, chosen], xty[t, chosen])
            residual[t] = ynorm[t] - c @ xty[t, chosen]
            if tol is not None and float(residual[t]) <= tol:
                break
        support[t, : len(chosen)] = torch.tensor(chosen, dtype=torch.int64)
        if chosen:
            coef[t, chosen] = c
    return coef, support, residual
