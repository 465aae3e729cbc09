"""Masked-context scoring: the density/restoration paper's eq. 20 (section 6.1) on
vqfast.models.MaskedTokenPrior, with its Sample-wise rule (eqs. 9-10,
``MaskedContextScorer``) and as a restoration (eqs. 11-12, ``MaskedRestorationScorer``).

Causal priors hide the tokens after i, and an anomalous token pollutes the context of
every later one. Eq. 20 instead scores with only the normal tokens as context:
- pass 1 marks the unusual tokens u: NLL over ``mark_threshold``, by the masked prior's own
  per-token NLL with each token's neighbourhood visible (``prior.nll``; default), or by a
  given raster prior's NLL (``marker``: GPT-2, Performer or PixelSNAIL, with its own
  threshold);
- pass 2, one forward with u hidden: NLL2_i = -log p(s_i | u-bar) at every token of u
  (the last layer's queries, feed-forward and head run at u's rows only: prior.logits(at=u)).
Image score: eq. 9's sum of xi(NLL2_i) over u (eq. 10: NLL2_i counts where it exceeds
lambda_S = ``threshold``); anomaly map: those values bilinearly resized to the image.

Departure from eq. 20, which multiplies p(s_i | u-bar) over every token: a token of u-bar
is context in pass 2, and its own likelihood given the other normal tokens would take one
more forward per token. Pass 1 judged it normal (under the marking threshold), so it adds
0 to the sum here; this keeps the paper's "two forward passes".

Masked-context restoration: the tokens of u are in-painted from p(. | u-bar) in a few
parallel passes, most confident first (each pass draws a code at every still-hidden
token and fixes the most probable draws until ceil(n (t + 1) / passes) of the grid's n
unusual tokens are fixed, a linear schedule), S restorations of every image in one batch,
with the counter-based draws of the other restoration scorers (image seed, restoration,
pass and position), so a score never depends on call order. Tokens outside u never
change. The restorations are decoded and scored with eqs. 11-12 like Pixel-wise.

``fast=False`` runs vqfast.reference.masked_context's loops (one forward per token, or per
grid and pass); the batched passes give the same values and tokens (tested in float64).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from vqfast.profiling import time_stages
from vqfast.reference import masked_context as ref
from vqfast.reference.restore_step import restore_step, stream_seeds
from vqfast.scorers.base import ScoreBatch
from vqfast.scorers.restoration import _RestorationScorer, _TokenScorer


def _check_marker(prior, marker):
    if marker is not None and (marker.config.num_codes != prior.config.num_codes or
                               (marker.config.height, marker.config.width) != (prior.config.height,
                                                                               prior.config.width)):
        raise ValueError("marker and prior must model the same codes and grid")


@torch.no_grad()
def mark_unusual(prior, tokens: torch.Tensor, threshold: float, marker=None, fast: bool = True) -> torch.Tensor:
    """Pass 1: (B, h, w) tokens -> (B, h, w) bool, the tokens whose NLL exceeds
    ``threshold``: under ``marker`` (a raster prior) when given, else under the masked
    prior with each token's neighbourhood visible (prior.nll; fast=False: its loop)."""
    if marker is not None:
        nll = marker.nll(tokens)
    elif fast:
        nll = prior.nll(tokens)
    else:
        nll = ref.lattice_nll(prior, tokens, prior.config.context_stride)
    return nll.float() > threshold


