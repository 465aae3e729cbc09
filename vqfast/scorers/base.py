"""The scorer interface and dataset-level evaluation.

A scorer has ``fit(dataset)`` (a no-op where nothing is learnt) and
``score(images) -> ScoreBatch`` with anomalib-style fields.
"""

from typing import Dict, NamedTuple, Tuple

import torch

from vqfast import metrics


class ScoreBatch(NamedTuple):
    pred_score: torch.Tensor  # (B,) image anomaly scores, higher = more anomalous
    anomaly_map: torch.Tensor  # (B, H, W) pixel anomaly scores


def reduce_map(anomaly_map: torch.Tensor, reduction: str, topk: float) -> torch.Tensor:
    """(B, H, W) -> (B,): "max", "mean", or "topk_mean" (mean of the top ``topk``
    fraction of pixels, at least one)."""
    flat = anomaly_map.flatten(1)
    if reduction == "max":
        return flat.amax(1)
    if reduction == "mean":
        return flat.mean(1)
    if reduction == "topk_mean":
        k = max(1, int(round(topk * flat.shape[1])))
        return flat.topk(k, dim=1).values.mean(1)
    raise ValueError(f"reduction must be 'max', 'mean' or 'topk_mean', got {reduction!r}")


@torch.no_grad()
def score_dataset(scorer, dataset, batch_size: int = 32, device=None) -> Tuple[torch.Tensor, ...]:
    """(scores (N,), maps (N, H, W), labels (N,), masks (N, H, W)) on the CPU."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    scores, maps, labels, masks = [], [], [], []
    for batch in loader:
        x = batch["image"] if device is None else batch["image"].to(device)
        out = scorer.score(x)
        scores.append(out.pred_score.float().cpu())
        maps.append(out.anomaly_map.float().cpu())
        labels.append(torch.as_tensor(batch["label"]))
        masks.append(batch["mask"])
    return torch.cat(scores), torch.cat(maps), torch.cat(labels), torch.cat(masks)


def evaluate_scorer(scorer, dataset, batch_size: int = 32, device=None) -> Dict[str, float]:
    """All image metrics, and the pixel metrics when the dataset has masks."""
    scores, maps, labels, masks = score_dataset(scorer, dataset, batch_size, device)
    pixel = getattr(dataset, "has_masks", False) and bool(masks.any())
    return metrics.evaluate(labels, scores, masks if pixel else None, maps if pixel else None)
