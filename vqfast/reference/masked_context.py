"""Per-token loops for masked-context scoring (the density/restoration paper's eq. 20):
one masked forward of the bidirectional prior per token, the ground truth the batched
passes of vqfast.models.MaskedTokenPrior and vqfast.scorers.MaskedContextScorer are
tested against."""

import torch

from vqfast.reference.restore_step import restore_step


@torch.no_grad()
def lattice_nll(prior, tokens: torch.Tensor, stride: int) -> torch.Tensor:
    """(M, h, w) -> (M, h, w): for each token, one forward of its grid with the lattice
    through it hidden (the positions congruent to it mod ``stride`` on both axes), and
    its NLL read there."""
    m, h, w = tokens.shape
    rows, cols = torch.arange(h, device=tokens.device), torch.arange(w, device=tokens.device)
    out = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    for b in range(m):
        for r in range(h):
            for c in range(w):
                hidden = (rows % stride == r % stride)[:, None] & (cols % stride == c % stride)[None, :]
                out[b, r, c] = prior.context_nll(tokens[b : b + 1], hidden[None])[0, r, c]
    return out


@torch.no_grad()
def context_nll_of_unusual(prior, tokens: torch.Tensor, unusual: torch.Tensor, order=None) -> torch.Tensor:
    """(M, h, w) tokens and ``unusual`` (M, h, w) bool -> (M, h, w): at each unusual
    token, -log p(s_i | the normal tokens), one forward per token with every unusual
    token of its grid hidden; 0 at the normal ones. ``order``: a permutation of the flat
    positions to visit them in (the result must not depend on it)."""
    m, h, w = tokens.shape
    out = torch.zeros(tokens.shape, dtype=torch.float32, device=tokens.device)
    positions = range(h * w) if order is None else [int(p) for p in order]
    for b in range(m):
        for p in positions:
            r, c = divmod(p, w)
            if unusual[b, r, c]:
                out[b, r, c] = prior.context_nll(tokens[b : b + 1], unusual[b : b + 1])[0, r, c]
    return out


@torch.no_grad()
def inpaint(prior, tokens: torch.Tensor, unusual: torch.Tensor, seeds: torch.Tensor, passes: int,
            temperature: float = 1.0) -> torch.Tensor:
    """Masked-context restoration, one grid at a time: (M, h, w) tokens, ``unusual``
    (M, h, w) bool, seeds (M,) int64 (one stream per grid) -> (M, h, w) in-painted.

    Pass t (of ``passes``) runs the prior with the still-hidden tokens hidden, draws a
    code at each of them from p(. | visible) (vqfast.reference.restore_step's inverse-CDF
    draw at counter t * T + position), and fixes the most confident draws (highest
    probability; the lower position first on ties) until ceil(n (t + 1) / passes) of the
    grid's n unusual tokens are fixed."""
    m, h, w = tokens.shape
    t_len = h * w
    out = tokens.clone()
    for b in range(m):
        grid = out[b : b + 1]
        hidden = unusual[b : b + 1].clone()
        n = int(hidden.sum())
        done = 0
        for t in range(passes):
            if not bool(hidden.any()):
                break
            logits = prior.logits(grid, hidden)[0]  # (T, K)
            draws = []
            for p in range(t_len):
                r, c = divmod(p, w)
                if hidden[0, r, c]:
                    sample, _ = restore_step(logits[p : p + 1], grid[0, r, c].view(1), float("-inf"),
                                             seeds[b : b + 1], t * t_len + p, temperature)
                    prob = torch.softmax(logits[p].double(), 0)[sample[0]]
                    draws.append((-float(prob), p, int(sample[0])))
            goal = -(-n * (t + 1) // passes)  # ceil
            for _, p, code in sorted(draws)[: goal - done]:
                r, c = divmod(p, w)
                grid[0, r, c] = code
                hidden[0, r, c] = False
            done = goal
    return out
