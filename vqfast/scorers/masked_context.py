"""Masked-context Sample-wise scoring: the density/restoration paper's eq. 20 (section 6.1)
with its Sample-wise rule (eqs. 9-10), on vqfast.models.MaskedTokenPrior.

Causal priors hide the tokens after i, and an anomalous token pollutes the context of
every later one. Eq. 20 instead scores with only the normal tokens as context:
- pass 1 marks the unusual tokens u: NLL over ``mark_threshold``, by the masked prior's own
  per-token NLL with each token's neighbourhood visible (``prior.nll``; default), or by a
  given raster prior's NLL (``marker``: GPT-2, Performer or PixelSNAIL, with its own
  threshold);
- pass 2, one forward with u hidden: NLL2_i = -log p(s_i | u-bar) at every token of u.
Image score: eq. 9's sum of xi(NLL2_i) over u (eq. 10: NLL2_i counts where it exceeds
lambda_S = ``threshold``); anomaly map: those values bilinearly resized to the image.

Departure from eq. 20, which multiplies p(s_i | u-bar) over every token: a token of u-bar
is context in pass 2, and its own likelihood given the other normal tokens would take one
more forward per token. Pass 1 judged it normal (under the marking threshold), so it adds
0 to the sum here; this keeps the paper's "two forward passes".

``fast=False`` runs vqfast.reference.masked_context's per-token loops (one forward per
token); the passes give the same values (tested in float64).
"""

from typing import Optional

import torch
import torch.nn.functional as F

from vqfast.reference import masked_context as ref
from vqfast.scorers.base import ScoreBatch
from vqfast.scorers.restoration import _TokenScorer


class MaskedContextScorer(_TokenScorer):
    """Args: vq_model; prior: a MaskedTokenPrior on the VQ model's grids; threshold:
    lambda_S on its NLLs (e.g. nll_threshold(prior, val_tokens, pct)); mark_threshold:
    pass 1's threshold (default ``threshold`` when the prior marks; required with a
    ``marker``); marker: a raster prior that marks u instead; fast (batched passes) or the
    reference loops."""

    def __init__(self, vq_model, prior, threshold: float, mark_threshold: Optional[float] = None, marker=None,
                 fast: bool = True):
        super().__init__(vq_model, prior, threshold)
        if marker is not None:
            if mark_threshold is None:
                raise ValueError("a marker prior needs its own mark_threshold (e.g. nll_threshold(marker, ...))")
            if marker.config.num_codes != prior.config.num_codes or \
                    (marker.config.height, marker.config.width) != (prior.config.height, prior.config.width):
                raise ValueError("marker and prior must model the same codes and grid")
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
        if self.marker is not None:
            nll = self.marker.nll(tokens)
        elif self.fast:
            nll = self.prior.nll(tokens)
        else:
            nll = ref.lattice_nll(self.prior, tokens, self.prior.config.context_stride)
        return nll.float() > self.mark_threshold

    @torch.no_grad()
    def context_nll(self, tokens: torch.Tensor, unusual: torch.Tensor) -> torch.Tensor:
        """Pass 2: (B, h, w) NLL2 at the tokens of u (given u-bar), 0 elsewhere."""
        if not self.fast:
            return ref.context_nll_of_unusual(self.prior, tokens, unusual)
        nll = self.prior.context_nll(tokens, unusual).float()
        return torch.where(unusual, nll, torch.zeros_like(nll))

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
        from vqfast.profiling import time_callable

        self._eval()
        tokens = self._tokens(images)
        unusual = self.unusual(tokens)
        dev = images.device
        return [time_callable(lambda: self.vq_model.encode_indices(images), name="encode (VQ)", device=dev,
                              repeats=repeats),
                time_callable(lambda: self.unusual(tokens), name="pass 1 (mark u)", device=dev, repeats=repeats),
                time_callable(lambda: self.context_nll(tokens, unusual), name="pass 2 (p(s_i | u-bar))", device=dev,
                              repeats=repeats),
                time_callable(lambda: self.score(images), name="score (total)", device=dev, repeats=repeats)]
