"""Threshold percentiles searched on a validation split, as the density/restoration
paper's appendix (tables 13-24) tunes lambda_S, lambda_P and lambda_LP."""

from pathlib import Path
from typing import Callable, Dict, Sequence

import torch

from vqfast import metrics
from vqfast.data import dataset_labels
from vqfast.scorers.base import score_dataset
from vqfast.scorers.restoration import nll_threshold

PAPER_GRID = (20, 40, 60, 80, 90)  # the percentiles of tables 13-24

# (lambda_S, lambda_P, lambda_LP) percentiles of tables 6, 7 and 8, per VQ model and prior.
# The Performer is a transformer: it takes the GPT-2 ("Transformer") column's percentiles.
PAPER_PERCENTILES = {("VQVAE", "pixelsnail"): (60, 90, 80), ("VQVAE", "gpt2"): (40, 80, 40),
                     ("VQGAN", "pixelsnail"): (60, 90, 60), ("VQGAN", "gpt2"): (40, 90, 80),
                     ("VQVAE", "performer"): (40, 80, 40), ("VQGAN", "performer"): (40, 90, 80)}


def search_percentile(build: Callable[[float], object], prior, normal_tokens: torch.Tensor, val_dataset,
                      percentiles: Sequence[float] = PAPER_GRID, batch_size: int = 8, out_dir=None,
                      resume: bool = False, progress: bool = False) -> Dict:
    """Score ``val_dataset`` (normal and anomalous items) once per percentile and pick one.

    Args:
        build: threshold (float) -> scorer; the scorer under test at that threshold.
        prior: whose NLLs set the threshold: the ``percentile`` of its per-token NLLs
            over ``normal_tokens`` (N, h, w) int64 (the normal validation grids).
        val_dataset: items with labels of both classes (never the test split).
        out_dir: each percentile's scores go to ``<out_dir>/p<percentile>`` (resumable).

    Returns {"grid": [{percentile, threshold, image_auroc, image_best_f1}, ...],
    "percentile", "threshold", "rule"}. The rule: highest validation image AUROC, ties
    broken by best F1, then by the lower percentile. The paper reports both F1 and AUC
    per percentile without stating which one picks; AUROC needs no decision threshold.
    """
    labels = dataset_labels(val_dataset)
    if labels.unique().numel() != 2:
        raise ValueError("val_dataset must hold normal and anomalous items to search a threshold on")
    grid = []
    for pct in percentiles:
        threshold = nll_threshold(prior, normal_tokens, pct)
        folder = None if out_dir is None else Path(out_dir) / f"p{pct:g}"
        scores, _, labels, _ = score_dataset(build(threshold), val_dataset, batch_size=batch_size, out_dir=folder,
                                             resume=resume, progress=progress)
        grid.append({"percentile": pct, "threshold": threshold, "image_auroc": metrics.auroc(labels, scores),
                     "image_best_f1": metrics.best_f1(labels, scores)[0]})
    best = max(grid, key=lambda r: (r["image_auroc"], r["image_best_f1"], -r["percentile"]))
    return {"grid": grid, "percentile": best["percentile"], "threshold": best["threshold"],
            "rule": "max validation image AUROC, then best F1, then the lower percentile"}

