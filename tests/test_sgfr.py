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


def test_sampling_is_omp_over_the_bank_at_the_reference_level(backbone, data):
    """Eqs. 6-7 computed independently: scikit-learn's OMP of y_ref over the N training
    images' level-l_ref features (columns) picks the same s_ref images."""
    from sklearn.linear_model import orthogonal_mp

    train, test = data
    scorer = SGFRScorer(backbone, s_ref=10, s=7).fit(train)
    images = torch.stack([test[i]["image"] for i in (0, 5, 25, 39)])
    support = scorer.sample(images)
    feats = lambda x: backbone(x)[4].double().flatten(1).numpy()  # noqa: E731  level 4 = l_ref
    bank = np.concatenate([feats(torch.stack([train[i]["image"] for i in range(j, min(j + 16, len(train)))]))
                           for j in range(0, len(train), 16)])
    coef = orthogonal_mp(bank.T, feats(images).T, n_nonzero_coefs=10)  # (N, B)
    for b in range(4):
        assert set(support[b].tolist()) == set(np.flatnonzero(coef[:, b]).tolist())


class _PoolBackbone(torch.nn.Module):
    """Level l features: the image average-pooled by 2^l (a backbone whose features we
    can reason about)."""

    layers = (1, 2, 3)

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()), requires_grad=False)

    def forward(self, x):
        return {lvl: torch.nn.functional.avg_pool2d(x, 2**lvl) for lvl in self.layers}


class _Items(list):
    has_masks = True


def _gratings(gen, vertical, n, defect=False, size=64):
    """Zero-mean sine gratings of 1 or 2 cycles at random phases, vertical or horizontal
    (the two families are orthogonal); defects add 0.25 on a 12 x 12 square."""
    items = []
    for _ in range(n):
        f = int(torch.randint(1, 3, (1,), generator=gen))
        phase = float(torch.rand(1, generator=gen)) * 2 * np.pi
        wave = 0.4 * torch.sin(2 * np.pi * f * torch.arange(size) / size + phase)
        image = (wave[None, :] if vertical else wave[:, None]).expand(size, size).clone()
        mask = torch.zeros(size, size, dtype=torch.bool)
        if defect:
            r, c = torch.randint(4, size - 16, (2,), generator=gen).tolist()
            image[r:r + 12, c:c + 12] += 0.25
            mask[r:r + 12, c:c + 12] = True
        items.append({"image": image.expand(3, size, size).clone(), "mask": mask, "label": int(defect)})
    return items


def test_detection_depends_on_the_sampled_subspace(gen):
    """A bank of two orthogonal families, the test images' family second: the paper's
    sampling finds that family and localises the defects (pixel AUROC 1.0 measured);
    "the first s_ref training images" (the other family) cannot reconstruct anything and
    drops to 0.3-0.7."""
    bank = _Items(_gratings(gen, True, 20) + _gratings(gen, False, 20))
    test = _Items(_gratings(gen, False, 10) + _gratings(gen, False, 10, defect=True))
    scorer = SGFRScorer(_PoolBackbone(), levels=(1, 2), ref_level=3, s_ref=8, s=6, sigma=1.0).fit(bank)
    support = scorer.sample(torch.stack([t["image"] for t in test[:10]]))  # normal: only their own family
    assert bool(((support >= 20) | (support == -1)).all()) and bool((support >= 20).any(1).all())
    sampled = evaluate_scorer(scorer, test)
    scorer._sample = lambda y: torch.arange(8).expand(y.shape[0], 8)
    first = evaluate_scorer(scorer, test)
    assert sampled["pixel_auroc"] > 0.95 and sampled["image_auroc"] > 0.95
    assert first["pixel_auroc"] < sampled["pixel_auroc"] - 0.2


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


def test_any_backbone_serves_the_default_levels(data):
    """SGFRScorer(Backbone("resnet18")) as the README writes it: the backbone is asked
    for levels 2, 3 and l_ref 4 whatever layers it was built with."""
    train, test = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scorer = SGFRScorer(Backbone("resnet18")).fit(train)
    out = scorer.score(torch.stack([test[i]["image"] for i in (0, 30)]))
    assert out.anomaly_map.shape == (2, 64, 64) and set(scorer.bank) == {2, 3, 4}


def test_scoring_at_another_size_or_device_says_so(backbone, data):
    train, test = data
    scorer = SGFRScorer(backbone, s_ref=5, s=3).fit(train)
    with pytest.raises(ValueError, match=r"images are 96x96 but the memory bank was fitted on 64x64 images: score "
                                         r"at the fitted size \(e.g. ImageTransform\(size=\(64, 64\)\)\)"):
        scorer.score(torch.rand(1, 3, 96, 96))
    with pytest.raises(ValueError, match="images must be a .B, C, H, W. floating tensor"):
        scorer.score(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="images are on meta but the backbone is on cpu: move the images"):
        scorer.score(torch.rand(1, 3, 64, 64, device="meta"))


