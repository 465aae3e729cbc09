"""DSR: shapes, feature-space anomalies (batched == the authors' loop), stages, losses,
checkpoints, the authors' weight names, the per-item training draws."""

import pytest
import torch
import torch.nn.functional as F
from scipy import stats

from vqfast import checkpoint
from vqfast.data import DSRAnomalies, ProceduralDefects, perlin_mask
from vqfast.models import DSR, DSRConfig
from vqfast.models.dsr import feature_anomalies, focal_loss
from vqfast.reference import dsr_anomalies
from vqfast.scorers import DSRScorer, score_dataset
from vqfast.training import TrainConfig, Trainer

TINY = dict(in_channels=1, num_codes=32, code_dim=8, hidden=16, res_hidden=8, object_mid=8, unet_width=4)


def _model(**kw):
    torch.manual_seed(0)
    return DSR(DSRConfig(**{**TINY, **kw}))


@pytest.mark.parametrize("h,w", [(64, 64), (64, 96), (128, 64)])
def test_shapes(h, w):
    model = _model().eval()
    x = torch.rand(2, 1, h, w)
    e = model.encode(x)
    assert e["q_lo"].shape == (2, 8, h // 8, w // 8) and e["q_hi"].shape == (2, 8, h // 4, w // 4)
    assert model.reconstruct(x).shape == x.shape
    anomaly_map, score = model.predict(x)
    assert anomaly_map.shape == (2, h, w) and score.shape == (2,)
    assert bool(((anomaly_map >= 0) & (anomaly_map <= 1)).all()) and bool(((score >= 0) & (score <= 1)).all())


@pytest.mark.parametrize("shape", [(1, 1, 48, 64), (1, 1, 64, 40), (1, 1, 32, 64), (1, 3, 64, 64), (64, 64)])
def test_sizes_the_strides_cannot_take_are_refused(shape):
    with pytest.raises(ValueError, match="multiples of 32 and at least 64"):
        _model().predict(torch.rand(*shape))


def _anomaly_case(gen, b=4, d=6, h=8, w=8, k=64, dtype=torch.float64):
    z = torch.randn(b, d, h, w, generator=gen, dtype=dtype)
    cb = torch.randn(k, d, generator=gen, dtype=dtype)
    idx = torch.cdist(z.permute(0, 2, 3, 1).reshape(-1, d), cb).argmin(1)
    q = cb[idx].view(b, h, w, d).permute(0, 3, 1, 2)
    mask = (torch.rand(b, 1, 4 * h, 4 * w, generator=gen) > 0.7).float()
    mask[0] = 0  # a clean image
    strength = 0.2 + 0.8 * torch.rand(b, generator=gen)
    seeds = torch.randint(0, 2**40, (b,), generator=gen)
    return z, q, cb, mask, strength, seeds


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_batched_anomalies_equal_the_per_image_loop(gen, backend):
    z, q, cb, mask, strength, seeds = _anomaly_case(gen)
    got = feature_anomalies(z, q, cb, mask, strength, seeds, backend=backend)
    ref = dsr_anomalies.feature_anomalies(z, q, cb, mask, strength, seeds)
    assert torch.equal(got, ref)


def test_anomalies_change_codes_only_inside_the_mask_and_never_to_an_excluded_rank(gen):
    z, q, cb, mask, strength, seeds = _anomaly_case(gen, b=6, k=128)
    out = feature_anomalies(z, q, cb, mask, strength, seeds)
    inside = dsr_anomalies.pooled_mask(mask, z.shape[2:]).bool().expand_as(z)
    assert torch.equal(out[~inside], q[~inside])
    skip, k = dsr_anomalies.rank_bounds(strength, 128, 0.05)
    assert skip == 6
    d = z.shape[1]
    for b in range(6):
        rows = inside[b, 0].reshape(-1)
        if not rows.any():
            continue
        feats = z[b].permute(1, 2, 0).reshape(-1, d)[rows]
        new = out[b].permute(1, 2, 0).reshape(-1, d)[rows]
        code = torch.cdist(new, cb).argmin(1)  # the code each replaced vector is
        ranks = torch.cdist(feats, cb).argsort(1).argsort(1).gather(1, code[:, None])[:, 0]
        assert bool((ranks >= skip).all()) and bool((ranks < k[b]).all())


def test_anomaly_codes_are_uniform_over_the_allowed_ranks(gen):
    k_codes, h = 64, 64
    cb = torch.randn(k_codes, 4, generator=gen, dtype=torch.float64)
    z = torch.randn(1, 4, 1, 1, generator=gen, dtype=torch.float64).expand(1, 4, h, h).contiguous()
    q = torch.zeros_like(z)
    strength = torch.tensor([0.5])
    out = feature_anomalies(z, q, cb, torch.ones(1, 1, h, h), strength, torch.randint(0, 2**40, (1,), generator=gen))
    order = torch.cdist(z[0, :, 0, 0][None], cb)[0].argsort()
    code = torch.cdist(out[0].reshape(4, -1).T, cb).argmin(1)
    rank = order.argsort()[code]
    skip, k = dsr_anomalies.rank_bounds(strength, k_codes, 0.05)
    counts = torch.bincount(rank - skip, minlength=int(k[0]) - skip)
    assert counts.shape[0] == int(k[0]) - skip == 30
    assert stats.chisquare(counts.numpy()).pvalue > 1e-4


def test_anomalous_latents_follow_the_level_choice(gen):
    model = _model().eval()
    x = torch.rand(4, 1, 64, 64, generator=gen)
    mask = torch.ones(4, 1, 64, 64)
    mask[3] = 0
    both = torch.tensor([True, False, False, True])
    lo = torch.tensor([False, True, False, True])
    with torch.no_grad():
        lat = model.anomalous_latents(x, mask, torch.full((4, 2), 1.0), both, lo, torch.arange(4))
    assert not torch.equal(lat["a_lo"][0], lat["q_lo"][0]) and not torch.equal(lat["a_hi"][0], lat["q_hi"][0])
    assert not torch.equal(lat["a_lo"][1], lat["q_lo"][1]) and torch.equal(lat["a_hi"][1], lat["q_hi"][1])
    assert torch.equal(lat["a_lo"][2], lat["q_lo"][2]) and not torch.equal(lat["a_hi"][2], lat["q_hi"][2])
    assert torch.equal(lat["a_lo"][3], lat["q_lo"][3]) and torch.equal(lat["a_hi"][3], lat["q_hi"][3])
    assert lat["mask"][:3].bool().all() and not lat["mask"][3].any()


def test_focal_loss_against_a_hand_computation():
    probs = torch.tensor([0.9, 0.3, 0.5, 0.01]).view(1, 1, 2, 2)
    probs = torch.cat([1 - probs, probs], 1)  # class 1's probability as above
    target = torch.tensor([1, 0, 1, 1]).view(1, 2, 2)
    s = 1e-5
    expected = []
    for p1, t in zip([0.9, 0.3, 0.5, 0.01], [1, 0, 1, 1]):
        onehot = [1.0 - s, s] if t == 0 else [s, 1.0 - s]
        pt = onehot[0] * (1 - p1) + onehot[1] * p1 + s
        expected.append(-((1 - pt) ** 2) * torch.log(torch.tensor(pt, dtype=torch.float64)))
    torch.testing.assert_close(focal_loss(probs.double(), target), torch.stack(expected).mean())
    assert float(focal_loss(probs, target, gamma=0.0)) > float(focal_loss(probs, target))


def _dsr_items(n=4, size=64):
    return ProceduralDefects(n, 0, size=size, channels=1, seed=3)


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_only_the_stage_trains(stage):
    model = _model().set_stage(stage).train()
    frozen_codebooks = [model.vq_lo.codebook.clone(), model.vq_hi.codebook.clone()]
    model.vq_lo.initialized.fill_(True)
    model.vq_hi.initialized.fill_(True)
    data = DSRAnomalies(_dsr_items(), stage=stage, seed=1) if stage > 1 else _dsr_items()
    batch = torch.utils.data.default_collate([data[i] for i in range(4)])
    batch = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    terms = model.training_loss(batch if stage > 1 else batch["image"])
    terms["loss"].backward()
    trained = {id(p) for m in model.stage_modules(stage) for p in m.parameters()}
    for name, p in model.named_parameters():
        if id(p) in trained:
            assert p.requires_grad
        else:
            assert not p.requires_grad and p.grad is None, name
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for m in model.stage_modules(stage) for p in m.parameters())
    if stage > 1:  # frozen codebooks: no EMA update in training mode
        assert torch.equal(model.vq_lo.codebook, frozen_codebooks[0])
        assert torch.equal(model.vq_hi.codebook, frozen_codebooks[1])
        assert not model.vq_lo.training and model.anomaly_module.training == (stage == 2)


