"""Detection and localisation metrics, computed exactly from continuous scores.

Image level: AUROC, average precision, F1 at a threshold and the best F1 over all
thresholds. Pixel level: AUROC, average precision and AUPRO (per-region overlap
integrated up to a false-positive rate of 0.3 and normalised). Scores are never
binarised before a curve is computed; tied scores form one threshold.

Inputs are torch tensors or numpy arrays; labels/masks are 0/1 (or bool).
"""

from typing import Dict, Optional, Tuple

import numpy as np
from scipy import ndimage, stats


def has_both_classes(labels) -> bool:
    """Whether image labels (0, 1, or None where unknown) are all known and of both classes."""
    labels = list(labels)
    return None not in labels and len(set(labels)) == 2


def _scores(x, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.issubdtype(a.dtype, np.number) and a.dtype != bool:
        raise TypeError(f"{name} must be numeric, got {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise ValueError(f"{name} contains NaN or Inf")
    return a


def _labels(x, name: str) -> np.ndarray:
    a = _scores(x, name)
    if not np.isin(a, (0.0, 1.0)).all():
        raise ValueError(f"{name} must hold only 0 and 1 (or bool), got values {np.unique(a)[:5]}")
    return a.astype(bool)


def _pair(labels, scores, names=("labels", "scores")) -> Tuple[np.ndarray, np.ndarray]:
    y, s = _labels(labels, names[0]), _scores(scores, names[1])
    if y.shape != s.shape:
        raise ValueError(f"{names[0]} has shape {y.shape} but {names[1]} has shape {s.shape}")
    y, s = y.ravel(), s.ravel()
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        raise ValueError(f"{names[0]} must contain both classes (got {n_pos} positive of {y.size})")
    return y, s


def _curve(y: np.ndarray, s: np.ndarray):
    """True/false positives at each distinct threshold, highest threshold first."""
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    ends = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each tie group
    tps = np.cumsum(y)[ends]
    fps = ends + 1 - tps
    return tps, fps, s[ends]


def auroc(labels, scores) -> float:
    """Area under the ROC curve (Mann-Whitney U with mid-ranks for ties)."""
    y, s = _pair(labels, scores)
    n_pos = y.sum()
    n_neg = y.size - n_pos
    ranks = stats.rankdata(s)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(labels, scores) -> float:
    """Sum over thresholds of (recall step) x precision, no interpolation."""
    y, s = _pair(labels, scores)
    tps, fps, _ = _curve(y, s)
    recall = tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * tps / (tps + fps)))


def f1_at_threshold(labels, scores, threshold: float) -> float:
    """F1 of the prediction ``scores >= threshold``."""
    y, s = _pair(labels, scores)
    pred = s >= threshold
    tp = np.sum(pred & y)
    denom = pred.sum() + y.sum()
    return float(2 * tp / denom)


def best_f1(labels, scores) -> Tuple[float, float]:
    """The highest F1 over all thresholds, and the threshold (a score value) that
    reaches it; predictions are ``scores >= threshold``."""
    y, s = _pair(labels, scores)
    tps, fps, thresholds = _curve(y, s)
    f1 = 2 * tps / (tps + fps + y.sum())
    i = int(np.argmax(f1))
    return float(f1[i]), float(thresholds[i])


