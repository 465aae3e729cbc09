"""vqfast.metrics against scikit-learn, a hand-computed AUPRO and a plain AUPRO loop."""

import numpy as np
import pytest
import torch
from scipy import ndimage
from sklearn import metrics as skm

from vqfast import metrics


@pytest.fixture
def rng(gen):
    return np.random.default_rng(int(torch.randint(2**31, (1,), generator=gen)))


@pytest.mark.parametrize("n", [2, 7, 500])
@pytest.mark.parametrize("ties", [False, True])
def test_image_metrics_match_sklearn(rng, n, ties):
    y = rng.integers(0, 2, n)
    y[:2] = [0, 1]
    s = rng.normal(size=n) + y
    if ties:
        s = np.round(s * 2) / 2  # many equal scores
    assert metrics.auroc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
    thr = float(np.median(s))
    assert metrics.f1_at_threshold(y, s, thr) == pytest.approx(skm.f1_score(y, s >= thr), abs=1e-12)
    precision, recall, thresholds = skm.precision_recall_curve(y, s)
    f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-300)
    best, best_thr = metrics.best_f1(y, s)
    assert best == pytest.approx(f1[:-1].max(), abs=1e-12)
    assert skm.f1_score(y, s >= best_thr) == pytest.approx(best, abs=1e-12)


def test_torch_inputs_and_pixel_auroc(rng):
    masks = torch.from_numpy(rng.random((4, 16, 16)) > 0.9)
    maps = torch.from_numpy(rng.normal(size=(4, 16, 16))).float() + masks
    assert metrics.auroc(masks, maps) == pytest.approx(
        skm.roc_auc_score(masks.numpy().ravel(), maps.numpy().ravel().astype(np.float64)), abs=1e-12
    )


def test_aupro_hand_computed():
    """Regions A = {(0,0),(0,1)} and B = {(1,3)}; five normal pixels. By score:
    0.9 A (FPR 0, PRO 1/4), 0.8 N (FPR 1/5), 0.7 B (PRO 3/4), 0.6 N (FPR 2/5), ...
    Area to FPR 0.3: 0.2 x 1/4 + 0.1 x 3/4 = 1/8; normalised: (1/8) / 0.3 = 5/12."""
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 1]]])
    maps = np.array([[[0.9, 0.5, 0.8, 0.6], [0.4, 0.3, 0.2, 0.7]]])
    assert metrics.aupro(masks, maps) == pytest.approx(5 / 12, abs=1e-12)
    # 4-connectivity does not change these regions; a diagonal pair would split.
    assert metrics.aupro(masks, maps, connectivity=4) == pytest.approx(5 / 12, abs=1e-12)
    diag = np.array([[[1, 0, 0], [0, 1, 0], [0, 0, 0]]])
    diag_maps = np.array([[[0.9, 0.1, 0.2], [0.3, 0.0, 0.4], [0.5, 0.6, 0.7]]])
    # 8-connected: one region of 2, half found at FPR 0 -> 0.5 until FPR 1 (all normals beat 0.0).
    assert metrics.aupro(diag, diag_maps, fpr_limit=1.0) == pytest.approx(0.5, abs=1e-12)
    # 4-connected: two regions, one found at FPR 0 -> PRO 0.5 likewise.
    assert metrics.aupro(diag, diag_maps, fpr_limit=1.0, connectivity=4) == pytest.approx(0.5, abs=1e-12)


def _aupro_plain(masks, maps, fpr_limit):
    """Textbook AUPRO: for each distinct threshold, label regions and measure."""
    labelled = [ndimage.label(m, structure=np.ones((3, 3)))[0] for m in masks]
    regions = [(i, lab == r) for i, lab in enumerate(labelled) for r in range(1, lab.max() + 1)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        pred = maps >= t
        fprs.append((pred & normal).sum() / normal.sum())
        pros.append(np.mean([pred[i][region].mean() for i, region in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= fpr_limit
    x, y = fprs[keep], pros[keep]
    j = np.argmax(fprs > fpr_limit) if (fprs > fpr_limit).any() else None
    if j is not None and x[-1] < fpr_limit:
        y_lim = pros[j - 1] + (fpr_limit - fprs[j - 1]) / (fprs[j] - fprs[j - 1]) * (pros[j] - pros[j - 1])
        x, y = np.r_[x, fpr_limit], np.r_[y, y_lim]
    return np.trapezoid(y, x) / fpr_limit


@pytest.mark.parametrize("fpr_limit", [0.05, 0.3, 1.0])
def test_aupro_matches_plain_loop(rng, fpr_limit):
    masks = np.zeros((3, 12, 12), dtype=np.uint8)
    masks[0, 2:5, 3:7] = 1
    masks[0, 8:11, 8:10] = 1
    masks[1, 0:3, 0:2] = 1
    maps = np.round(rng.normal(size=masks.shape) + 1.5 * masks, 1)  # rounded: ties
    assert metrics.aupro(masks, maps, fpr_limit) == pytest.approx(_aupro_plain(masks, maps, fpr_limit), abs=1e-12)


def test_perfect_and_inverted_maps():
    masks = np.zeros((2, 8, 8))
    masks[1, 2:4, 2:4] = 1
    assert metrics.aupro(masks, masks.astype(float)) == pytest.approx(1.0)
    assert metrics.aupro(masks, -masks.astype(float)) == pytest.approx(0.0)
    assert metrics.auroc(masks, masks) == 1.0


def test_evaluate_collects_everything(rng):
    labels = np.array([0, 0, 1, 1])
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    masks = np.zeros((4, 6, 6))
    masks[2:, 1:3, 1:3] = 1
    maps = rng.normal(size=masks.shape) + masks
    out = metrics.evaluate(labels, scores, masks, maps, threshold=0.3)
    assert set(out) == {"image_auroc", "image_ap", "image_best_f1", "image_best_f1_threshold", "image_f1",
                        "pixel_auroc", "pixel_ap", "aupro"}
    assert out["image_auroc"] == pytest.approx(0.75)
    assert out["image_f1"] == pytest.approx(skm.f1_score(labels, scores >= 0.3))


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: metrics.auroc([0, 0, 0], [0.1, 0.2, 0.3]), "both classes"),
        (lambda: metrics.auroc([0, 1], [0.1, 0.2, 0.3]), r"labels has shape \(2,\) but scores has shape \(3,\)"),
        (lambda: metrics.auroc([0, 1], [0.1, float("nan")]), "scores contains NaN"),
        (lambda: metrics.auroc([0, 2], [0.1, 0.2]), "labels must hold only 0 and 1"),
        (lambda: metrics.auroc([], []), "labels is empty"),
        (lambda: metrics.aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4))), "defect and normal pixels"),
        (lambda: metrics.aupro(np.zeros((4, 4)), np.zeros((4, 4))), r"must both be \(B, H, W\)"),
        (lambda: metrics.aupro(np.eye(4)[None], np.eye(4)[None], fpr_limit=0), "fpr_limit"),
    ],
)
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
