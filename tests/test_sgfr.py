"""Subspace-guided feature reconstruction: sampling, reconstruction, smoothing, detection."""

import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage

from vqfast.data import procedural_splits
from vqfast.models.backbones import Backbone
from vqfast.scorers import evaluate_scorer
from vqfast.scorers.base import gaussian_blur
from vqfast.scorers.sgfr import SGFRScorer


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: none can be fetched here
        return Backbone("resnet18", layers=(2, 3, 4))


@pytest.fixture(scope="module")
def data():
    return procedural_splits(size=64, n_train=60, n_test_normal=20, n_test_anomalous=20)


def test_sampling_reduces_the_bank_to_s_ref(backbone, data):
    train, test = data
    scorer = SGFRScorer(backbone, s_ref=10, s=7).fit(train)
    assert scorer.bank[4].shape[0] == 60
    support = scorer.sample(torch.stack([test[i]["image"] for i in range(8)]))
    assert support.shape == (8, 10)
    assert all(len(set(row.tolist())) == 10 and row.min() >= 0 for row in support)
    off = SGFRScorer(backbone, sampling=False).fit(train)
    assert torch.equal(off.sample(test[0]["image"][None])[0], torch.arange(60))


def test_training_images_reconstruct_exactly(backbone, data):
    train, _ = data
    scorer = SGFRScorer(backbone, sampling=False, s=60).fit(train)
    x = torch.stack([train[i]["image"] for i in range(3)])
    maps = scorer.score(x).anomaly_map
    test_maps = scorer.score(torch.stack([data[1][i]["image"] for i in range(3)])).anomaly_map
    assert maps.abs().max() < 1e-6 * test_maps.abs().max()


def test_detects_and_localises_procedural_defects(backbone, data):
    train, test = data
    result = evaluate_scorer(SGFRScorer(backbone, s_ref=10, s=7).fit(train), test)
    # measured 0.99 / 0.95 with a random ResNet-18
    assert result["image_auroc"] > 0.9 and result["pixel_auroc"] > 0.85


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_matches_scipy(gen, sigma):
    maps = torch.rand(2, 40, 33, generator=gen, dtype=torch.float64)
    ours = gaussian_blur(maps, sigma).numpy()
    ref = np.stack([ndimage.gaussian_filter(m, sigma, mode="mirror", truncate=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_bad_configuration(backbone, data):
    with pytest.raises(ValueError, match=r"levels \(1, 2\) and ref_level 3 are needed"):
        SGFRScorer(backbone, levels=(1, 2))
    with pytest.raises(ValueError, match="s_ref=100 exceeds the 60 training images"):
        SGFRScorer(backbone, s_ref=100).fit(data[0])
    with pytest.raises(RuntimeError, match="call fit"):
        SGFRScorer(backbone).score(torch.rand(1, 3, 64, 64))