def aupro(masks, maps, fpr_limit: float = 0.3, connectivity: int = 8) -> float:
    """Normalised area under the per-region-overlap curve up to ``fpr_limit``.

    Args:
        masks: (B, H, W) ground truth, 0/1.
        maps: (B, H, W) anomaly scores.
        fpr_limit: integrate PRO over false-positive rates in [0, fpr_limit].
        connectivity: 8 (MVTec's convention) or 4, for splitting masks into regions.

    PRO(t) is the mean over all defect regions (connected components of each mask)
    of the fraction of the region scoring >= t; FPR(t) the fraction of normal pixels
    scoring >= t. The exact curve over every distinct score is integrated with the
    trapezoid rule, linearly interpolated at ``fpr_limit``, and divided by it.
    """
    m, a = _labels(masks, "masks"), _scores(maps, "maps")
    if m.shape != a.shape or m.ndim != 3:
        raise ValueError(f"masks and maps must both be (B, H, W), got {m.shape} and {a.shape}")
    if not 0 < fpr_limit <= 1:
        raise ValueError(f"fpr_limit must be in (0, 1], got {fpr_limit}")
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}")
    structure = np.ones((3, 3)) if connectivity == 8 else None
    region = np.zeros(m.shape, dtype=np.int64)
    n_regions = 0
    for i in range(m.shape[0]):
        lab, n = ndimage.label(m[i], structure=structure)
        region[i] = np.where(lab > 0, lab + n_regions, 0)
        n_regions += n
    n_normal = int((~m).sum())
    if n_regions == 0 or n_normal == 0:
        raise ValueError(f"masks must contain defect and normal pixels (got {n_regions} regions, {n_normal} normal pixels)")
    region, a = region.ravel(), a.ravel()
    sizes = np.bincount(region, minlength=n_regions + 1).astype(np.float64)
    weight = np.where(region > 0, 1.0 / sizes[region], 0.0) / n_regions

    order = np.argsort(-a, kind="mergesort")
    a, weight, normal = a[order], weight[order], region[order] == 0
    ends = np.r_[np.flatnonzero(np.diff(a)), a.size - 1]
    fpr = np.r_[0.0, np.cumsum(normal)[ends] / n_normal]
    pro = np.r_[0.0, np.cumsum(weight)[ends]]
    # Points up to the limit, then the curve interpolated at the limit.
    k = int(np.searchsorted(fpr, fpr_limit, side="right"))
    x, y = fpr[:k], pro[:k]
    if k < fpr.size and x[-1] < fpr_limit:
        t = (fpr_limit - fpr[k - 1]) / (fpr[k] - fpr[k - 1])
        x = np.r_[x, fpr_limit]
        y = np.r_[y, pro[k - 1] + t * (pro[k] - pro[k - 1])]
    return float(np.trapezoid(y, x) / fpr_limit)


def evaluate(
    image_labels,
    image_scores,
    masks=None,
    maps=None,
    *,
    threshold: Optional[float] = None,
    fpr_limit: float = 0.3,
) -> Dict[str, float]:
    """Every metric the inputs allow, as a flat dict.

    image_labels/image_scores: (B,); masks/maps: (B, H, W), optional. With
    ``threshold``, also ``image_f1`` at that threshold.
    """
    f1, thr = best_f1(image_labels, image_scores)
    out = {
        "image_auroc": auroc(image_labels, image_scores),
        "image_ap": average_precision(image_labels, image_scores),
        "image_best_f1": f1,
        "image_best_f1_threshold": thr,
    }
    if threshold is not None:
        out["image_f1"] = f1_at_threshold(image_labels, image_scores, threshold)
    if masks is not None and maps is not None:
        out["pixel_auroc"] = auroc(masks, maps)
        out["pixel_ap"] = average_precision(masks, maps)
        out["aupro"] = aupro(masks, maps, fpr_limit)
    return out


def evaluate_per_class(image_labels, image_scores, classes, masks=None, maps=None, *,
                       fpr_limit: float = 0.3) -> Dict[str, Dict[str, float]]:
    """``evaluate`` for each defect class against the defect-free images: class c's image
    AUROC / AP / best F1 rank its images among the good ones, and with masks and maps its
    pixel AUROC / AP and AUPRO take the pixels of its images and the good ones (its
    regions' overlap, the good images' false positives). classes: (B,) names, one per
    image; the classes of defective images (label 1) are reported, sorted."""
    labels = _labels(image_labels, "image_labels")
    scores = _scores(image_scores, "image_scores")
    classes = np.asarray(classes, dtype=object)
    good = labels == 0
    out = {}
    for name in sorted({str(c) for c in classes[labels == 1]}):
        keep = good | ((labels == 1) & (classes == name))
        with_pixels = (None, None)
        if masks is not None and maps is not None and np.asarray(masks)[keep].any():
            with_pixels = (np.asarray(masks)[keep], np.asarray(maps)[keep])
        out[name] = {"images": int(((labels == 1) & (classes == name)).sum()),
                     **evaluate(labels[keep], scores[keep], *with_pixels, fpr_limit=fpr_limit)}
    return out