def test_three_stages_train_resume_and_round_trip(tmp_path):
    data = _dsr_items(6)
    model = _model()
    for stage in (1, 2, 3):
        model.set_stage(stage)
        train = data if stage == 1 else DSRAnomalies(data, stage, seed=stage)
        cfg = TrainConfig(epochs=2, batch_size=3, lr=2e-4, max_steps=3, lr_milestones=(2,), early_stopping=False)
        key = DSR.STAGE_INPUTS[stage]
        history = Trainer(model, train, None, cfg, out_dir=tmp_path / f"stage{stage}", input_key=key,
                          progress=False).fit()
        assert history[-1]["step"] == 3 and "step budget" in history[-1]["stopped"]
        assert history[-1]["lr"] == pytest.approx(2e-5)  # x0.1 after step 2
        again = Trainer(model, train, None, cfg, out_dir=tmp_path / f"stage{stage}", input_key=key, progress=False)
        assert again.fit(resume=True) == history  # finished: resuming is a no-op
        saved = checkpoint.load_model(tmp_path / f"stage{stage}" / "model.safetensors", expected="DSR")
        own = model.state_dict()
        assert all(torch.equal(v, own[k]) for k, v in saved.state_dict().items())  # each stage's round trip
    model.eval()
    loaded = checkpoint.load_model(tmp_path / "stage3" / "model.safetensors", expected="DSR").eval()
    x = torch.stack([data[i]["image"] for i in range(2)])
    for a, b in zip(model.predict(x), loaded.predict(x)):
        assert torch.equal(a, b)


