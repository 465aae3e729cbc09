"""Density and restoration scorers over VQ token grids (the paper's eqs. 9-12, 3.5).

- SampleWiseScorer: AS = sum_i NLL_i [NLL_i > lambda_S] under the prior (eqs. 9-10).
- PixelWiseScorer: S restorations per image, each position tested under the already
  restored prefix and resampled when its NLL exceeds lambda_P; residuals |Y - X_j|
  weighted by softmax_j(k / sum_pixels |Y - X_j|) (eq. 11), each weighted residual
  smoothed by a 3x3 min-pool then a 7x7 average pool, summed (eq. 12).
- LightPixelWiseScorer: likelihoods once, every token over lambda_LP replaced by a
  sample from its original conditional; the same residual map.

``fast=True`` (default) runs all B x S restorations of a batch at once: with the
prior's incremental pass (GPT-2's and the Performer's KV cache or recurrent state,
PixelSNAIL's cached convolution rows), or for a prior without one, batched full
forwards that skip finished grids; ``fast=False`` runs vqfast.reference.restoration's
loops. Both draw the same counter-based uniforms, so they restore the same tokens. An image's
streams come from the scorer's seed and the image's own bits (not from a call
counter): the same image gets the same score in any batch, call or resumed run.
"""

import math
from typing import Optional

import torch
import torch.nn.functional as F

from vqfast.models.base import autocast_precision, check_precision
from vqfast.ops import restore_step
from vqfast.profiling import time_stages
from vqfast.reference import restoration as ref
from vqfast.reference.restore_step import image_seeds, stream_seeds, token_nll
from vqfast.scorers.base import ScoreBatch, check_images, reduce_map


@torch.no_grad()
def nll_threshold(prior, tokens: torch.Tensor, percentile: float, batch_size: int = 64,
                  precision: str = "float32") -> float:
    """The ``percentile`` (0-100) of the prior's per-token NLLs over grids (N, h, w),
    e.g. of training or validation tokens, as the paper sets lambda_S, lambda_P, lambda_LP;
    the prior run in ``precision`` (a scorer's prior_precision)."""
    if not 0 <= percentile <= 100:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    prior.eval()
    with autocast_precision(tokens.device, precision, "precision"):
        values = torch.cat([prior.nll(tokens[i : i + batch_size]).flatten().float().cpu()
                            for i in range(0, tokens.shape[0], batch_size)])
    return float(torch.quantile(values.double(), percentile / 100))


def smooth_residual(residual: torch.Tensor) -> torch.Tensor:
    """(N, H, W): 3x3 min-pool then 7x7 average pool, stride 1, size kept (borders
    average over the pixels inside)."""
    x = -F.max_pool2d(-residual.unsqueeze(1), 3, stride=1, padding=1)
    return F.avg_pool2d(x, 7, stride=1, padding=3, count_include_pad=False).squeeze(1)


def weighted_residual_map(images: torch.Tensor, restored: torch.Tensor, k: Optional[float] = None) -> torch.Tensor:
    """images (B, C, H, W), restored (B, S, C, H, W) decodings -> (B, H, W) eq. 12 map.

    k: the softmax temperature of eq. 11 (the paper leaves its value open); None
    uses the pixel count H W, so k / sum|Y - X_j| is one over the mean residual."""
    residual = (images.unsqueeze(1) - restored).abs().mean(2)  # (B, S, H, W)
    b, s, h, w = residual.shape
    k = float(h * w) if k is None else k
    weights = (k / residual.flatten(2).sum(2).clamp_min(1e-12)).softmax(1)  # (B, S)
    smoothed = smooth_residual((weights[:, :, None, None] * residual).view(b * s, h, w)).view(b, s, h, w)
    return smoothed.sum(1)


