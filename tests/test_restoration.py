"""Restoration scorers: fast passes restore exactly the reference loops' tokens."""

import pytest
import torch

from vqfast.models import VQVAE, VQVAEConfig
from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig
from vqfast.models.pixelsnail import PixelSNAIL, PixelSNAILConfig
from vqfast.scorers.restoration import (LightPixelWiseScorer, PixelWiseScorer, SampleWiseScorer,
                                        nll_threshold, weighted_residual_map)


def _priors():
    return {"gpt2": GPT2Prior(GPT2PriorConfig(num_codes=16, height=6, width=6, n_layer=2, n_embd=32, n_head=4)),
            "pixelsnail": PixelSNAIL(PixelSNAILConfig(num_codes=16, height=6, width=6, channels=16, blocks=2,
                                                      res_blocks=2, attn_heads=2))}


@pytest.fixture(scope="module", params=["gpt2", "pixelsnail"])
def models(request):
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=16, code_dim=8, downsamples=2)).eval()
    return vq, _priors()[request.param].double().eval()


@pytest.mark.parametrize("cls", [PixelWiseScorer, LightPixelWiseScorer])
@pytest.mark.parametrize("percentile", [20, 60, 95])
def test_fast_equals_reference_tokens(models, gen, cls, percentile):
    """float64 priors on the CPU: identical token grids, many seeds, low and high
    thresholds (GPT-2: KV-cached pass; PixelSNAIL: batched full forwards)."""
    vq, prior = models
    tokens = torch.randint(0, 16, (3, 6, 6), generator=gen)
    threshold = nll_threshold(prior, tokens, percentile)
    image_seeds = torch.randint(0, 2**40, (3,), generator=gen)
    fast = cls(vq, prior, threshold, restorations=4).restore(tokens, image_seeds)
    slow = cls(vq, prior, threshold, restorations=4, fast=False).restore(tokens, image_seeds)
    assert fast.shape == (3, 4, 6, 6)
    assert torch.equal(fast, slow)
    changed = (fast != tokens[:, None]).float().mean()
    assert 0 < changed < 1 or percentile == 95  # something restored, not everything
    again = cls(vq, prior, threshold, restorations=4).restore(tokens, image_seeds)
    assert torch.equal(again, fast)  # reproducible from the seeds alone


def test_pixelwise_recomputes_light_does_not(models, gen):
    """Light keeps the original conditionals: with an infinite threshold nothing moves,
    and with a negative one every token is a sample from its original conditional."""
    vq, prior = models
    tokens = torch.randint(0, 16, (2, 6, 6), generator=gen)
    seeds = torch.tensor([1, 2])
    assert torch.equal(LightPixelWiseScorer(vq, prior, float("inf")).restore(tokens, seeds),
                       tokens[:, None].expand(2, 5, 6, 6))
    assert torch.equal(PixelWiseScorer(vq, prior, float("inf")).restore(tokens, seeds),
                       tokens[:, None].expand(2, 5, 6, 6))
    light = LightPixelWiseScorer(vq, prior, -1.0, restorations=2).restore(tokens, seeds)
    pixel = PixelWiseScorer(vq, prior, -1.0, restorations=2).restore(tokens, seeds)
    # position 0 has the same conditional in both (only the start token before it)
    assert torch.equal(light[..., 0, 0], pixel[..., 0, 0])
    assert not torch.equal(light, pixel)


def test_sample_wise_score_is_sum_of_nll_over_threshold(models, gen):
    vq, prior = models
    images = torch.rand(2, 3, 24, 24, generator=gen)
    nll = prior.nll(vq.encode_indices(images)).float()
    threshold = float(nll.detach().median())
    out = SampleWiseScorer(vq, prior, threshold).score(images)
    torch.testing.assert_close(out.pred_score, (nll * (nll > threshold)).flatten(1).sum(1))
    assert out.anomaly_map.shape == (2, 24, 24)


def test_weighted_residual_map_follows_eqs_11_12(gen):
    images = torch.rand(2, 3, 16, 16, generator=gen)
    restored = torch.rand(2, 4, 3, 16, 16, generator=gen)
    k = 50.0
    out = weighted_residual_map(images, restored, k)
    expected = torch.zeros(2, 16, 16)
    for b in range(2):
        r = [(images[b] - restored[b, j]).abs().mean(0) for j in range(4)]
        w = torch.tensor([k / float(x.sum()) for x in r]).softmax(0)
        for j in range(4):
            x = w[j] * r[j]
            mins = torch.stack([torch.nn.functional.pad(x, (1, 1, 1, 1), value=float("inf"))[i:i + 16, c:c + 16]
                                for i in range(3) for c in range(3)]).amin(0)
            expected[b] += _avg7(mins)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


def _avg7(x):
    """7x7 mean over the pixels inside the image, by explicit loops."""
    h, w = x.shape
    out = torch.empty_like(x)
    for i in range(h):
        for c in range(w):
            out[i, c] = x[max(0, i - 3):i + 4, max(0, c - 3):c + 4].mean()
    return out


def test_scores_and_bad_arguments(models, gen):
    vq, prior = models
    images = torch.rand(3, 3, 24, 24, generator=gen)
    for cls in (PixelWiseScorer, LightPixelWiseScorer):
        out = cls(vq, prior, 2.0, restorations=2).score(images)
        assert out.pred_score.shape == (3,) and out.anomaly_map.shape == (3, 24, 24)
        assert torch.isfinite(out.anomaly_map).all()
        with pytest.raises(ValueError, match="restorations must be >= 1"):
            cls(vq, prior, 2.0, restorations=0)
        with pytest.raises(ValueError, match="temperature must be > 0"):
            cls(vq, prior, 2.0, temperature=0.0)
    with pytest.raises(ValueError, match="percentile must be in"):
        nll_threshold(prior, torch.zeros(1, 6, 6, dtype=torch.int64), 101)
