"""The bidirectional masked-token prior and masked-context Sample-wise scoring (the
density/restoration paper's eq. 20): batched passes against the per-token loops of
vqfast.reference.masked_context, in float64."""

import copy
import math

import pytest
import torch

from vqfast import checkpoint
from vqfast.data import MaskedGrids
from vqfast.models import VQVAE, MaskedPriorConfig, MaskedTokenPrior, VQVAEConfig
from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig
from vqfast.reference import masked_context as ref
from vqfast.scorers import MaskedContextScorer, nll_threshold


def _prior(h=5, w=7, k=16, stride=2, seed=0):
    torch.manual_seed(seed)
    cfg = MaskedPriorConfig(num_codes=k, height=h, width=w, n_layer=2, n_embd=32, n_head=4, context_stride=stride)
    return MaskedTokenPrior(cfg).double().eval()


@pytest.mark.parametrize("h,w,stride", [(1, 1, 2), (5, 7, 1), (5, 7, 2), (6, 6, 3), (4, 5, 5)])
def test_lattices_cover_every_position_once(h, w, stride):
    prior = _prior(h, w, stride=stride)
    cover = sum(prior.lattice(o).long() for o in range(stride * stride))
    assert torch.equal(cover, torch.ones(h, w, dtype=torch.long))


@pytest.mark.parametrize("h,w,stride", [(1, 1, 2), (5, 7, 1), (5, 7, 2), (6, 6, 3), (4, 5, 5)])
def test_neighbourhood_nll_equals_one_forward_per_token(gen, h, w, stride):
    """prior.nll batches stride^2 lattice forwards; the reference runs one per token.
    stride >= max(h, w) is the exact pseudo-likelihood (only the token itself hidden)."""
    prior = _prior(h, w, stride=stride)
    tokens = torch.randint(0, 16, (3, h, w), generator=gen)
    fast = prior.nll(tokens)
    assert fast.shape == (3, h, w)
    torch.testing.assert_close(fast.float(), ref.lattice_nll(prior, tokens, stride), rtol=1e-6, atol=1e-6)


def test_neighbourhood_nll_sees_the_neighbours_not_the_token(gen):
    """With stride 2 a token's NLL does not depend on its own code's presence in the
    input (it is hidden) but does on a neighbour's."""
    prior = _prior()
    tokens = torch.randint(0, 16, (1, 5, 7), generator=gen)
    lattice = prior.lattice(0)[None]
    base = prior.context_nll(tokens, lattice)
    moved = tokens.clone()
    moved[0, 0, 1] = (moved[0, 0, 1] + 1) % 16  # a neighbour of (0, 0), visible when (0, 0) is hidden
    assert prior.nll(moved)[0, 0, 0] != prior.nll(tokens)[0, 0, 0]  # float64: any change shows
    other = tokens.clone()
    other[0, 2, 2] = (other[0, 2, 2] + 3) % 16  # on (0, 0)'s lattice: hidden with it
    assert torch.equal(prior.context_nll(other, lattice)[0, 0, 0], base[0, 0, 0])  # the same input


def test_context_nll_of_unusual_equals_the_loop_in_any_order(gen):
    prior = _prior()
    tokens = torch.randint(0, 16, (4, 5, 7), generator=gen)
    unusual = torch.rand(4, 5, 7, generator=gen) < 0.3
    unusual[0] = False  # a grid with nothing unusual
    scorer = MaskedContextScorer(_vq(), prior, 0.0)
    fast = scorer.context_nll(tokens, unusual)
    slow = ref.context_nll_of_unusual(prior, tokens, unusual)
    shuffled = ref.context_nll_of_unusual(prior, tokens, unusual, order=torch.randperm(35, generator=gen))
    torch.testing.assert_close(fast, slow, rtol=1e-6, atol=1e-6)
    assert torch.equal(slow, shuffled)
    assert torch.equal(fast[~unusual], torch.zeros_like(fast[~unusual])) and bool((fast[unusual] > 0).all())


