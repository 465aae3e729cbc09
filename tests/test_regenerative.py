"""The Regenerative scorer and the scorer interface."""

import numpy as np
import pytest
import torch
from PIL import Image

from vqfast.data import ImageFolder, procedural_splits
from vqfast.models import VQVAE, VQVAEConfig
from vqfast.scorers import RegenerativeScorer, ScoreBatch, evaluate_scorer, reduce_map
from vqfast.training import TrainConfig, Trainer


class _Zero(torch.nn.Module):
    """reconstruct(x) = 0, so the residual map is mean_c |x|."""

    def reconstruct(self, x):
        return torch.zeros_like(x)


def test_score_batch_and_reductions(gen):
    x = torch.rand(3, 2, 10, 10, generator=gen)
    amap = x.mean(1)
    for reduction, expected in [("max", amap.flatten(1).amax(1)), ("mean", amap.flatten(1).mean(1)),
                                ("topk_mean", amap.flatten(1).topk(5, dim=1).values.mean(1))]:
        out = RegenerativeScorer(_Zero(), reduction=reduction, topk=0.05).fit().score(x)
        assert isinstance(out, ScoreBatch) and out.anomaly_map.shape == (3, 10, 10)
        torch.testing.assert_close(out.anomaly_map, amap)
        torch.testing.assert_close(out.pred_score, expected)
    assert torch.equal(reduce_map(amap, "topk_mean", 0.0), amap.flatten(1).amax(1))  # at least one pixel
    with pytest.raises(ValueError, match="reduction must be"):
        RegenerativeScorer(_Zero(), reduction="median")


def test_tiny_vqvae_detects_procedural_defects():
    """The issue's acceptance check, kept well under a minute on 2 CPU cores."""
    torch.manual_seed(0)
    train, test = procedural_splits(size=64, n_train=160, n_test_normal=40, n_test_anomalous=40)
    model = VQVAE(VQVAEConfig(hidden=32, res_blocks=2, num_codes=64, code_dim=16, downsamples=2))
    Trainer(model, train, None, TrainConfig(epochs=20, batch_size=32, lr=2e-3), progress=False).fit()
    result = evaluate_scorer(RegenerativeScorer(model), test)
    assert result["image_auroc"] > 0.9
    assert result["pixel_auroc"] > 0.8 and result["aupro"] > 0.5


def test_evaluate_without_masks_gives_image_metrics_only(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(4):
        arr = np.full((8, 8, 3), 40 if i < 2 else 200, dtype=np.uint8) + rng.integers(0, 5, (8, 8, 3), dtype=np.uint8)
        (tmp_path / ("good" if i < 2 else "bad")).mkdir(exist_ok=True)
        Image.fromarray(arr).save(tmp_path / ("good" if i < 2 else "bad") / f"{i}.png")
    good, bad = ImageFolder(tmp_path / "good"), ImageFolder(tmp_path / "bad", label=1)
    result = evaluate_scorer(RegenerativeScorer(_Zero()), torch.utils.data.ConcatDataset([good, bad]))
    assert result["image_auroc"] == 1.0 and "pixel_auroc" not in result


def test_images_on_another_device_name_the_images_and_the_model():
    scorer = RegenerativeScorer(VQVAE(VQVAEConfig(hidden=8, res_blocks=1, num_codes=8, code_dim=4, downsamples=2)))
    with pytest.raises(ValueError, match="images are on meta but the model is on cpu: move the images"):
        scorer.score(torch.rand(1, 3, 16, 16, device="meta"))


def test_default_image_score_is_the_papers_mean_l1():
    """Section 4: the Regenerative score is "the L1 loss between an image x and its
    reconstruction", the mean |x - x_hat|; max and top-k stay options."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEConfig(hidden=8, res_blocks=1, num_codes=8, code_dim=4, downsamples=2)).eval()
    x = torch.rand(3, 3, 16, 16)
    out = RegenerativeScorer(model).score(x)
    torch.testing.assert_close(out.pred_score, (x - model.reconstruct(x)).abs().mean((1, 2, 3)))
    peak = RegenerativeScorer(model, reduction="max").score(x)
    torch.testing.assert_close(peak.pred_score, out.anomaly_map.flatten(1).amax(1))


def test_bfloat16_decoding_needs_a_vq_model_and_stays_close(gen):
    model = VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=16, code_dim=8, downsamples=2)).eval()
    x = torch.rand(2, 3, 16, 16, generator=gen)
    full, half = RegenerativeScorer(model).score(x), RegenerativeScorer(model, decode_precision="bfloat16").score(x)
    assert not torch.equal(full.anomaly_map, half.anomaly_map)
    assert float((full.anomaly_map - half.anomaly_map).abs().amax()) < 1e-2
    names = [t.name for t in RegenerativeScorer(model, decode_precision="bfloat16").profile(x, repeats=1)]
    assert names == ["encode", "quantise", "decode (bfloat16)", "score (total)"]
    with pytest.raises(ValueError, match="needs a VQ autoencoder; _Zero reconstructs in its own dtype"):
        RegenerativeScorer(_Zero(), decode_precision="bfloat16")
    with pytest.raises(ValueError, match="decode precision"):
        RegenerativeScorer(model, decode_precision="int8")
