"""Performer prior: FAVOR+ against softmax attention, chunked prefix sums against the
recurrent form, exact causality, feature redraws, the fast Pixel-wise pass."""

import pytest
import torch

from vqfast.checkpoint import load_model, save_model
from vqfast.models import VQVAE, PerformerPrior, PerformerPriorConfig, VQVAEConfig
from vqfast.models.performer import causal_linear_attention, favor_features, orthogonal_features, paper_mvtec_config
from vqfast.scorers import LightPixelWiseScorer, PixelWiseScorer, nll_threshold
from vqfast.training import TrainConfig, Trainer


def _prior(chunk=7, **kw):
    cfg = dict(num_codes=16, height=5, width=6, n_layer=2, n_embd=32, n_head=4, nb_features=16, chunk=chunk,
               dropout=0.0)
    cfg.update(kw)
    return PerformerPrior(PerformerPriorConfig(**cfg))


def test_favor_approaches_softmax_attention_as_features_grow(gen):
    """Causal softmax attention against FAVOR+ with m = 16, 128, 1024 features: the mean
    relative error over seeds falls at every step."""
    errors = []
    for m in (16, 128, 1024):
        err = 0.0
        for _ in range(6):
            q, k, v = (torch.randn(2, 40, 8, generator=gen, dtype=torch.float64) * 0.4 for _ in range(3))
            w = orthogonal_features(m, 8, gen)
            approx = causal_linear_attention(favor_features(q, w, True), favor_features(k, w, False), v, chunk=16)
            scores = (q @ k.transpose(-1, -2)) / 8**0.5
            mask = torch.ones(40, 40, dtype=torch.bool).tril()
            exact = scores.masked_fill(~mask, float("-inf")).softmax(-1) @ v
            err += float((approx - exact).norm() / exact.norm()) / 6
        errors.append(err)
    assert errors[0] > errors[1] > errors[2] and errors[2] < 0.6 * errors[0], errors


def test_orthogonal_features_are_orthogonal_within_blocks(gen):
    w = orthogonal_features(20, 8, gen)
    for block in (w[:8], w[8:16]):
        unit = block / block.norm(dim=1, keepdim=True)
        torch.testing.assert_close(unit @ unit.T, torch.eye(8, dtype=torch.float64), atol=1e-12, rtol=0)
    assert w.shape == (20, 8)


def test_chunked_prefix_sums_equal_the_recurrent_form_and_each_other(gen):
    torch.manual_seed(0)
    prior = _prior(chunk=7).double().eval()
    tokens = torch.randint(0, 16, (3, 5, 6), generator=gen)
    full = prior.logits(tokens)
    fast = prior.fast()
    torch.testing.assert_close(fast.logits(tokens), full, rtol=1e-12, atol=1e-12)  # recurrent step
    state = fast.state
    torch.testing.assert_close(fast.logits(tokens), full, rtol=1e-12, atol=1e-12)  # a second pass starts from zero
    assert fast.state is state  # ... on the same tensors (a captured CUDA graph replays on their addresses)
    saved = [block.features.clone() for block in prior.blocks]
    prior._draw_features(5)  # redrawn features reach the next pass
    torch.testing.assert_close(fast.logits(tokens), prior.logits(tokens), rtol=1e-12, atol=1e-12)
    for block, features in zip(prior.blocks, saved):
        block.features.copy_(features)
    for chunk in (1, 30, 64):
        for block in prior.blocks:
            block.chunk = chunk
        torch.testing.assert_close(prior.logits(tokens), full, rtol=1e-12, atol=1e-12)


def test_logits_at_p_do_not_depend_on_tokens_from_p_on(gen):
    """Bit for bit: no stabiliser or chunk lets a later token into an earlier position."""
    torch.manual_seed(0)
    prior = _prior(chunk=4).eval()
    tokens = torch.randint(0, 16, (4, 5, 6), generator=gen)
    base = prior.logits(tokens)
    for p in (0, 3, 9, 29):
        other = tokens.clone().view(4, -1)
        other[:, p:] = torch.randint(0, 16, (4, 30 - p), generator=gen)
        assert torch.equal(prior.logits(other.view(4, 5, 6))[:, : p + 1], base[:, : p + 1])


def test_features_redraw_every_n_training_steps_and_stay_fixed_in_eval(tmp_path):
    torch.manual_seed(0)
    prior = _prior(redraw_every=3)
    first = prior.blocks[0].features.clone()
    grids = torch.randint(0, 16, (8, 5, 6))
    data = [{"tokens": g} for g in grids]
    Trainer(prior, data, config=TrainConfig(epochs=2, batch_size=2, lr=1e-3), progress=False, input_key="tokens").fit()
    assert int(prior.steps) == 8 and int(prior.draw) == 2  # redrawn before steps 4 and 7
    assert not torch.equal(prior.blocks[0].features, first)
    again = _prior(redraw_every=3)
    again._draw_features(2)
    assert torch.equal(again.blocks[0].features, prior.blocks[0].features)  # a pure function of (seed, layer, draw)
    prior.eval()
    before = prior.blocks[1].features.clone()
    prior.training_loss(grids)
    assert torch.equal(prior.blocks[1].features, before)
    save_model(prior, tmp_path / "p.safetensors")
    loaded = load_model(tmp_path / "p.safetensors", expected="PerformerPrior").eval()
    assert torch.equal(loaded.logits(grids), prior.logits(grids))


@pytest.mark.parametrize("cls", [PixelWiseScorer, LightPixelWiseScorer])
@pytest.mark.parametrize("percentile", [20, 70, 95])
def test_fast_pass_restores_the_reference_loops_tokens(gen, cls, percentile):
    """float64: the recurrent one-pass restoration equals the reference loop (full forward
    after every restored token), many seeds and thresholds."""
    torch.manual_seed(0)
    prior = _prior().double().eval()
    vq = VQVAE(VQVAEConfig(hidden=8, res_blocks=1, num_codes=16, code_dim=4, downsamples=2)).eval()
    tokens = torch.randint(0, 16, (3, 5, 6), generator=gen)
    threshold = nll_threshold(prior, tokens, percentile)
    seeds = torch.randint(0, 2**40, (3,), generator=gen)
    fast = cls(vq, prior, threshold, restorations=4).restore(tokens, seeds)
    slow = cls(vq, prior, threshold, restorations=4, fast=False).restore(tokens, seeds)
    assert torch.equal(fast, slow)
    assert bool((fast != tokens[:, None]).any()) or percentile == 95


def test_paper_config_and_bad_input():
    cfg = paper_mvtec_config(256, 16, 16)
    assert (cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.dropout) == (16, 8, 32, 0.1)
    prior = _prior()
    with pytest.raises(ValueError, match=r"tokens must hold 5x6 = 30 positions"):
        prior.logits(torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"tokens hold codes outside \[0, K=16\)"):
        prior.logits(torch.full((1, 5, 6), 16))
    with pytest.raises(ValueError, match="n_embd=30 must be divisible by n_head=4"):
        _prior(n_embd=30)
    with pytest.raises(ValueError, match="the prior models 16 codes but the VQ model's codebook has 8"):
        PixelWiseScorer(VQVAE(VQVAEConfig(hidden=8, res_blocks=1, num_codes=8, code_dim=4)), prior, 1.0)