def test_scorer_and_resumable_scoring(tmp_path):
    model = _model().eval()
    data = ProceduralDefects(3, 2, size=64, channels=1, seed=4)
    scorer = DSRScorer(model)
    out = score_dataset(scorer, data, batch_size=2, out_dir=tmp_path)
    again = score_dataset(scorer, data, batch_size=2, out_dir=tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(out, again)) and out[1].shape == (5, 64, 64)
    names = [t.name for t in scorer.profile(torch.stack([data[0]["image"]]), repeats=1)]
    assert names[-1] == "score (total)" and "upsampling module" in names


def _authors_state(model: DSR) -> dict:
    """Our general model's tensors under the authors' DiscreteLatentModel names, written
    out by hand from their module layout (EncoderBot, EncoderTop, DecoderBot, ...)."""
    def res(theirs, ours, n):
        return {f"{theirs}._residual_stack._layers.{i}._block.{j}.weight": f"{ours}.res.layers.{i}.block.{j}.weight"
                for i in range(n) for j in (1, 3)}
    names = {"_pre_vq_conv_bot.weight": "pre_vq_hi.weight", "_pre_vq_conv_bot.bias": "pre_vq_hi.bias",
             "_pre_vq_conv_top.weight": "pre_vq_lo.weight", "_pre_vq_conv_top.bias": "pre_vq_lo.bias",
             "upsample_t.weight": "upsample_lo.weight", "upsample_t.bias": "upsample_lo.bias",
             "_vq_vae_top._embedding.weight": "vq_lo.codebook", "_vq_vae_top._ema_cluster_size": "vq_lo.ema_count",
             "_vq_vae_top._ema_w": "vq_lo.ema_sum", "_vq_vae_bot._embedding.weight": "vq_hi.codebook",
             "_vq_vae_bot._ema_cluster_size": "vq_hi.ema_count", "_vq_vae_bot._ema_w": "vq_hi.ema_sum"}
    for theirs, ours, convs in (("_encoder_b", "encoder_hi", ("_conv_1", "_conv_2", "_conv_3")),
                                ("_encoder_t", "encoder_lo", ("_conv_1", "_conv_2"))):
        for conv in convs:
            for p in ("weight", "bias"):
                names[f"{theirs}.{conv}.{p}"] = f"{ours}.conv{conv[-1]}.{p}"
        names.update(res(theirs, ours, model.config.res_layers))
    for theirs, ours in (("_conv_1", "conv"), ("_conv_trans_1", "up1"), ("_conv_trans_2", "up2")):
        for p in ("weight", "bias"):
            names[f"_decoder_b.{theirs}.{p}"] = f"general_decoder.{ours}.{p}"
    names.update(res("_decoder_b", "general_decoder", model.config.res_layers))
    own = model.state_dict()
    return {theirs: torch.randn_like(own[ours]) for theirs, ours in names.items()}, names


def test_load_general_reads_the_authors_names(tmp_path):
    model = _model()
    state, names = _authors_state(model)
    torch.save(state, tmp_path / "vq_model_pretrained.pckl")
    model.load_general(tmp_path / "vq_model_pretrained.pckl")
    own = model.state_dict()
    for theirs, ours in names.items():
        assert torch.equal(own[ours], state[theirs]), ours
    assert int(model.general_source) == 1 and bool(model.vq_lo.initialized) and "authors'" in model.general_origin
    assert "trained here" in _model().general_origin
    state["_vq_vae_top._embedding.weight"] = torch.randn(7, 3)
    torch.save(state, tmp_path / "wrong.pckl")
    with pytest.raises(ValueError, match="vq_lo.codebook has shape"):
        _model().load_general(tmp_path / "wrong.pckl")
    del state["upsample_t.weight"]
    torch.save(state, tmp_path / "partial.pckl")
    with pytest.raises(ValueError, match="missing"):
        _model().load_general(tmp_path / "partial.pckl")
    torch.save({"model": torch.nn.Linear(2, 2)}, tmp_path / "pickle.pckl")
    with pytest.raises(ValueError, match="weights_only"):
        _model().load_general(tmp_path / "pickle.pckl")


