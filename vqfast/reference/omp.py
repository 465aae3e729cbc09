"""Reference orthogonal matching pursuit in Gram space: the textbook per-target loop."""

import torch


def omp(gram: torch.Tensor, xty: torch.Tensor, n_nonzero: int, tol=None, y_norm_sq=None):
    """Greedy sparse coding of each target (subspace-guided reconstruction, Algorithm 1).

    For every target: pick the atom with the largest |x_j^T e| among those not chosen
    (ties: lowest index), solve least squares on the support from scratch, update the
    residual e; stop after ``n_nonzero`` atoms, or once ||e||^2 <= ``tol``, or when no
    atom can be added (the residual is orthogonal to every remaining atom, or the next
    atom is linearly dependent on the support, e.g. a zero or duplicate column).

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
    tiny = torch.finfo(xty.dtype).tiny
    dependent = 16 * torch.finfo(xty.dtype).eps  # relative: rounding leaves ~eps G_jj for a duplicate
    for t in range(b):
        chosen = []
        c = xty.new_zeros(0)
        for _ in range(n_nonzero):
            alpha = xty[t] - (gram[:, chosen] @ c if chosen else 0)
            score = alpha.abs()
            if chosen:
                score[chosen] = -1
            j = int(score.argmax())
            if float(alpha[j]) ** 2 < tiny:
                break
            trial = chosen + [j]
            g = gram[trial][:, trial]
            # Dependent atom: the Schur complement of the new atom vanishes.
            if float(gram[j, j]) <= tiny:
                break
            if chosen:
                w = torch.linalg.solve(gram[chosen][:, chosen], gram[chosen, j])
                if float(gram[j, j] - gram[chosen, j] @ w) <= dependent * float(gram[j, j]):
                    break
            chosen = trial
            c = torch.linalg.lstsq(g, xty[t, chosen].unsqueeze(1)).solution[:, 0]
            residual[t] = ynorm[t] - c @ xty[t, chosen]
            if tol is not None and float(residual[t]) <= tol:
                break
        support[t, : len(chosen)] = torch.tensor(chosen, dtype=torch.int64)
        if chosen:
            coef[t, chosen] = c
    return coef, support, residual
