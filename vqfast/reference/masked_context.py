"""Per-token loops for masked-context scoring (the density/restoration paper's eq. 20):
one masked forward of the bidirectional prior per token, the ground truth the batched
passes of vqfast.models.MaskedTokenPrior and vqfast.scorers.MaskedContextScorer are
tested against."""

import torch


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
