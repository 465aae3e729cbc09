"""DSR scoring: the anomaly map the network predicts, and the authors' image score."""

import torch

from vqfast.profiling import time_stages
from vqfast.scorers.base import ScoreBatch, check_images


class DSRScorer:
    """anomaly_map (B, H, W): the upsampling module's anomaly probability; pred_score
    (B,): the maximum of the anomaly module's mask averaged over 21 x 21 windows (the
    authors' rule, ``DSRConfig.score_window``). model: a trained vqfast.models.DSR."""

    def __init__(self, model):
        self.model = model

    def fit(self, dataset=None):
        """Nothing to fit: DSR's three training stages are the method (vqfast.models.dsr)."""
        return self

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> ScoreBatch:
        """images: (B, C, H, W), H and W multiples of 32, on the model's device."""
        check_images(images, self.model, "the DSR model")
        self.model.eval()
        anomaly_map, score = self.model.predict(images)
        return ScoreBatch(score, anomaly_map)

    def profile(self, images: torch.Tensor, repeats: int = 5):
        """The model's stage timings plus the whole score call."""
        return self.model.profile(images, repeats) + time_stages({"score (total)": lambda: self.score(images)},
                                                                 images.device, repeats)
