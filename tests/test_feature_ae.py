"""Hierarchical feature-reconstruction autoencoder: architecture, residuals, training, maps."""

import warnings

import pytest
import torch
import torch.nn.functional as F

from vqfast import checkpoint
from vqfast.data import procedural_splits
from vqfast.models import Backbone, FeatureAE, FeatureAEConfig
from vqfast.scorers import FeatureAEScorer, evaluate_scorer, gaussian_blur
from vqfast.training import TrainConfig, Trainer

CONFIG = FeatureAEConfig(backbone="resnet18")


def _model(config=CONFIG):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random backbone weights: none can be fetched here
        return FeatureAE(config)


def test_decoder_reconstructs_every_level_from_the_deepest(gen):
    model = _model()
    x = torch.rand(2, 3, 64, 96, generator=gen)
    enc = model.encode(x)
    dec = model.decode(enc)
    assert {k: v.shape for k, v in dec.items()} == {k: v.shape for k, v in enc.items()}
    assert enc[1].shape == (2, 64, 16, 24) and enc[3].shape == (2, 256, 4, 6)
    changed = dict(enc)
    changed[1] = torch.randn_like(enc[1])  # the decoder never reads levels 1-2 of the encoder
    changed[2] = torch.randn_like(enc[2])
    for k in (1, 2, 3):
        torch.testing.assert_close(model.decode(changed)[k], dec[k])
    blocks = model.blocks["2"]
    assert [b[0].kernel_size for b in blocks] == [(1, 1), (3, 3), (1, 1)]
    assert all(isinstance(b[1], torch.nn.BatchNorm2d) and b[2].negative_slope == 0.1 for b in blocks)
    assert blocks[0][0].in_channels == 256 and model.heads["2"].kernel_size == (1, 1)


def test_residual_is_half_squared_distance_of_unit_features(gen):
    f = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    assert FeatureAE.residual(f, 3.0 * f).abs().max() < 1e-6  # scale-free
    torch.testing.assert_close(FeatureAE.residual(f, -f), torch.full((2, 3, 4), 2.0))
    expected = 0.5 * ((f / f.norm(dim=1, keepdim=True) - g / g.norm(dim=1, keepdim=True)) ** 2).sum(1)
    torch.testing.assert_close(FeatureAE.residual(f, g), expected.float())


def test_frozen_encoder_stays_out_of_the_checkpoint(tmp_path, gen):
    model = _model()
    assert not any(k.startswith(("backbone", "conv1", "layer")) for k in model.state_dict())
    assert all(not p.requires_grad for p in model.backbone.parameters())
    checkpoint.save_model(model, tmp_path / "m.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = checkpoint.load_model(tmp_path / "m.safetensors", expected="FeatureAE")
    x = torch.rand(1, 3, 64, 64, generator=gen)
    model.eval(), again.eval()
    # the random encoder is seeded by the config, so a reload sees the same features
    for k, v in model.residual_maps(x).items():
        torch.testing.assert_close(again.residual_maps(x)[k], v)
    with pytest.raises(ValueError, match=r"needs \(1, 2, 3\)"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            FeatureAE(CONFIG, backbone=Backbone("resnet18", layers=(2, 3)))


def test_scorer_map_is_the_smoothed_sum_of_resized_levels(gen):
    model = _model().eval()
    x = torch.rand(2, 3, 64, 64, generator=gen)
    phis = model.residual_maps(x)
    for area in (False, True):
        total = sum(F.interpolate((p / (p.shape[1] * p.shape[2]) if area else p)[:, None], size=(64, 64),
                                  mode="bilinear", align_corners=False)[:, 0] for p in phis.values())
        out = FeatureAEScorer(model, area_normalise=area).score(x)
        torch.testing.assert_close(out.anomaly_map, gaussian_blur(total, 4.0))
        torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).amax(1))  # eq. 11


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    train, test = procedural_splits(size=64, n_train=48, n_test_normal=16, n_test_anomalous=16)
    model = _model()
    config = TrainConfig(epochs=16, batch_size=16, lr=0.4, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                         early_stopping=False)
    history = Trainer(model, train, config=config, device="cpu", progress=False).fit()
    return model, history, test


def test_loss_decreases_on_procedural_data(trained):
    _, history, _ = trained
    losses = [r["train"]["loss"] for r in history]
    assert losses[-1] < 0.25 * losses[0]
    assert all(set(r["train"]) >= {"level1", "level2", "level3"} for r in history)


def test_map_peaks_on_the_synthetic_defect(trained):
    model, _, test = trained
    anomalous = [test[i] for i in range(16, 32)]
    x = torch.stack([it["image"] for it in anomalous])
    masks = torch.stack([it["mask"] for it in anomalous]).bool()
    maps = FeatureAEScorer(model).score(x).anomaly_map
    ratio = torch.stack([maps[i][masks[i]].mean() / maps[i][~masks[i]].mean() for i in range(16)])
    assert (ratio > 1).float().mean() >= 0.9, ratio  # measured: every image, ratios 1.2-1.9
    result = evaluate_scorer(FeatureAEScorer(model), test)
    assert result["pixel_auroc"] > 0.85  # measured 0.95 after 20 epochs on 60 images
