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


def test_cached_logits_recompute_only_changed_rows_exactly(gen):
    """logits_cached from a row equals the full forward after any change at or below it."""
    torch.manual_seed(0)
    prior = PixelSNAIL(SMALL).double().eval()
    tokens = torch.randint(0, 11, (3, 5, 6), generator=gen)
    logits, cache = prior.logits_cached(tokens)
    torch.testing.assert_close(logits, prior.logits(tokens), rtol=0, atol=1e-12)
    for _ in range(6):
        p = int(torch.randint(0, 30, (1,), generator=gen))
        changed = tokens.clone().view(3, 30)
        changed[:, p:] = torch.randint(0, 11, (3, 30 - p), generator=gen)  # everything from p on may change
        tokens = changed.view(3, 5, 6)
        logits, cache = prior.logits_cached(tokens, cache, p // 6)
        torch.testing.assert_close(logits, prior.logits(tokens), rtol=0, atol=1e-12)
