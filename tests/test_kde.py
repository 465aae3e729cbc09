"""KDE abnormality maps: the vectorised density against scipy's gaussian_kde per pixel,
the resampling mask, and the scorer end to end."""

import math

import numpy as np
import pytest
import torch
from scipy import stats

from vqfast.models import VQVAE, PerformerPrior, PerformerPriorConfig, VQVAEConfig
from vqfast.scorers import KDEScorer, kde_abnormality, nll_threshold
from vqfast.scorers.kde import resampling_mask


def _reference(images, samples, floor):
    """Per pixel and channel: scipy's gaussian_kde with Silverman's 1.06 sigma n^(-1/5)
    (floored), -log density summed over channels."""
    b, n, c, h, w = samples.shape
    out = np.zeros((b, h, w))
    for i in range(b):
        for ch in range(c):
            for y in range(h):
                for x in range(w):
                    data = samples[i, :, ch, y, x].double().numpy()
                    sigma = data.std(ddof=1)
                    bw = max(1.06 * sigma * n ** -0.2, floor)
                    value = float(images[i, ch, y, x])
                    if sigma > 0:
                        log_density = stats.gaussian_kde(data, bw_method=bw / sigma).logpdf([value])[0]
                    else:  # scipy refuses a zero-variance sample set: the same kernel by hand
                        log_density = -0.5 * ((value - data[0]) / bw) ** 2 - math.log(bw * math.sqrt(2 * math.pi))
                    out[i, y, x] -= log_density
    return torch.from_numpy(out).float()


@pytest.mark.parametrize("n,channels", [(2, 1), (7, 3), (20, 1)])
def test_kde_equals_scipy_per_pixel(gen, n, channels):
    images = torch.rand(2, channels, 5, 4, generator=gen)
    samples = images.unsqueeze(1) + 0.1 * torch.randn(2, n, channels, 5, 4, generator=gen)
    samples[0, :, :, 0, 0] = 0.3  # all samples equal: the floor bandwidth
    images[1, :, 2, 2] = 5.0  # far from every sample: finite, large
    ours = kde_abnormality(images, samples, bandwidth_floor=0.01)
    torch.testing.assert_close(ours, _reference(images, samples, 0.01), rtol=1e-4, atol=1e-4)
    assert torch.isfinite(ours).all() and ours[1, 2, 2] > ours[1].median() + 100


def test_kde_bad_input():
    with pytest.raises(ValueError, match="at least 2 samples"):
        kde_abnormality(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 1, 4, 4))
    with pytest.raises(ValueError, match="samples must be .B, N, C, H, W."):
        kde_abnormality(torch.rand(1, 1, 4, 4), torch.rand(1, 3, 1, 4, 5))
    with pytest.raises(ValueError, match="bandwidth_floor must be > 0"):
        kde_abnormality(torch.rand(1, 1, 4, 4), torch.rand(1, 3, 1, 4, 4), bandwidth_floor=0.0)


def test_resampling_mask_upsamples_and_smooths():
    tokens = torch.zeros(1, 4, 4, dtype=torch.bool)
    tokens[0, 1, 2] = True
    sharp = resampling_mask(tokens, (16, 16), 0.0)
    assert sharp.sum() == 16 and bool(sharp[0, 4:8, 8:12].eq(1).all())
    soft = resampling_mask(tokens, (16, 16), 2.0)
    assert soft.sum() == pytest.approx(16, rel=0.05) and (soft > 0).sum() > 16 and soft.max() < 1


def _models():
    torch.manual_seed(0)
    vq = VQVAE(VQVAEConfig(hidden=8, res_blocks=1, num_codes=16, code_dim=4, downsamples=2)).eval()
    prior = PerformerPrior(PerformerPriorConfig(num_codes=16, height=6, width=6, n_layer=1, n_embd=16, n_head=2,
                                                nb_features=8, dropout=0.0)).eval()
    return vq, prior


def test_scorer_map_is_the_kde_inside_the_mask(gen):
    vq, prior = _models()
    images = torch.rand(2, 3, 24, 24, generator=gen)
    probability = math.exp(-nll_threshold(prior, vq.encode_indices(images), 85))  # 15 % of tokens resampled
    scorer = KDEScorer(vq, prior, probability=probability, restorations=3, dropout_decodes=2, mask_sigma=1.0)
    out = scorer.score(images)
    again = scorer.score(images)
    assert torch.equal(out.anomaly_map, again.anomaly_map)  # dropout masks from the image's seed
    seeds = scorer.image_seeds(images)
    tokens = vq.encode_indices(images)
    restored = scorer.restore(tokens, seeds)
    samples = scorer._decode_samples(restored, seeds, (3, 24, 24))
    assert samples.shape == (2, 6, 3, 24, 24) and not torch.equal(samples[:, 0], samples[:, 1])  # dropout on
    abnormality = kde_abnormality(images, samples, 0.01)
    with torch.no_grad():
        resampled = (restored != tokens[:, None]).any(1) | (prior.nll(tokens) > -math.log(probability))
    inside = resampling_mask(resampled, (24, 24), 1.0) > 0.05
    assert bool(inside.any()) and not bool(inside.all())
    torch.testing.assert_close(out.anomaly_map[inside], abnormality[inside])
    floor_value = 3 * math.log(0.01 * math.sqrt(2 * math.pi))
    assert bool((out.anomaly_map[~inside] == floor_value).all())
    torch.testing.assert_close(out.pred_score, out.anomaly_map.flatten(1).mean(1))
    with pytest.raises(ValueError, match=r"probability must be in \(0, 1\)"):
        KDEScorer(vq, prior, probability=1.5)
    with pytest.raises(ValueError, match="at least 2 samples per pixel"):
        KDEScorer(vq, prior, probability=0.1, restorations=1)


def test_profile_stages():
    vq, prior = _models()
    timings = KDEScorer(vq, prior, probability=0.05, restorations=2).profile(torch.rand(1, 3, 24, 24), repeats=1)
    assert [t.name for t in timings] == ["encode (VQ)", "restore (prior + sampling)", "decode (VQ, every sample)",
                                         "KDE map", "score (total)"]
