"""PixelSNAIL prior: raster causality, architecture, training through the engine."""

import pytest
import torch

from vqfast import checkpoint
from vqfast.data import TokenGrids
from vqfast.models.pixelsnail import MaskedConv2d, PixelSNAIL, PixelSNAILConfig
from vqfast.training import TrainConfig, Trainer

SMALL = PixelSNAILConfig(num_codes=11, height=5, width=6, channels=16, blocks=2, res_blocks=2, attn_heads=2)


def test_logits_depend_only_on_earlier_tokens(gen):
    torch.manual_seed(0)
    prior = PixelSNAIL(SMALL).double().eval()
    tokens = torch.randint(0, 11, (2, 5, 6), generator=gen)
    base = prior.logits(tokens)
    assert base.shape == (2, 30, 11)
    for p in range(30):
        changed = tokens.clone().view(2, 30)
        changed[:, p] = (changed[:, p] + 1) % 11
        diff = (prior.logits(changed.view(2, 5, 6)) - base).abs().amax((0, 2))
        assert diff[: p + 1].max() == 0  # position p and everything before: untouched
        if p < 29:
            assert diff[p + 1 :].max() > 0  # and the token is seen later on


def test_architecture_as_described():
    prior = PixelSNAIL()
    assert len(prior.blocks) == 4 and all(len(b.res) == 4 for b in prior.blocks)
    assert prior.blocks[0].res[0].dropout.p == 0.1
    conv = MaskedConv2d(1, 1, 3, "A")
    assert conv.mask[0, 0].tolist() == [[1, 1, 1], [1, 0, 0], [0, 0, 0]]
    assert MaskedConv2d(1, 1, 3, "B").mask[0, 0].tolist() == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    with pytest.raises(ValueError, match="divisible by attn_heads"):
        PixelSNAIL(PixelSNAILConfig(channels=30, attn_heads=4))
    with pytest.raises(ValueError, match=r"tokens must be \(M, 5, 6\)"):
        PixelSNAIL(SMALL).logits(torch.zeros(1, 4, 6, dtype=torch.int64))


def test_trains_and_reloads(tmp_path, gen):
    grids = torch.randint(0, 11, (1, 5, 6), generator=gen).repeat(16, 1, 1)
    prior = PixelSNAIL(PixelSNAILConfig(**{**SMALL.__dict__, "dropout": 0.0}))
    history = Trainer(prior, TokenGrids(grids), config=TrainConfig(epochs=6, batch_size=8, lr=3e-3,
                                                                    early_stopping=False),
                      out_dir=tmp_path, device="cpu", progress=False, input_key="tokens").fit()
    assert history[-1]["train"]["loss"] < 0.5 * history[0]["train"]["loss"]
    again = checkpoint.load_model(tmp_path / "model.safetensors", expected="PixelSNAIL").eval()
    torch.testing.assert_close(again.logits(grids[:1]), prior.eval().logits(grids[:1]))


@pytest.mark.parametrize("shape,kernel", [((5, 6), 3), ((1, 7), 3), ((6, 1), 3), ((4, 5), 5), ((3, 4), 1)])
def test_incremental_step_equals_the_full_forward(gen, shape, kernel):
    """FastPixelSNAIL's per-position logits (cached rows, one query per step) equal the
    full forward's, float64, odd grids and kernels; and again on a second pass."""
    torch.manual_seed(0)
    cfg = PixelSNAILConfig(**{**SMALL.__dict__, "height": shape[0], "width": shape[1], "kernel": kernel})
    prior = PixelSNAIL(cfg).double().eval()
    fast = prior.fast()
    for _ in range(2):
        tokens = torch.randint(0, 11, (3, *shape), generator=gen)
        with torch.no_grad():
            torch.testing.assert_close(fast.logits(tokens), prior.logits(tokens), rtol=1e-12, atol=1e-12)


def test_incremental_step_float32_and_a_retrained_prior(gen):
    """float32 within rounding of the full forward; weights changed after a pass reach
    the next pass, on the same state tensors (a captured CUDA graph replays on them)."""
    torch.manual_seed(0)
    prior = PixelSNAIL(SMALL).eval()
    fast = prior.fast()
    tokens = torch.randint(0, 11, (4, 5, 6), generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(fast.logits(tokens), prior.logits(tokens), rtol=1e-4, atol=1e-5)
        buffers = [t.data_ptr() for t in (fast.input.buf, fast.attn[0]["cache"], fast.convs[1][0][1].above)]
        for param in prior.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=gen))
        torch.testing.assert_close(fast.logits(tokens), prior.logits(tokens), rtol=1e-4, atol=1e-5)
    assert buffers == [t.data_ptr() for t in (fast.input.buf, fast.attn[0]["cache"], fast.convs[1][0][1].above)]


@pytest.mark.parametrize("percentile", [5, 50, 90])
def test_fast_restoration_restores_the_reference_loops_tokens(gen, percentile):
    """The incremental pass against the published loop (full forward after every
    restored token): identical tokens and NLLs, float64, many seeds, low and high
    thresholds."""
    from vqfast.reference.restoration import pixelwise_restore
    from vqfast.scorers.restoration import nll_threshold

    torch.manual_seed(1)
    prior = PixelSNAIL(SMALL).double().eval()
    tokens = torch.randint(0, 11, (6, 5, 6), generator=gen)
    threshold = nll_threshold(prior, tokens, percentile)
    seeds = torch.randint(0, 2**40, (6,), generator=gen)
    restored, nll = prior.fast().restore(tokens, threshold, seeds)
    for n in range(6):
        ref, ref_nll = pixelwise_restore(prior, tokens[n], threshold, int(seeds[n]))
        assert torch.equal(restored[n], ref)
        torch.testing.assert_close(nll[n], ref_nll, rtol=1e-12, atol=1e-12)
    changed = (restored != tokens).float().mean()
    assert 0 < changed < 1