@torch.no_grad()
def batched_restore(prior, tokens: torch.Tensor, threshold: float, seeds: torch.Tensor, temperature: float = 1.0,
                    op_backend: str = "auto") -> torch.Tensor:
    """The Pixel-wise restoration of M grids with full forwards, batched, for a prior
    with no incremental step (no ``fast()``; GPT-2, Performer and PixelSNAIL have one):
    every round runs the prior on the grids that still have a position over the
    threshold, restores each one's next such position, and drops grids with nothing
    left. Rounds = the most restorations any grid needs + 1, instead of their sum (the
    reference loop). The S copies of an image share the first forward.

    tokens (M, h, w), seeds (M,) -> restored (M, h, w), the reference loop's tokens.
    """
    shape = tokens.shape[1:]
    flat = tokens.reshape(tokens.shape[0], -1).clone()
    n = flat.shape[1]
    start = torch.zeros(flat.shape[0], dtype=torch.int64, device=flat.device)
    positions = torch.arange(n, device=flat.device)
    active = torch.arange(flat.shape[0], device=flat.device)
    first = True
    while active.numel():
        if first:
            unique, inverse = torch.unique(flat, dim=0, return_inverse=True)
            logits = prior.logits(unique.view(-1, *shape))[inverse]  # (M, T, K)
            first = False
        else:
            logits = prior.logits(flat[active].view(-1, *shape))  # (A, T, K)
        work = logits.double() if logits.dtype == torch.float64 else logits.float()
        nll = token_nll(work, flat[active])  # the reference's formula: the one source of every decision
        over = (nll > threshold) & (positions[None] >= start[active][:, None])
        has = over.any(1)
        pos = over.int().argmax(1)
        for p in pos[has].unique().tolist():
            rows = has & (pos == p)
            idx = active[rows]
            # threshold -inf: the kernel samples where this NLL said to, never re-testing its own
            # (in float32 the two can fall on either side of a threshold close to the NLL).
            flat[idx, p], _ = restore_step(logits[rows, p], flat[idx, p], -math.inf, seeds[idx], p, temperature,
                                           backend=op_backend, validate=False)
        start[active[has]] = pos[has] + 1
        active = active[has & (pos + 1 < n)]
    return flat.view(tokens.shape)


class _TokenScorer:
    """prior_precision: "float32" (the default: the fast paths equal the reference
    loops' tokens) or "bfloat16": the prior's forwards run under bfloat16 autocast
    (faster where the hardware has bfloat16 matrix units; NLLs move by about 1e-2, so a
    token near a threshold can be judged the other way, and tokens and scores are close
    to float32's, not equal)."""

    def __init__(self, vq_model, prior, threshold: float, prior_precision: str = "float32"):
        check_precision(prior_precision, "prior_precision")
        self.prior_precision = prior_precision
        self._check_autocastable(prior, "prior")
        vq_codes = vq_model.vq.codebook.shape[0]
        if prior.config.num_codes != vq_codes:
            raise ValueError(f"the prior models {prior.config.num_codes} codes but the VQ model's codebook has "
                             f"{vq_codes}: train the prior on this VQ model's token grids "
                             f"({type(prior.config).__name__}(num_codes={vq_codes}, ...))")
        self.vq_model, self.prior, self.threshold = vq_model, prior, float(threshold)

    def _tokens(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, h, w) token grids, checked against the prior's grid."""
        check_images(images, self.vq_model, "the VQ model")
        check_images(images, self.prior, "the prior")
        tokens = self.vq_model.encode_indices(images)
        grid = (self.prior.config.height, self.prior.config.width)
        if tuple(tokens.shape[1:]) != grid:
            f = images.shape[-1] // tokens.shape[-1]
            raise ValueError(f"images of {images.shape[-2]}x{images.shape[-1]} give {tokens.shape[1]}x{tokens.shape[2]} "
                             f"token grids but the prior models {grid[0]}x{grid[1]}: score images of "
                             f"{grid[0] * f}x{grid[1] * f} (the size the prior's grids came from)")
        return tokens

    def fit(self, dataset=None):
        """Nothing to fit here: train the prior with vqfast.training.Trainer and set the
        threshold with nll_threshold."""
        return self

    def _eval(self):
        self.vq_model.eval()
        self.prior.eval()

    def _check_autocastable(self, model, what: str) -> None:
        dtype = next(model.parameters()).dtype
        if self.prior_precision == "bfloat16" and dtype != torch.float32:
            raise ValueError(f"prior_precision='bfloat16' runs a float32 {what} under autocast, which leaves a {dtype} "
                             f"{what} as it is: use a float32 {what} or prior_precision='float32'")

    def _prior_autocast(self, device: torch.device):
        return autocast_precision(device, self.prior_precision, "prior_precision")

    @torch.no_grad()
    def prior_nll(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, h, w) -> (B, h, w) float32 NLLs under the prior, in ``prior_precision``."""
        with self._prior_autocast(tokens.device):
            return self.prior.nll(tokens).float()


class SampleWiseScorer(_TokenScorer):
    """pred_score = sum of the NLLs over lambda_S (eq. 9); anomaly_map = those
    thresholded NLLs bilinearly resized to the image."""

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> ScoreBatch:
        self._eval()
        nll = self.prior_nll(self._tokens(images))
        xi = torch.where(nll > self.threshold, nll, torch.zeros_like(nll))
        maps = F.interpolate(xi.unsqueeze(1), size=images.shape[-2:], mode="bilinear", align_corners=False)
        return ScoreBatch(xi.flatten(1).sum(1), maps.squeeze(1))

    @torch.no_grad()
    def profile(self, images: torch.Tensor, repeats: int = 5):
        """Timings of encode (VQ), the prior's NLLs, and the whole score call."""
        self._eval()
        tokens = self._tokens(images)
        return time_stages({"encode (VQ)": lambda: self.vq_model.encode_indices(images),
                            f"prior (NLLs, {self.prior_precision})": lambda: self.prior_nll(tokens),
                            "score (total)": lambda: self.score(images)}, images.device, repeats)


