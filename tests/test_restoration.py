"""Restoration scorers: fast passes restore exactly the reference loops' tokens."""

import inspect
import types

import pytest
import torch

from vqfast.models import VQVAE, VQVAEConfig
from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig
from vqfast.models.pixelsnail import PixelSNAIL, PixelSNAILConfig
from vqfast.scorers import KDEScorer, MaskedRestorationScorer
from vqfast.scorers.restoration import (LightPixelWiseScorer, PixelWiseScorer, SampleWiseScorer, _RestorationScorer,
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


@pytest.mark.parametrize("cls", [SampleWiseScorer, PixelWiseScorer, LightPixelWiseScorer])
def test_mismatched_models_and_images_say_so(models, cls):
    vq, prior = models
    small = GPT2Prior(GPT2PriorConfig(num_codes=8, height=6, width=6, n_layer=1, n_embd=16, n_head=2))
    with pytest.raises(ValueError, match=r"the prior models 8 codes but the VQ model's codebook has 16: train the "
                                         r"prior on this VQ model's token grids \(GPT2PriorConfig\(num_codes=16"):
        cls(vq, small, 1.0)
    scorer = cls(vq, prior, 1.0)
    with pytest.raises(ValueError, match=r"images of 32x32 give 8x8 token grids but the prior models 6x6: score "
                                         r"images of 24x24"):
        scorer.score(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match=r"images are on meta but the VQ model is on cpu: move the images"):
        scorer.score(torch.rand(1, 3, 24, 24, device="meta"))
    with pytest.raises(ValueError, match=r"images must be a \(B, C, H, W\) floating tensor, got \(3, 24, 24\)"):
        scorer.score(torch.rand(3, 24, 24))


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


@pytest.mark.parametrize("cls", [PixelWiseScorer, LightPixelWiseScorer])
def test_the_same_image_gets_the_same_score(models, gen, cls):
    """Seeds come from (scorer seed, image bits): re-scoring, another batch and another
    order give the same restorations; another seed or image gives others."""
    vq, prior = models
    images = torch.rand(4, 3, 24, 24, generator=gen)
    scorer = cls(vq, prior, nll_threshold(prior, vq.encode_indices(images), 50), restorations=3)
    first, again = scorer.score(images), scorer.score(images)
    assert torch.equal(first.pred_score, again.pred_score) and torch.equal(first.anomaly_map, again.anomaly_map)
    seeds = scorer.image_seeds(images)
    perm = torch.tensor([2, 0, 3, 1])
    assert torch.equal(scorer.image_seeds(images[perm]), seeds[perm])
    assert torch.equal(scorer.image_seeds(images[1:3]), seeds[1:3])
    assert len(set(seeds.tolist())) == 4 and bool((seeds >= 0).all()) and bool((seeds < 2**42).all())
    assert not torch.equal(cls(vq, prior, scorer.threshold, seed=1).image_seeds(images), seeds)
    nudged = images.clone()
    nudged[0, 2, 23, 23] = torch.nextafter(nudged[0, 2, 23, 23], torch.tensor(2.0))
    assert int(scorer.image_seeds(nudged)[0]) != int(seeds[0]) and torch.equal(scorer.image_seeds(nudged)[1:], seeds[1:])
    tokens = vq.encode_indices(images)
    assert torch.equal(scorer.restore(tokens[perm], seeds[perm]), scorer.restore(tokens, seeds)[perm])


def _eq12_map(images, decoded, k):
    """Eqs. 11-12 by explicit loops: softmax over j of k / sum |Y - X_j| weights each
    residual, which is min-pooled 3x3, averaged 7x7 inside the image, summed over j."""
    b, s, _, h, w = decoded.shape
    out = torch.zeros(b, h, w)
    for n in range(b):
        r = [(images[n] - decoded[n, j]).abs().mean(0) for j in range(s)]
        weights = torch.tensor([k / float(x.sum()) for x in r]).softmax(0)
        for j in range(s):
            x = weights[j] * r[j]
            mins = torch.stack([torch.nn.functional.pad(x, (1, 1, 1, 1), value=float("inf"))[i:i + h, c:c + w]
                                for i in range(3) for c in range(3)]).amin(0)
            out[n] += _avg7(mins)
    return out


@pytest.mark.parametrize("cls,loop", [(PixelWiseScorer, "pixelwise_restore"), (LightPixelWiseScorer, "light_restore")])
@pytest.mark.parametrize("fast", [True, False])
def test_score_is_the_reference_loop_decoded_and_mapped(models, gen, cls, loop, fast):
    """score() end to end: the published loop's restorations (vqfast.reference.restoration),
    decoded and clamped, through eqs. 11-12, reduced by max; the restorations must change
    the decoded images, or decoding the un-restored tokens would pass too."""
    from vqfast.reference import restoration as reference
    from vqfast.reference.restore_step import stream_seeds

    vq, prior = models
    images = torch.rand(3, 3, 24, 24, generator=gen)
    tokens = vq.encode_indices(images)
    threshold = nll_threshold(prior, tokens, 60)
    scorer = cls(vq, prior, threshold, restorations=3, k=200.0, fast=fast)
    out = scorer.score(images)
    seeds = stream_seeds(scorer.image_seeds(images), 3)
    restored = torch.stack([torch.stack([getattr(reference, loop)(prior, tokens[n], threshold, int(seeds[n, j]))[0]
                                         for j in range(3)]) for n in range(3)])
    assert bool((restored != tokens[:, None]).any())
    with torch.no_grad():
        decoded = vq.decode_indices(restored.flatten(0, 1)).clamp(0, 1).view(3, 3, 3, 24, 24)
        unrestored = vq.decode_indices(tokens).clamp(0, 1)
    assert (decoded - unrestored[:, None]).abs().amax() > 1e-3
    expected = _eq12_map(images, decoded, 200.0)
    torch.testing.assert_close(out.anomaly_map, expected, rtol=1e-5, atol=1e-6)
    # the image score is the mean of the weighted residuals (the density paper's AS_pixel)
    torch.testing.assert_close(out.pred_score, expected.flatten(1).mean(1), rtol=1e-5, atol=1e-6)


class _ElementwisePrior(torch.nn.Module):
    """A float32 prior whose logits are elementwise in the batch (no GEMM), so batched and
    per-grid forwards agree bit for bit and only the decision rule can split the fast
    pass from the reference loop. logits[t] = bias + 0.5 * the count-weighted embedding
    of the tokens before t."""

    def __init__(self, k, gen, coupling=0.3):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.randn(k, generator=gen) * 2)
        self.emb = torch.nn.Parameter(torch.randn(k, k, generator=gen) * coupling)
        self.config = types.SimpleNamespace(num_codes=k, height=5, width=5)

    def logits(self, tokens):
        flat = tokens.reshape(tokens.shape[0], -1)
        e = self.emb[flat]  # (B, T, K)
        before = torch.cat([torch.zeros_like(e[:, :1]), e[:, :-1]], 1).cumsum(1)
        return self.bias + 0.5 * before

    def nll(self, tokens):
        x = self.logits(tokens)
        return (x.logsumexp(-1) - x.gather(-1, tokens.reshape(tokens.shape[0], -1, 1))[..., 0]).view(tokens.shape)


