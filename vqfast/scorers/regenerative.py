"""Regenerative scoring: the residual between an image and its reconstruction."""

import torch

from vqfast.models.base import VQAutoencoder, check_precision
from vqfast.profiling import time_stages
from vqfast.scorers.base import ScoreBatch, check_images, reduce_map


class RegenerativeScorer:
    """anomaly_map = mean over channels of |x - reconstruct(x)|; pred_score = a
    reduction of the map: "mean" (default) is the density/restoration paper's rule,
    section 4: "take the L1 loss between an image x and its reconstruction x_hat", the
    mean of |x - x_hat| over pixels and channels; "max" and "topk_mean" (mean of the
    top ``topk`` fraction of pixels) are options (on surveillance frames "max" ranked
    below chance where the mean gave 0.62 AUROC).

    model: anything with ``reconstruct(x: (B, C, H, W)) -> (B, C, H, W)``.
    decode_precision: "float32", or "bfloat16" for a VQ autoencoder (its decoding under
    autocast, VQAutoencoder.reconstruct; the tokens never change).
    """

    def __init__(self, model, reduction: str = "mean", topk: float = 0.01, decode_precision: str = "float32"):
        reduce_map(torch.zeros(1, 1, 1), reduction, topk)  # validates the arguments
        check_precision(decode_precision)
        if decode_precision != "float32" and not isinstance(model, VQAutoencoder):
            raise ValueError(f"decode_precision={decode_precision!r} needs a VQ autoencoder; "
                             f"{type(model).__name__} reconstructs in its own dtype")
        self.model, self.reduction, self.topk = model, reduction, topk
        self.decode_precision = decode_precision

    def fit(self, dataset=None):
        """Nothing to learn: the model is the whole method."""
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> ScoreBatch:
        """images: (B, C, H, W) on the model's device."""
        check_images(images, self.model)
        self.model.eval()
        if self.decode_precision == "float32":
            reconstruction = self.model.reconstruct(images)
        else:
            reconstruction = self.model.reconstruct(images, self.decode_precision)
        residual = (images - reconstruction).abs().mean(1)
        return ScoreBatch(reduce_map(residual, self.reduction, self.topk), residual)

    def profile(self, images: torch.Tensor, repeats: int = 5):
        """Timings of the model's stages plus the whole score call."""
        if isinstance(self.model, VQAutoencoder):
            timings = self.model.profile(images, repeats, self.decode_precision)
        else:
            timings = self.model.profile(images, repeats) if hasattr(self.model, "profile") else []
        return timings + time_stages({"score (total)": lambda: self.score(images)}, images.device, repeats)