class MaskedContextScorer(_TokenScorer):
    """Args: vq_model; prior: a MaskedTokenPrior on the VQ model's grids; threshold:
    lambda_S on its NLLs (e.g. nll_threshold(prior, val_tokens, pct)); mark_threshold:
    pass 1's threshold (default ``threshold`` when the prior marks; required with a
    ``marker``); marker: a raster prior that marks u instead; fast (batched passes) or the
    reference loops; prior_precision: both priors' forwards in "float32" or "bfloat16"
    (vqfast.scorers.SampleWiseScorer's)."""

    def __init__(self, vq_model, prior, threshold: float, mark_threshold: Optional[float] = None, marker=None,
                 fast: bool = True, prior_precision: str = "float32"):
        super().__init__(vq_model, prior, threshold, prior_precision)
        if marker is not None:
            if mark_threshold is None:
                raise ValueError("a marker prior needs its own mark_threshold (e.g. nll_threshold(marker, ...))")
            _check_marker(prior, marker)
            self._check_autocastable(marker, "marker")
        self.marker = marker
        self.mark_threshold = float(threshold if mark_threshold is None else mark_threshold)
        self.fast = fast

    def _eval(self):
        super()._eval()
        if self.marker is not None:
            self.marker.eval()

    @torch.no_grad()
    def unusual(self, tokens: torch.Tensor) -> torch.Tensor:
        """Pass 1: (B, h, w) tokens -> (B, h, w) bool, the tokens u."""
        with self._prior_autocast(tokens.device):
            return mark_unusual(self.prior, tokens, self.mark_threshold, self.marker, self.fast)

    @torch.no_grad()
    def context_nll(self, tokens: torch.Tensor, unusual: torch.Tensor) -> torch.Tensor:
        """Pass 2: (B, h, w) NLL2 at the tokens of u (given u-bar), 0 elsewhere."""
        with self._prior_autocast(tokens.device):
            if not self.fast:
                return ref.context_nll_of_unusual(self.prior, tokens, unusual)
            logits = self.prior.logits(tokens, unusual, at=unusual).float()
        nll = torch.zeros(tokens.shape, dtype=logits.dtype, device=tokens.device)
        nll[unusual] = F.cross_entropy(logits, tokens[unusual], reduction="none")
        return nll

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> ScoreBatch:
        self._eval()
        tokens = self._tokens(images)
        unusual = self.unusual(tokens)
        nll = self.context_nll(tokens, unusual)
        xi = torch.where(nll > self.threshold, nll, torch.zeros_like(nll))
        maps = F.interpolate(xi.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return ScoreBatch(xi.flatten(1).sum(1), maps.squeeze(1))

    @torch.no_grad()
    def profile(self, images: torch.Tensor, repeats: int = 5):
        """Timings of encode (VQ), pass 1 (marking), pass 2 (context NLLs) and the whole
        score call."""
        self._eval()
        tokens = self._tokens(images)
        unusual = self.unusual(tokens)
        return time_stages({"encode (VQ)": lambda: self.vq_model.encode_indices(images),
                            "pass 1 (mark u)": lambda: self.unusual(tokens),
                            "pass 2 (p(s_i | u-bar))": lambda: self.context_nll(tokens, unusual),
                            "score (total)": lambda: self.score(images)}, images.device, repeats)


class MaskedRestorationScorer(_RestorationScorer):
    """Masked-context restoration (the module docstring). Args as the other restoration
    scorers (vqfast.scorers.PixelWiseScorer): threshold marks u, on the masked prior's
    neighbourhood NLLs or, with ``marker`` (a raster prior), on that prior's NLLs;
    passes: the in-painting passes; restorations S, temperature, k of eq. 11, reduction,
    fast (batched) or the reference loop, seed, decode_precision and prior_precision (both
    priors' forwards)."""

    def __init__(self, vq_model, prior, threshold: float, passes: int = 4, marker=None, **kwargs):
        super().__init__(vq_model, prior, threshold, **kwargs)
        if passes < 1:
            raise ValueError(f"passes must be >= 1, got {passes}")
        _check_marker(prior, marker)
        if marker is not None:
            self._check_autocastable(marker, "marker")
        self.passes, self.marker = passes, marker

    def _eval(self):
        super()._eval()
        if self.marker is not None:
            self.marker.eval()

    @torch.no_grad()
    def _restore(self, tokens: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        b, s = tokens.shape[0], self.restorations
        unusual = mark_unusual(self.prior, tokens, self.threshold, self.marker, self.fast)
        streams = stream_seeds(seeds, s).reshape(-1)
        grids, hidden = tokens.repeat_interleave(s, 0), unusual.repeat_interleave(s, 0)
        if not self.fast:
            out = ref.inpaint(self.prior, grids, hidden, streams, self.passes, self.temperature)
        else:
            out = self._inpaint(grids, hidden, streams, s)
        return out.view(b, s, *tokens.shape[1:])

    def _inpaint(self, grids: torch.Tensor, hidden: torch.Tensor, seeds: torch.Tensor, copies: int) -> torch.Tensor:
        """All M grids at once; the reference's rule (vqfast.reference.masked_context.inpaint).
        ``copies``: consecutive grids that are the same image's restorations. Their first
        pass sees the same input (u hidden, u-bar as it is), so it runs once per image."""
        m, h, w = grids.shape
        t_len = h * w
        grid, hidden = grids.clone().view(m, t_len), hidden.clone().view(m, t_len)
        n = hidden.sum(1)
        positions = torch.arange(t_len, device=grids.device)
        done = torch.zeros_like(n)
        for t in range(self.passes):
            if not bool(hidden.any()):
                break
            # logits only at the hidden tokens (prior.logits(at=...)): at[index[g', p]] is the
            # row of grid g' and position p
            first = t == 0
            inputs, masks = (grid[::copies], hidden[::copies]) if first else (grid, hidden)
            index = torch.full(masks.shape, -1, dtype=torch.int64, device=grids.device)
            index[masks] = torch.arange(int(masks.sum()), device=grids.device)
            logits = self.prior.logits(inputs.view(-1, h, w), masks.view(-1, h, w), at=masks.view(-1, h, w))
            row = torch.arange(m, device=grids.device) // (copies if first else 1)  # grid m's row of index
            # draws only at the hidden tokens (each a pure function of its logits and counter);
            # float32 at least, as the other scorers decide (bfloat16 logits under prior_precision)
            g, p = hidden.nonzero(as_tuple=True)
            at = logits[index[row[g], p]]
            at = at if at.dtype == torch.float64 else at.float()
            drawn, _ = restore_step(at, grid[g, p], float("-inf"), seeds[g], t * t_len + p, self.temperature)
            prob = torch.softmax(at.double(), -1).gather(-1, drawn[:, None])[:, 0]
            # rank of each hidden draw by (probability desc, position asc); visible ones last
            key = torch.full((m, t_len), float("inf"), dtype=torch.float64, device=grids.device)
            key[g, p] = -prob
            order = torch.sort(key, dim=1, stable=True).indices
            rank = torch.empty_like(order)
            rank.scatter_(1, order, positions.expand(m, t_len).contiguous())
            goal = -(-n * (t + 1) // self.passes)
            fix = hidden & (rank < (goal - done)[:, None])
            sample = grid.clone()
            sample[g, p] = drawn
            grid = torch.where(fix, sample, grid)
            hidden = hidden & ~fix
            done = goal
        return grid.view(m, h, w)