def _split_decision_prior(k, coupling, gen, backend):
    """A prior whose position-0 conditional (no prefix: the bias) has tokens v whose NLL
    the kernel computes below the reference's formula: at a threshold one ulp under the
    reference's NLL the two disagree. Returns (prior, those tokens, their reference NLLs);
    all tokens if the backend never disagrees."""
    from vqfast.ops import restore_step
    from vqfast.reference.restore_step import token_nll

    for _ in range(100):
        prior = _ElementwisePrior(k, gen, coupling).eval()
        with torch.no_grad():
            logits = prior.bias.float().expand(k, k).contiguous()
        cur = torch.arange(k)
        ours = token_nll(logits, cur)
        theirs = restore_step(logits, cur, float("inf"), cur, 0, backend=backend)[1]
        split = (theirs < ours).nonzero().flatten()
        if split.numel():
            return prior, split, ours[split]
    return prior, cur, ours


@pytest.mark.parametrize("cls", [PixelWiseScorer, LightPixelWiseScorer])
@pytest.mark.parametrize("coupling", [0.0, 0.3])
def test_float32_fast_pass_restores_the_reference_tokens_at_the_threshold(gen, cls, coupling):
    """float32, thresholds one ulp under the reference's NLL of a token at a position
    with no prefix, chosen where the kernel's own NLL falls on the other side: the fast
    pass must take the reference's decision (one decision source), so the restored
    tokens are identical. coupling 0: every position has that conditional, so every
    occurrence of the token sits at the threshold whatever was restored before it."""
    k = 64
    backend = "cpu" if _has_cpu() else "reference"
    prior, split, values = _split_decision_prior(k, coupling, gen, backend)
    vq = VQVAE(VQVAEConfig(hidden=8, res_blocks=1, num_codes=k, code_dim=4, downsamples=2)).eval()
    for trial in range(6):
        j = int(torch.randint(0, split.numel(), (1,), generator=gen))
        tokens = torch.randint(0, k, (4, 5, 5), generator=gen)
        tokens.view(4, -1)[:, ::3] = split[j]  # position 0 and every third
        threshold = float(torch.nextafter(values[j], torch.tensor(-float("inf"))))
        seeds = torch.randint(0, 2**40, (4,), generator=gen)
        fast = cls(vq, prior, threshold, restorations=2, op_backend=backend).restore(tokens, seeds)
        slow = cls(vq, prior, threshold, restorations=2, fast=False).restore(tokens, seeds)
        assert torch.equal(fast, slow), f"trial {trial}: threshold {threshold}, token {int(split[j])}"
        assert bool((slow != tokens[:, None]).any())  # the reference did restore