@pytest.mark.parametrize("n_layer", [1, 3])
@pytest.mark.parametrize("share", [0.0, 0.2, 1.0])
def test_logits_at_some_positions_equal_the_full_forward_rows(gen, n_layer, share):
    """prior.logits(at=...) runs the last layer's queries, feed-forward and head at those
    rows only: the same values (float64) as the full forward's rows, in at.nonzero() order;
    a grid with no such row and padding to the largest grid's count change nothing."""
    torch.manual_seed(3)
    cfg = MaskedPriorConfig(num_codes=16, height=5, width=7, n_layer=n_layer, n_embd=32, n_head=4)
    prior = MaskedTokenPrior(cfg).double().eval()
    tokens = torch.randint(0, 16, (4, 5, 7), generator=gen)
    hidden = torch.rand(4, 5, 7, generator=gen) < 0.3
    at = torch.rand(4, 5, 7, generator=gen) < share if 0 < share < 1 else torch.full((4, 5, 7), bool(share))
    if 0 < share < 1:
        at[1] = False
        at[2] = True  # one grid all rows, one none
    rows = prior.logits(tokens, hidden, at=at)
    assert rows.shape == (int(at.sum()), 16)
    torch.testing.assert_close(rows, prior.logits(tokens, hidden)[at.flatten(1)], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="at must be"):
        prior.logits(tokens, hidden, at=at[:, :4])


def test_unusual_tokens_do_not_pollute_each_other(gen):
    """Eq. 20's point: an unusual token's NLL is given the normal tokens only, so
    changing the other unusual tokens leaves it unchanged; changing a normal one does not."""
    prior = _prior()
    tokens = torch.randint(0, 16, (1, 5, 7), generator=gen)
    unusual = torch.zeros(1, 5, 7, dtype=torch.bool)
    unusual[0, 1, 1] = unusual[0, 1, 2] = unusual[0, 3, 5] = True
    scorer = MaskedContextScorer(_vq(), prior, 0.0)
    base = scorer.context_nll(tokens, unusual)[0, 1, 1]
    polluted = tokens.clone()
    polluted[0, 1, 2], polluted[0, 3, 5] = (polluted[0, 1, 2] + 5) % 16, (polluted[0, 3, 5] + 7) % 16
    assert torch.equal(scorer.context_nll(polluted, unusual)[0, 1, 1], base)
    normal = tokens.clone()
    normal[0, 1, 0] = (normal[0, 1, 0] + 5) % 16
    assert scorer.context_nll(normal, unusual)[0, 1, 1] != base


def _vq():
    torch.manual_seed(0)
    return VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=16, code_dim=8, downsamples=2)).eval()


