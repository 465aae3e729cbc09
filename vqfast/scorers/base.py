"""The scorer interface and dataset-level evaluation.

A scorer has ``fit(dataset)`` (a no-op where nothing is learnt) and
``score(images) -> ScoreBatch`` with anomalib-style fields.
"""

from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqfast import checkpoint, metrics


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


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) separable Gaussian smoothing, kernel radius 4 sigma, reflected borders."""
    if sigma <= 0:
        return maps
    radius = max(1, int(4 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = maps.unsqueeze(1)
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect" if pad_w else "replicate")
    x = F.conv2d(x, k[radius - pad_w : radius + pad_w + 1].view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect" if pad_h else "replicate")
    x = F.conv2d(x, k[radius - pad_h : radius + pad_h + 1].view(1, 1, -1, 1))
    return x.squeeze(1)


@torch.no_grad()
def score_dataset(scorer, dataset, batch_size: int = 32, device=None, out_dir=None, resume: bool = False,
                  progress: bool = False, stamp: Optional[Dict[str, str]] = None) -> Tuple[torch.Tensor, ...]:
    """(scores (N,), maps (N, H, W), labels (N,), masks (N, H, W)) on the CPU.

    out_dir: each batch's results go to ``<out_dir>/batch_<i>.safetensors`` as soon as
    they exist (atomically), so a crash loses at most one batch; ``resume=True`` reads
    the batches already there instead of scoring them again (same dataset order and
    batch_size, checked by the file's metadata, plus ``stamp``: e.g. the model's
    training step, so batches scored by an older model are refused).
    """
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    parts = []
    for i, batch in enumerate(tqdm(loader, desc="scoring", disable=not progress)):
        path = Path(out_dir) / f"batch_{i:05d}.safetensors" if out_dir is not None else None
        meta_expected = {"batch_size": str(batch_size), "n_items": str(len(dataset)),
                         **{k: str(v) for k, v in (stamp or {}).items()}}
        if resume and path is not None and path.is_file():
            tensors, meta = checkpoint.read(path)
            if {k: meta.get(k) for k in meta_expected} != meta_expected:
                raise checkpoint.CheckpointError(f"{path}: written for another dataset, batch size or model "
                                                 f"({meta}, expected {meta_expected})")
            parts.append(tensors)
            continue
        x = batch["image"] if device is None else batch["image"].to(device)
        out = scorer.score(x)
        part = {"scores": out.pred_score.float().cpu(), "maps": out.anomaly_map.float().cpu(),
                "labels": torch.as_tensor(batch["label"]), "masks": batch["mask"]}
        if path is not None:
            checkpoint.write_atomic(path, part, meta_expected)
        parts.append(part)
    if not parts:
        raise ValueError("dataset is empty")
    return tuple(torch.cat([p[k] for p in parts]) for k in ("scores", "maps", "labels", "masks"))


def evaluate_scorer(scorer, dataset, batch_size: int = 32, device=None) -> Dict[str, float]:
    """All image metrics, and the pixel metrics when the dataset has masks."""
    scores, maps, labels, masks = score_dataset(scorer, dataset, batch_size, device)
    pixel = getattr(dataset, "has_masks", False) and bool(masks.any())
    return metrics.evaluate(labels, scores, masks if pixel else None, maps if pixel else None)