def _has_cpu():
    from vqfast import _ext

    return _ext.has_op("restore_step", "cpu")


@pytest.mark.parametrize("cls", [PixelWiseScorer, LightPixelWiseScorer])
def test_restorations_that_coincide_are_decoded_once(models, gen, cls):
    """An infinite threshold restores nothing: the S restorations of each image are its
    own grid, decoded once per image, and the map is that of S equal decodings."""
    vq, prior = models
    images = torch.rand(3, 3, 24, 24, generator=gen)
    sizes = []
    handle = vq.decoder.register_forward_hook(lambda mod, args, out: sizes.append(args[0].shape[0]))
    out = cls(vq, prior, float("inf"), restorations=4).score(images)
    handle.remove()
    assert sizes == [3]
    with torch.no_grad():
        decoded = vq.decode_indices(vq.encode_indices(images)).clamp(0, 1)
    expected = weighted_residual_map(images, decoded[:, None].expand(3, 4, *decoded.shape[1:]))
    torch.testing.assert_close(out.anomaly_map, expected)


@pytest.mark.parametrize("cls", [PixelWiseScorer, LightPixelWiseScorer])
def test_bfloat16_decoding_keeps_the_tokens_and_the_map_within_tolerance(models, gen, cls):
    """decode_precision="bfloat16": the same restored tokens, a map within 1e-2 of the
    float32 one (the pixels are in [0, 1]) but not equal to it, a scorer fingerprint of its
    own (a resume across precisions refuses), and a clear error for an unknown precision."""
    from vqfast.scorers import scorer_fingerprint

    vq, prior = models
    images = torch.rand(3, 3, 24, 24, generator=gen)
    threshold = nll_threshold(prior, vq.encode_indices(images), 60)
    full = cls(vq, prior, threshold, restorations=3)
    half = cls(vq, prior, threshold, restorations=3, decode_precision="bfloat16")
    seeds = full.image_seeds(images)
    tokens = vq.encode_indices(images)
    assert torch.equal(full.restore(tokens, seeds), half.restore(tokens, seeds))
    a, b = full.score(images), half.score(images)
    assert not torch.equal(a.anomaly_map, b.anomaly_map)
    assert float((a.anomaly_map - b.anomaly_map).abs().amax()) < 1e-2
    assert scorer_fingerprint(full) != scorer_fingerprint(half)
    with pytest.raises(ValueError, match="decode precision must be one of"):
        cls(vq, prior, threshold, decode_precision="fp16")


def _float_prior(prior):
    """A float32 copy: autocast (prior_precision) leaves float64 models alone."""
    import copy

    return copy.deepcopy(prior).float().eval()


