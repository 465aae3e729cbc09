"""GPT-2 prior: transformers' model for training and reference, FastGPT2 equal to it."""

import pytest
import torch

from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig, gpt2_medium_config
from conftest import DEVICE_BACKENDS, require_backend

SMALL = GPT2PriorConfig(num_codes=37, height=5, width=7, n_layer=2, n_embd=48, n_head=4)


@pytest.fixture(params=DEVICE_BACKENDS)
def backend(request):
    require_backend("decode_attention", *request.param)
    return request.param


def _prior(dtype=torch.float64):
    torch.manual_seed(0)
    return GPT2Prior(SMALL).to(dtype).eval()


def test_fast_logits_equal_transformers(backend, gen):
    device, name = backend
    prior = _prior().to(device)
    tokens = torch.randint(0, 37, (3, 5, 7), generator=gen).to(device)
    expected = prior.logits(tokens)  # transformers' full forward
    assert expected.shape == (3, 35, 37)
    fast = prior.fast()
    fast.backend = name
    torch.testing.assert_close(fast.logits(tokens), expected, rtol=1e-10, atol=1e-10)
    # step by step against transformers' forward of each prefix
    fast.reset(3)
    inputs = prior._inputs(tokens)
    for i in range(35):
        step = fast.step(inputs[:, i], i)
        if i in (0, 6, 34):
            torch.testing.assert_close(step, prior.model(input_ids=inputs[:, : i + 1]).logits[:, -1, :37], rtol=1e-10,
                                       atol=1e-10)


def test_activation_is_gpt2s_gelu_new(gen):
    """The fused tanh GELU is GPT-2's own function: logits equal transformers' gelu_new
    model on the same weights (so published GPT-2 checkpoints mean the same here)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    prior = _prior()
    assert prior.model.config.activation_function == "gelu_pytorch_tanh"
    config = {**prior.model.config.to_dict(), "activation_function": "gelu_new"}
    original = GPT2LMHeadModel(GPT2Config(**config)).to(torch.float64).eval()
    original.load_state_dict(prior.model.state_dict())
    tokens = torch.randint(0, 37, (3, 5, 7), generator=gen)
    inputs = prior._inputs(tokens)
    torch.testing.assert_close(prior.logits(tokens), original(input_ids=inputs).logits[..., :37], rtol=1e-12,
                               atol=1e-12)


def test_nll_and_training_loss(gen):
    prior = _prior(torch.float32)
    tokens = torch.randint(0, 37, (4, 5, 7), generator=gen)
    nll = prior.nll(tokens)
    logits = prior.logits(tokens)
    expected = -logits.log_softmax(-1).gather(2, tokens.view(4, 35, 1))[..., 0]
    torch.testing.assert_close(nll.view(4, 35), expected)
    prior.train()
    out = prior.training_loss(tokens)
    out["loss"].backward()
    assert prior.model.transformer.wte.weight.grad is not None


def test_learns_a_deterministic_grid(gen):
    """A prior trained on one repeated grid drives its NLL towards zero."""
    prior = GPT2Prior(GPT2PriorConfig(num_codes=8, height=3, width=3, n_layer=1, n_embd=32, n_head=2, dropout=0.0))
    grid = torch.randint(0, 8, (1, 3, 3), generator=gen).repeat(8, 1, 1)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    first = float(prior.training_loss(grid)["loss"].detach())
    for _ in range(150):
        opt.zero_grad()
        loss = prior.training_loss(grid)["loss"]
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.05 * first


def test_config_checks():
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPT2Prior(GPT2PriorConfig(n_embd=50, n_head=8))
    prior = _prior()
    with pytest.raises(ValueError, match="must hold 5x7 = 35 positions"):
        prior.logits(torch.zeros(2, 4, 7, dtype=torch.int64))
    medium = gpt2_medium_config(512, 8, 8)
    assert (medium.n_layer, medium.n_embd, medium.n_head) == (24, 1024, 16)


def test_trains_on_cached_tokens_through_the_engine(tmp_path, gen):
    """Token grids of a VQ model, cached once, train the prior via the shared Trainer;
    the checkpoint reloads into an equal prior."""
    from vqfast import checkpoint
    from vqfast.data import ProceduralDefects, TokenGrids, encode_dataset
    from vqfast.models import VQVAE, VQVAEConfig
    from vqfast.training import TrainConfig, Trainer

    vq = VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=16, code_dim=8, downsamples=2))
    tokens = encode_dataset(vq, ProceduralDefects(24, size=16), batch_size=8)
    assert tokens.shape == (24, 4, 4) and tokens.dtype == torch.int64
    prior = GPT2Prior(GPT2PriorConfig(num_codes=16, height=4, width=4, n_layer=1, n_embd=32, n_head=2))
    config = TrainConfig(epochs=3, batch_size=8, lr=3e-3, early_stopping=False)
    history = Trainer(prior, TokenGrids(tokens), config=config, out_dir=tmp_path, device="cpu", progress=False,
                      input_key="tokens").fit()
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    again = checkpoint.load_model(tmp_path / "model.safetensors", expected="GPT2Prior").eval()
    prior.eval()
    torch.testing.assert_close(again.logits(tokens[:2]), prior.logits(tokens[:2]))
    with pytest.raises(ValueError, match=r"tokens must be \(N, h, w\) int64"):
        TokenGrids(tokens.float())


@pytest.mark.cuda
def test_cuda_graph_pass_equals_eager(gen):
    """The captured pass replays the eager one exactly, for new tokens and seeds too."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    prior = _prior(torch.float32).cuda()
    fast = prior.fast()
    for _ in range(2):  # capture, then replay with other inputs
        tokens = torch.randint(0, 37, (6, 5, 7), generator=gen).cuda()
        seeds = torch.randint(0, 2**40, (6,), generator=gen).cuda()
        eager = fast.restore(tokens, 3.2, seeds, cuda_graph=False)
        graph = fast.restore(tokens, 3.2, seeds, cuda_graph=True)
        assert torch.equal(eager[0], graph[0])
        torch.testing.assert_close(eager[1], graph[1])
    assert len(fast._graphs) == 1


def test_restore_checks_its_arguments(gen):
    fast = _prior().fast()
    tokens = torch.randint(0, 37, (2, 5, 7), generator=gen)
    with pytest.raises(ValueError, match=r"seeds must be \(2,\) int64"):
        fast.restore(tokens, 1.0, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"outside \[0, K=37\)"):
        fast.restore(tokens + 40, 1.0, torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        fast.restore(tokens, 1.0, torch.zeros(2, dtype=torch.int64), temperature=0.0)