def test_eps_bounds_the_residual_norm_not_its_square(gen):
    """Algorithm 1 stops once ||e_l||_2 <= eps: with eps just above the residual norm after
    one atom, each reconstruction is the one-atom OMP (scikit-learn's, independently)."""
    from sklearn.linear_model import orthogonal_mp

    bank = _Items(_gratings(gen, False, 12, size=32))
    test = torch.stack([t["image"] for t in _gratings(gen, False, 2, defect=True, size=32)])
    backbone = _PoolBackbone()

    def features():
        feats = {lvl: f.double().flatten(1).numpy() for lvl, f in backbone(test).items()}
        bank_f = {lvl: f.double().flatten(1).numpy()
                  for lvl, f in backbone(torch.stack([t["image"] for t in bank])).items()}
        return feats, bank_f

    def one_atom(feats, bank_f, lvl):
        one = orthogonal_mp(bank_f[lvl].T, feats[lvl].T, n_nonzero_coefs=1)  # (N, B)
        return one, np.linalg.norm(feats[lvl].T - bank_f[lvl].T @ one, axis=0)

    # The residuals must exceed 1 so that eps and eps^2 differ in what they allow. OMP's
    # support does not change when the features and the bank scale together (the pooling
    # backbone is linear), and the residuals scale with them: scale until the least is 2.
    smallest = min(one_atom(*features(), lvl)[1].min() for lvl in (1, 2))
    scale = max(1.0, 2.0 / smallest)
    test = scale * test
    for item in bank:
        item["image"] = scale * item["image"]
    feats, bank_f = features()
    for lvl in (1, 2):
        one, norms = one_atom(feats, bank_f, lvl)
        assert norms.min() > 1.5
        eps = float(norms.max()) * (1 + 1e-9)
        # one level at a time, sampling off: the whole bank is the dictionary
        scorer = SGFRScorer(backbone, levels=(lvl,), ref_level=3, s=6, eps=eps, sampling=False, sigma=0.0).fit(bank)
        two = orthogonal_mp(bank_f[lvl].T, feats[lvl].T, n_nonzero_coefs=2)
        assert np.linalg.norm(feats[lvl].T - bank_f[lvl].T @ two, axis=0).max() < eps  # a second atom would help
        maps = scorer.score(test).anomaly_map
        h = 32 // 2**lvl
        residual = torch.from_numpy((feats[lvl].T - bank_f[lvl].T @ one).T).view(2, 3, h, h).norm(dim=1)
        expected = torch.nn.functional.interpolate(residual[:, None], size=(32, 32), mode="bilinear",
                                                   align_corners=False)[:, 0]
        torch.testing.assert_close(maps, expected.float(), rtol=1e-5, atol=1e-6)


def test_magnetic_tile_preset_is_section_4_2_1(backbone):
    scorer = SGFRScorer.magnetic_tile(backbone)
    assert (scorer.levels, scorer.ref_level, scorer.s_ref, scorer.s) == ((2, 3), 4, 10, 7)
    assert SGFRScorer.magnetic_tile(backbone, s=5).s == 5


@pytest.mark.parametrize("sigma", [1.0, 4.0])
def test_gaussian_blur_matches_scipy(gen, sigma):
    maps = torch.rand(2, 40, 33, generator=gen, dtype=torch.float64)
    ours = gaussian_blur(maps, sigma).numpy()
    ref = np.stack([ndimage.gaussian_filter(m, sigma, mode="mirror", truncate=4.0) for m in maps.numpy()])
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_bad_configuration(backbone, data):
    with pytest.raises(ValueError, match=r"levels \(2, 5\) and ref_level 4 must lie in 1..4"):
        SGFRScorer(backbone, levels=(2, 5), ref_level=4)
    with pytest.raises(ValueError, match=r"returns layers \(1, 2, 3\) but levels \(3,\) and ref_level 4 are needed"):
        SGFRScorer(_PoolBackbone(), levels=(3,))
    with pytest.raises(ValueError, match="s_ref=100 exceeds the 60 training images"):
        SGFRScorer(backbone, s_ref=100).fit(data[0])
    with pytest.raises(RuntimeError, match="call fit"):
        SGFRScorer(backbone).score(torch.rand(1, 3, 64, 64))


def test_the_method_takes_the_papers_sizes_per_dataset_and_eps():
    """Section 4.2: s_ref / s of 10 / 7 on MTD, 40 / 17 on MVTec AD, 80 / 40 on BTAD;
    Algorithm 1 stops a reconstruction at ||e|| <= eps = 1e-6. Given sizes win."""
    from vqfast.methods import SettingError, get
    from vqfast.methods.sgfr import build_sgfr

    settings = get("sgfr").settings
    for dataset, sizes in (("mtd", (10, 7)), ("mvtec", (40, 17)), ("btad", (80, 40))):
        scorer = build_sgfr(settings.parse({"dataset": dataset, "backbone": "resnet18"}))
        assert (scorer.s_ref, scorer.s, scorer.eps) == (*sizes, 1e-6)
    assert settings.parse({"dataset": "mvtec", "s": "5"}).sizes() == (40, 5)
    with pytest.raises(SettingError, match="setting dataset"):
        settings.parse({"dataset": "visa"})