@pytest.mark.parametrize("cls", [SampleWiseScorer, PixelWiseScorer, LightPixelWiseScorer])
def test_bfloat16_prior_is_close_to_float32_not_equal(models, gen, cls):
    """prior_precision="bfloat16" runs the prior's forwards (the fast incremental pass
    included) in bfloat16: NLLs and thresholds move within bfloat16 rounding, most
    restored tokens stay, the fingerprint differs, and an unknown precision is named.

    The thresholds come from held-out grids, as the paper's validation NLLs do: taken
    from the scored grids themselves, one token's NLL sits exactly on the threshold and
    either precision's rounding flips it. Pixel-wise chains are sequential, so one
    flipped decision changes every later draw of its chain: over 100 seeds the PixelSNAIL
    chains' tokens agreed in 75-100 % of positions (one CI run saw 70 %), while the
    share of restored tokens moved by at most 0.05. Light-Pixel-wise has no chains."""
    from vqfast.scorers import scorer_fingerprint

    vq, prior = models
    prior = _float_prior(prior)
    images = torch.rand(4, 3, 24, 24, generator=gen)
    tokens = vq.encode_indices(images)
    held_out = vq.encode_indices(torch.rand(4, 3, 24, 24, generator=gen))
    t32, t16 = nll_threshold(prior, held_out, 60), nll_threshold(prior, held_out, 60, precision="bfloat16")
    assert t32 != t16 and abs(t32 - t16) < 0.05
    kwargs = {} if cls is SampleWiseScorer else {"restorations": 3}
    full = cls(vq, prior, t32, **kwargs)
    half = cls(vq, prior, t16, prior_precision="bfloat16", **kwargs)
    n32, n16 = full.prior_nll(tokens), half.prior_nll(tokens)
    assert n16.dtype == torch.float32 and not torch.equal(n32, n16)
    assert float((n32 - n16).abs().amax()) < 0.05
    if cls is not SampleWiseScorer:
        seeds = full.image_seeds(images)
        a, b = full.restore(tokens, seeds), half.restore(tokens, seeds)
        assert torch.equal(half.restore(tokens, seeds), b)  # reproducible in bfloat16 too
        slow = cls(vq, prior, t16, prior_precision="bfloat16", fast=False, **kwargs).restore(tokens, seeds)
        agree = 0.5 if cls is PixelWiseScorer else 0.8

        def restored(r):
            return float((r != tokens[:, None]).float().mean())

        for other in (a, slow):  # float32's fast pass; the reference loop in bfloat16: close, not bitwise
            assert float((other == b).float().mean()) > agree
            assert abs(restored(other) - restored(b)) < 0.15
    assert torch.isfinite(half.score(images).pred_score).all()
    assert scorer_fingerprint(full) != scorer_fingerprint(half)
    with pytest.raises(ValueError, match="prior_precision must be one of float32, bfloat16, got 'half'"):
        cls(vq, prior, t32, prior_precision="half", **kwargs)
    with pytest.raises(ValueError, match="leaves a torch.float64 prior as it is"):
        cls(vq, models[1], t32, prior_precision="bfloat16", **kwargs)


@pytest.mark.parametrize("which", ["gpt2", "performer", "pixelsnail"])
def test_incremental_steps_run_under_bfloat16_autocast(gen, which):
    """Every prior's incremental step in bfloat16 autocast gives the full forward's
    bfloat16 logits within bfloat16 rounding (its float32 state and caches take the
    bfloat16 activations)."""
    from vqfast.models.performer import PerformerPrior, PerformerPriorConfig

    torch.manual_seed(0)
    prior = {"gpt2": _priors()["gpt2"], "pixelsnail": _priors()["pixelsnail"],
             "performer": PerformerPrior(PerformerPriorConfig(num_codes=16, height=6, width=6, n_layer=2, n_embd=32,
                                                              n_head=4))}[which].eval()
    tokens = torch.randint(0, 16, (3, 6, 6), generator=gen)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = prior.logits(tokens).float()
        step = prior.fast().logits(tokens).float()
        restored, nll = prior.fast().restore(tokens, 2.0, torch.arange(3))
    assert nll.dtype == torch.float32 and bool(torch.isfinite(nll).all())  # decided on float32 NLLs
    assert restored.shape == tokens.shape
    with torch.no_grad():
        exact = prior.logits(tokens)
    assert not torch.equal(full, exact)
    scale = float(exact.abs().amax())
    assert float((step - full).abs().amax()) < 0.05 * scale
    assert float((step - exact).abs().amax()) < 0.05 * scale


def test_the_restoration_scorers_image_score_is_the_papers_mean():
    """The density paper's AS_pixel is "the mean of all weighted residuals": the default of
    Pixel-wise, Light-Pixel-wise, the KDE maps and masked restoration (max and top-k are
    options, e.g. for a small defect on a large image)."""
    for cls in (PixelWiseScorer, LightPixelWiseScorer, KDEScorer, MaskedRestorationScorer):
        init = cls.__init__ if "reduction" in inspect.signature(cls.__init__).parameters else _RestorationScorer.__init__
        assert inspect.signature(init).parameters["reduction"].default == "mean", cls.__name__