class _RestorationScorer(_TokenScorer):
    """Args: vq_model, prior (same codes and grid); threshold (lambda_P or lambda_LP);
    restorations S; temperature of the samples; k of eq. 11 (None: the pixel count);
    reduction and topk of the map to the image score (default "mean": the density paper's
    AS_pixel is "the mean of all weighted residuals"; "max" and "topk_mean" are options);
    fast (batched passes) or the
    reference loops; op_backend of restore_step; seed: with each image's bits, the
    image's random streams (image_seeds), so a score never depends on call order;
    decode_precision: "float32" or "bfloat16" (VQAutoencoder.decode_grids: faster
    where the hardware has bfloat16, maps within about 1e-2 of float32's). Each distinct
    restored grid is decoded once. prior_precision: as _TokenScorer's."""

    def __init__(self, vq_model, prior, threshold: float, restorations: int = 5, temperature: float = 1.0,
                 k: Optional[float] = None, reduction: str = "mean", topk: float = 0.01, fast: bool = True,
                 op_backend: str = "auto", seed: int = 0, decode_precision: str = "float32",
                 prior_precision: str = "float32"):
        super().__init__(vq_model, prior, threshold, prior_precision)
        check_precision(decode_precision)
        self.decode_precision = decode_precision
        reduce_map(torch.zeros(1, 1, 1), reduction, topk)  # validates the arguments
        self.reduction, self.topk = reduction, topk
        if restorations < 1:
            raise ValueError(f"restorations must be >= 1, got {restorations}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.restorations, self.temperature, self.k = restorations, temperature, k
        self.fast, self.op_backend, self.seed = fast, op_backend, seed
        self._runner = None  # the prior's incremental runner, kept: its cache and captured CUDA graphs are reused

    def image_seeds(self, images: torch.Tensor) -> torch.Tensor:
        """(B,) int64: each image's seed, from the scorer's seed and the image's bits
        (vqfast.reference.image_seeds), so a score is a pure function of (models, image,
        seed): re-scoring, another batch or order, and a resumed run give the same."""
        return image_seeds(images, self.seed)

    def restore(self, tokens: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """tokens (B, h, w), seeds (B,) (image_seeds) -> restored (B, S, h, w), the prior in
        ``prior_precision``."""
        with self._prior_autocast(tokens.device):
            return self._restore(tokens, seeds)

    def _restore(self, tokens: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, restored: torch.Tensor) -> torch.Tensor:
        """restored (B, S, h, w) -> (B, S, C, H, W) decodings clamped to [0, 1]: each
        distinct grid once, in ``decode_precision``."""
        decoded = self.vq_model.decode_grids(restored.flatten(0, 1), self.decode_precision).clamp(0, 1)
        return decoded.view(*restored.shape[:2], *decoded.shape[1:])

    @torch.no_grad()
    def score(self, images: torch.Tensor, seeds: Optional[torch.Tensor] = None) -> ScoreBatch:
        """images (B, C, H, W); seeds (B,) int64 fixes the random streams (default:
        self.image_seeds(images), from the scorer's seed and each image's content)."""
        self._eval()
        if seeds is None:
            seeds = self.image_seeds(images)
        tokens = self._tokens(images)
        restored = self.restore(tokens, seeds)
        decoded = self.decode(restored)
        maps = weighted_residual_map(images, decoded, self.k)
        return ScoreBatch(reduce_map(maps, self.reduction, self.topk), maps)

    @torch.no_grad()
    def profile(self, images: torch.Tensor, repeats: int = 3):
        """Timings of each stage: encode (VQ), restoration (prior + sampling), decode
        (VQ), residual map (eqs. 11-12, smoothing included), and the whole score call."""
        self._eval()
        seeds = self.image_seeds(images)
        tokens = self._tokens(images)
        restored = self.restore(tokens, seeds)
        stacked = self.decode(restored)
        grids = restored.flatten(0, 1)
        distinct = torch.unique(grids.flatten(1), dim=0).shape[0]
        # one warm-up call a stage: restoring is the slow part, and its first call is not special
        return time_stages({
            "encode (VQ)": lambda: self.vq_model.encode_indices(images),
            f"restore (prior in {self.prior_precision} + sampling)": lambda: self.restore(tokens, seeds),
            f"decode (VQ, {distinct} distinct of {grids.shape[0]} grids, {self.decode_precision})":
                lambda: self.decode(restored),
            "residual map + smoothing": lambda: weighted_residual_map(images, stacked, self.k),
            "score (total)": lambda: self.score(images, seeds)}, images.device, repeats, warmup=1)


class PixelWiseScorer(_RestorationScorer):
    """Pixel-wise restoration (eqs. 11-12); args as _RestorationScorer: threshold
    lambda_P, restorations S, temperature of the samples, k of eq. 11, reduction of the
    map to the image score, fast (KV-cached batched pass) or the reference loop."""

    def _restore(self, tokens: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        b, s = tokens.shape[0], self.restorations
        streams = stream_seeds(seeds, s)  # (B, S)
        if self.fast:
            grids = tokens.repeat_interleave(s, 0)
            if hasattr(self.prior, "fast"):  # an incremental step: one cached pass
                if self._runner is None:
                    self._runner = self.prior.fast()
                restored, _ = self._runner.restore(grids, self.threshold, streams.flatten(), self.temperature,
                                                 op_backend=self.op_backend)
            else:
                restored = batched_restore(self.prior, grids, self.threshold, streams.flatten(), self.temperature,
                                           self.op_backend)
            return restored.view(b, s, *tokens.shape[1:])
        return torch.stack([torch.stack([ref.pixelwise_restore(self.prior, tokens[n], self.threshold,
                                                               int(streams[n, j]), self.temperature)[0]
                                         for j in range(s)]) for n in range(b)])


class LightPixelWiseScorer(_RestorationScorer):
    """Light-Pixel-wise restoration (section 3.5): the prior runs once per image."""

    def _restore(self, tokens: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        b, s = tokens.shape[0], self.restorations
        streams = stream_seeds(seeds, s)
        if not self.fast:
            return torch.stack([torch.stack([ref.light_restore(self.prior, tokens[n], self.threshold, int(streams[n, j]),
                                                               self.temperature)[0]
                                             for j in range(s)]) for n in range(b)])
        logits = self.prior.logits(tokens)  # (B, T, K): once for all S restorations
        flat = tokens.reshape(b, -1)
        work = logits.double() if logits.dtype == torch.float64 else logits.float()
        over = (token_nll(work, flat) > self.threshold).repeat_interleave(s, 0)  # the one decision source
        rows_seeds = streams.flatten()
        out = flat.repeat_interleave(s, 0)
        for i in over.any(0).nonzero().flatten().tolist():
            rows = over[:, i].nonzero().flatten()
            # threshold -inf: the kernel samples where this NLL said to, never re-testing its own
            out[rows, i], _ = restore_step(logits[rows // s, i], out[rows, i], -math.inf, rows_seeds[rows], i,
                                           self.temperature, backend=self.op_backend, validate=False)
        return out.view(b, s, *tokens.shape[1:])