def test_training_draws_are_a_function_of_seed_epoch_and_item():
    base = _dsr_items(3)
    a, b = DSRAnomalies(base, 2, seed=5), DSRAnomalies(base, 2, seed=5)
    b.set_epoch(0)
    for i in (2, 0, 1):
        x, y = a[i], b[i]
        assert all(torch.equal(torch.as_tensor(x[k]), torch.as_tensor(y[k])) for k in ("mask", "strength", "seed"))
    b.set_epoch(1)
    assert any(not torch.equal(a[i]["mask"], b[i]["mask"]) or not torch.equal(a[i]["strength"], b[i]["strength"])
               for i in range(3))
    three = DSRAnomalies(base, 3, seed=5, p_anomalous=1.0, rotate=0.0)  # the blend alone
    item, clean = three[0], base[0]
    outside = three[0]["mask"] == 0
    assert torch.equal(item["image"][outside], clean["image"][outside])
    assert item["mask"].any() and not torch.equal(item["image"], clean["image"])


def test_perlin_masks_vary_and_hold_both_values():
    masks = torch.stack([perlin_mask(64, 96, torch.Generator().manual_seed(s)) for s in range(20)])
    assert masks.shape == (20, 1, 64, 96) and set(masks.unique().tolist()) <= {0.0, 1.0}
    frac = masks.mean(dim=(1, 2, 3))
    assert 0.02 < float(frac.mean()) < 0.6 and float(frac.std()) > 0.01
    assert torch.equal(perlin_mask(64, 96, torch.Generator().manual_seed(3)), masks[3])


def test_the_score_window_scales_with_the_image():
    """The authors' 21 x 21 window at 256 x 256 is the same share of a 128 x 128 image at 11."""
    from vqfast.models.dsr.model import score_window_for

    assert [score_window_for(21, (s, s)) for s in (256, 128, 64, 512)] == [21, 11, 5, 43]
    assert score_window_for(21, (128, 300)) == 11 and score_window_for(3, (32, 32)) == 1
    model = _model().eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        _, _, probs = model._masks(x)
        _, score = model.predict(x)
    expected = torch.nn.functional.avg_pool2d(probs[:, 1:], 5, stride=1, padding=2).amax(dim=(1, 2, 3))
    torch.testing.assert_close(score, expected)


def test_anomaly_items_rotate_as_the_authors_do():
    """Stage 2 rotates with probability 0.4 and stage 3 with 0.3 (U(-90, 90) degrees); the
    rotation is drawn after the masks and strengths, so those stay the unrotated draws."""
    data = ProceduralDefects(8, 0, size=32, seed=1)
    assert (DSRAnomalies(data, 2).rotate, DSRAnomalies(data, 3).rotate) == (0.4, 0.3)
    for stage in (2, 3):
        plain, turned = DSRAnomalies(data, stage, seed=5, rotate=0.0), DSRAnomalies(data, stage, seed=5, rotate=1.0)
        for i in range(4):
            a, b = plain[i], turned[i]
            assert torch.equal(a["mask"], b["mask"]) and not torch.equal(a["image"], b["image"])
            assert torch.equal(turned[i]["image"], b["image"])  # keyed by (seed, epoch, index)
            if stage == 2:
                assert torch.equal(a["image"], data[i]["image"])
    with pytest.raises(ValueError, match="rotate"):
        DSRAnomalies(data, 2, rotate=1.5)


def test_stage_2_and_3_modules_start_from_the_authors_init():
    """Convolutions ~ N(0, 0.02) in the object decoder, subspace modules, anomaly and
    upsampling modules (the authors' weights_init); the discrete model keeps torch's."""
    model = _model()
    for name in ("object_decoder", "restrict_hi", "anomaly_module", "upsampling_module"):
        weights = torch.cat([m.weight.flatten() for m in getattr(model, name).modules()
                             if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))])
        assert abs(float(weights.std()) - 0.02) < 0.004 and abs(float(weights.mean())) < 0.004, name
    assert float(model.encoder_hi.conv1.weight.std()) > 0.05  # torch's default, fan-in 16
