"""Reference restorations: the faithful per-image, per-restoration loops.

Pixel-wise (Marimont & Tarroni; the paper's section 2.4): run the whole prior, find
the next position in raster order whose NLL exceeds the threshold, replace its token
by a sample from p(. | prefix), run the whole prior again, continue after that
position. Light-Pixel-wise (section 3.5): run the prior once and replace every token
over the threshold by a sample from its original conditional. Both draw position i of
restoration j from the counter-based uniform of (seed_j, i) and sample by inverse CDF
(vqfast.reference.restore_step), like the fast paths.
"""

import torch

from vqfast.reference.restore_step import restore_step


@torch.no_grad()
def pixelwise_restore(prior, tokens: torch.Tensor, threshold: float, seed: int, temperature: float = 1.0):
    """tokens (h, w) of one image, seed (int64) of one restoration -> (restored (h, w),
    nll (h, w) of each position under its restored prefix)."""
    cur = tokens.reshape(-1).clone()
    n = cur.shape[0]
    nll = torch.empty(n, dtype=torch.float64)
    seeds = torch.tensor([seed], dtype=torch.int64, device=cur.device)
    start = 0
    while start < n:
        logits = prior.logits(cur[None])[0]  # (T, K): the full forward, recomputed after every restoration
        i = start
        while i < n:
            tok, value = restore_step(logits[i : i + 1], cur[i : i + 1], threshold, seeds, i, temperature)
            nll[i] = value[0]
            if value[0] > threshold:
                cur[i] = tok[0]
                break
            i += 1
        start = i + 1
    return cur.view(tokens.shape), nll.view(tokens.shape)


@torch.no_grad()
def light_restore(prior, tokens: torch.Tensor, threshold: float, seed: int, temperature: float = 1.0):
    """tokens (h, w), seed of one restoration -> (restored (h, w), nll (h, w) of the
    original tokens)."""
    flat = tokens.reshape(-1)
    logits = prior.logits(flat[None])[0]
    seeds = torch.tensor([seed], dtype=torch.int64, device=flat.device)
    out, nll = flat.clone(), torch.empty(flat.shape[0], dtype=torch.float64)
    for i in range(flat.shape[0]):
        tok, value = restore_step(logits[i : i + 1], flat[i : i + 1], threshold, seeds, i, temperature)
        out[i], nll[i] = tok[0], value[0]
    return out.view(tokens.shape), nll.view(tokens.shape)