@pytest.mark.parametrize("percentile", [10, 60, 95])
def test_scorer_fast_equals_reference_and_is_the_sample_wise_rule(gen, percentile):
    """6x6 grids of 24x24 images; score = sum of NLL2 over lambda_S at the tokens of u."""
    vq, prior = _vq(), _prior(6, 6)  # the VQ model in float32 (its kernels'), the prior in float64
    images = torch.rand(3, 3, 24, 24, generator=gen)
    tokens = vq.encode_indices(images)
    threshold = nll_threshold(prior, tokens, percentile)
    fast = MaskedContextScorer(vq, prior, threshold).score(images)
    slow = MaskedContextScorer(vq, prior, threshold, fast=False).score(images)
    torch.testing.assert_close(fast.pred_score, slow.pred_score, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(fast.anomaly_map, slow.anomaly_map, rtol=1e-6, atol=1e-6)
    unusual = prior.nll(tokens) > threshold
    nll2 = prior.context_nll(tokens, unusual)
    expected = torch.where(unusual & (nll2 > threshold), nll2, torch.zeros_like(nll2)).flatten(1).sum(1)
    torch.testing.assert_close(fast.pred_score, expected, rtol=1e-6, atol=1e-6)
    assert fast.anomaly_map.shape == (3, 24, 24)
    # nothing unusual: the score is 0 (with an infinite marking threshold)
    none = MaskedContextScorer(vq, prior, threshold, mark_threshold=float("inf")).score(images)
    assert torch.equal(none.pred_score, torch.zeros(3, dtype=none.pred_score.dtype))


def test_a_raster_prior_can_mark_the_unusual_tokens(gen):
    vq, prior = _vq(), _prior(6, 6)  # the VQ model in float32 (its kernels'), the prior in float64
    torch.manual_seed(1)
    marker = GPT2Prior(GPT2PriorConfig(num_codes=16, height=6, width=6, n_layer=2, n_embd=32, n_head=4)).double().eval()
    images = torch.rand(2, 3, 24, 24, generator=gen)
    tokens = vq.encode_indices(images)
    mark = nll_threshold(marker, tokens, 70)
    scorer = MaskedContextScorer(vq, prior, 0.5, mark_threshold=mark, marker=marker)
    assert torch.equal(scorer.unusual(tokens), marker.nll(tokens) > mark)
    with pytest.raises(ValueError, match="mark_threshold"):
        MaskedContextScorer(vq, prior, 0.5, marker=marker)
    with pytest.raises(ValueError, match="same codes and grid"):
        MaskedContextScorer(vq, prior, 0.5, mark_threshold=mark,
                            marker=GPT2Prior(GPT2PriorConfig(num_codes=16, height=5, width=6, n_layer=1, n_embd=16,
                                                             n_head=2)))


def test_bad_inputs_are_named():
    prior = _prior()
    with pytest.raises(ValueError, match="tokens must be"):
        prior.nll(torch.zeros(2, 5, 6, dtype=torch.int64))
    with pytest.raises(ValueError, match="outside"):
        prior.nll(torch.full((1, 5, 7), 16))
    with pytest.raises(ValueError, match="hidden must be"):
        prior.context_nll(torch.zeros(1, 5, 7, dtype=torch.int64), torch.zeros(1, 5, 7))
    with pytest.raises(ValueError, match="no hidden token"):
        prior.training_loss(torch.zeros(2, 5, 7, dtype=torch.int64))
    with pytest.raises(ValueError, match="num_codes"):
        MaskedContextScorer(_vq(), _prior(k=32), 1.0)


def test_masked_grids_are_a_function_of_seed_epoch_and_item(gen):
    tokens = torch.randint(0, 16, (20, 5, 7), generator=gen)
    grids = MaskedGrids(tokens, seed=3)
    first = torch.stack([grids[i]["tokens"] for i in range(20)])
    again = torch.stack([grids[i]["tokens"] for i in reversed(range(20))]).flip(0)
    assert torch.equal(first, again)
    hidden = first < 0
    assert bool(hidden.flatten(1).any(1).all())  # at least one hidden token per grid
    assert torch.equal(torch.where(hidden, -1 - first, first), tokens)  # the codes are kept
    counts = hidden.flatten(1).sum(1).tolist()
    assert len(set(counts)) > 5  # random ratios
    grids.set_epoch(1)
    assert not torch.equal(torch.stack([grids[i]["tokens"] for i in range(20)]), first)
    assert not torch.equal(torch.stack([MaskedGrids(tokens, seed=4)[i]["tokens"] for i in range(20)]), first)


def test_training_learns_to_fill_in_hidden_tokens():
    """Grids of one repeated code (a different code per grid): a hidden token is
    predictable from any visible one. A few Adam steps bring the loss far under log K."""
    torch.manual_seed(0)
    prior = MaskedTokenPrior(MaskedPriorConfig(num_codes=16, height=4, width=4, n_layer=2, n_embd=32, n_head=4,
                                               dropout=0.0))
    tokens = torch.arange(16).repeat_interleave(4).view(64, 1, 1).expand(64, 4, 4).contiguous()
    grids = MaskedGrids(tokens, seed=0)
    opt = torch.optim.Adam(prior.parameters(), lr=3e-3)
    for step in range(150):
        grids.set_epoch(step)
        batch = torch.stack([grids[i]["tokens"] for i in range(64)])
        # a fully hidden grid carries no information about its code: leave those out
        batch = batch[(batch >= 0).flatten(1).any(1)]
        loss = prior.training_loss(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * math.log(16)
    prior.eval()
    probe = tokens[:16:4]
    assert bool((prior.nll(probe) < 0.5).all())


def test_checkpoint_round_trip(tmp_path, gen):
    prior = _prior().float()
    checkpoint.save_model(prior, tmp_path / "masked.safetensors")
    back = checkpoint.load_model(tmp_path / "masked.safetensors", expected="MaskedTokenPrior").eval()
    tokens = torch.randint(0, 16, (2, 5, 7), generator=gen)
    torch.testing.assert_close(back.nll(tokens), prior.nll(tokens))
    assert back.config == prior.config


@pytest.mark.parametrize("percentile", [20, 70, 95])
@pytest.mark.parametrize("passes", [1, 3])
def test_inpainting_fast_equals_reference_tokens(gen, percentile, passes):
    """float64 prior: the batched passes in-paint exactly the reference loop's tokens,
    only at u, and the same again from the same seeds."""
    from vqfast.scorers import MaskedRestorationScorer

    vq, prior = _vq(), _prior(6, 6)
    tokens = torch.randint(0, 16, (3, 6, 6), generator=gen)
    threshold = nll_threshold(prior, tokens, percentile)
    seeds = torch.randint(0, 2**40, (3,), generator=gen)
    fast = MaskedRestorationScorer(vq, prior, threshold, passes=passes, restorations=4).restore(tokens, seeds)
    slow = MaskedRestorationScorer(vq, prior, threshold, passes=passes, restorations=4, fast=False).restore(tokens,
                                                                                                           seeds)
    assert fast.shape == (3, 4, 6, 6) and torch.equal(fast, slow)
    unusual = prior.nll(tokens) > threshold
    assert torch.equal(fast[~unusual[:, None].expand_as(fast)], tokens[:, None].expand_as(fast)[~unusual[:, None].expand_as(fast)])
    if percentile < 95:
        assert bool((fast != tokens[:, None]).any())  # something was in-painted
        assert not torch.equal(fast[:, 0], fast[:, 1])  # the restorations draw their own streams
    again = MaskedRestorationScorer(vq, prior, threshold, passes=passes, restorations=4).restore(tokens, seeds)
    assert torch.equal(again, fast)


def test_one_pass_draws_every_unusual_token_from_its_masked_conditional(gen):
    """passes=1: each token of u is the inverse-CDF draw from p(. | u-bar) at its own
    counter; the most-confident ordering plays no part."""
    from vqfast.reference.restore_step import restore_step, stream_seeds
    from vqfast.scorers import MaskedRestorationScorer

    vq, prior = _vq(), _prior(6, 6)
    tokens = torch.randint(0, 16, (2, 6, 6), generator=gen)
    threshold = nll_threshold(prior, tokens, 60)
    seeds = torch.tensor([5, 9])
    out = MaskedRestorationScorer(vq, prior, threshold, passes=1, restorations=2).restore(tokens, seeds)
    unusual = prior.nll(tokens) > threshold
    logits = prior.logits(tokens, unusual)
    rows = stream_seeds(seeds, 2)
    for b in range(2):
        for j in range(2):
            for p in torch.nonzero(unusual[b].flatten()).flatten().tolist():
                draw, _ = restore_step(logits[b, p : p + 1], tokens[b].flatten()[p : p + 1], float("-inf"),
                                       rows[b, j : j + 1], p)
                assert out[b, j].flatten()[p] == draw[0]


def test_masked_restoration_scores_through_eqs_11_12(gen):
    from vqfast.scorers import MaskedRestorationScorer
    from vqfast.scorers.restoration import weighted_residual_map

    vq, prior = _vq(), _prior(6, 6)
    images = torch.rand(2, 3, 24, 24, generator=gen)
    tokens = vq.encode_indices(images)
    scorer = MaskedRestorationScorer(vq, prior, nll_threshold(prior, tokens, 50), restorations=3)
    out = scorer.score(images)
    restored = scorer.restore(tokens, scorer.image_seeds(images))
    decoded = vq.decode_indices(restored.flatten(0, 1)).clamp(0, 1).view(2, 3, 3, 24, 24)
    torch.testing.assert_close(out.anomaly_map, weighted_residual_map(images, decoded, None))
    # Not a function of the batch: the same restored tokens for item 1 alone; the score only up to
    # the decoder's float rounding, which may depend on the batch size on some CPUs.
    assert torch.equal(scorer.restore(tokens[1:], scorer.image_seeds(images[1:])), restored[1:])
    torch.testing.assert_close(scorer.score(images[1:]).pred_score, out.pred_score[1:], rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="passes"):
        MaskedRestorationScorer(vq, prior, 1.0, passes=0)


@pytest.mark.parametrize("marked_by", ["masked", "gpt2"])
def test_bfloat16_priors_stay_close_to_float32(gen, marked_by):
    """prior_precision="bfloat16" runs both priors (the masked prior and a marker) in
    bfloat16: pass 2's NLLs move within bfloat16 rounding, not bitwise; the in-painting
    still changes only tokens of u (u marked in bfloat16) and is reproducible."""
    from vqfast.scorers import MaskedRestorationScorer

    vq, prior = _vq(), _prior(6, 6).float()
    torch.manual_seed(1)
    marker = None
    if marked_by == "gpt2":
        marker = GPT2Prior(GPT2PriorConfig(num_codes=16, height=6, width=6, n_layer=2, n_embd=32, n_head=4)).eval()
    images = torch.rand(3, 3, 24, 24, generator=gen)
    tokens = vq.encode_indices(images)
    mark = nll_threshold(marker or prior, tokens, 60, precision="bfloat16")
    full = MaskedContextScorer(vq, prior, 0.5, mark, marker)
    half = MaskedContextScorer(vq, prior, 0.5, mark, marker, prior_precision="bfloat16")
    unusual = half.unusual(tokens)
    a, b = full.context_nll(tokens, unusual), half.context_nll(tokens, unusual)
    assert bool(unusual.any()) and not torch.equal(a, b)
    assert float((a - b).abs().amax()) < 0.05
    scorer = MaskedRestorationScorer(vq, prior, mark, passes=2, marker=marker, restorations=3,
                                     prior_precision="bfloat16")
    seeds = scorer.image_seeds(images)
    out = scorer.restore(tokens, seeds)
    keep = ~unusual[:, None].expand_as(out)
    assert torch.equal(out[keep], tokens[:, None].expand_as(out)[keep])
    assert bool((out != tokens[:, None]).any()) and torch.equal(scorer.restore(tokens, seeds), out)
    assert torch.isfinite(scorer.score(images).pred_score).all()
    if marker is not None:  # autocast leaves float64 models alone: refused, not silently float64
        wide = copy.deepcopy(marker).double()
        with pytest.raises(ValueError, match="leaves a torch.float64 marker as it is"):
            MaskedContextScorer(vq, prior, 0.5, mark, wide, prior_precision="bfloat16")
        with pytest.raises(ValueError, match="leaves a torch.float64 marker as it is"):
            MaskedRestorationScorer(vq, prior, mark, marker=wide, prior_precision="bfloat16")
