"""VQ-GAN (tables 1-2, eq. 15-16), the PatchGAN and vqfast's LPIPS."""

import warnings

import pytest
import torch

from vqfast.checkpoint import load_model, save_model
from vqfast.data import ProceduralDefects
from vqfast.models import LPIPS, VQGAN, PatchDiscriminator, VQGANConfig, adaptive_weight
from vqfast.models.lpips import lpips_weights_file
from vqfast.models.vqgan import NonLocalBlock, ResnetBlock
from vqfast.training import TrainConfig, Trainer


@pytest.fixture(scope="module")
def lpips_module():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return LPIPS()


def tiny(**kw):
    cfg = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,), resolution=16, z_channels=8,
               num_codes=16, disc_ch=8, disc_layers=2, disc_start=0)
    cfg.update(kw)
    return VQGANConfig(**cfg)


def test_paper_architecture_shapes():
    model = VQGAN(VQGANConfig(adversarial=False, perceptual_weight=0.0)).eval()
    x = torch.rand(1, 3, 128, 128)
    z = model.encode(x)
    assert z.shape == (1, 256, 8, 8)  # table 1: 128x128x3 -> 8x8x256
    assert model.decode(model.vq(z).quantized).shape == (1, 3, 128, 128)  # table 2
    enc_attn = sum(isinstance(m, NonLocalBlock) for m in model.encoder.modules())
    assert enc_attn == 3  # two at 16x16 plus the middle block
    assert model.vq.codebook.shape == (128, 256) and model.discriminator is None


def test_adaptive_weight_matches_backward(lpips_module):
    torch.manual_seed(0)
    model = VQGAN(tiny(), lpips=lpips_module).train()
    x = torch.rand(2, 3, 16, 16)
    out = model(x)
    nll = torch.nn.functional.mse_loss(out.reconstruction, x) + lpips_module(x, out.reconstruction).mean()
    g_loss = -model.discriminator(out.reconstruction).mean()
    lam = adaptive_weight(nll, g_loss, model.last_layer)
    grads = []
    for loss in (nll, g_loss):  # the same quantity through .backward() and .grad
        model.zero_grad()
        loss.backward(retain_graph=True)
        grads.append(model.last_layer.grad.norm().item())
    assert lam.item() == pytest.approx(grads[0] / (grads[1] + 1e-6), rel=1e-5)
    assert adaptive_weight(nll, 2 * g_loss, model.last_layer).item() == pytest.approx(lam.item() / 2, rel=1e-4)


def test_gan_training_steps_both_players(tmp_path, lpips_module):
    torch.manual_seed(0)
    model = VQGAN(tiny(disc_start=2), lpips=lpips_module)
    disc_before = [p.detach().clone() for p in model.discriminator.parameters()]
    trainer = Trainer(model, ProceduralDefects(8, 0, size=16), config=TrainConfig(epochs=1, batch_size=4, lr=1e-3),
                      out_dir=tmp_path, progress=False)
    # Step 1 of 2 runs before disc_start: no GAN terms, the discriminator untouched.
    terms = model.training_loss(torch.rand(2, 3, 16, 16))
    assert "disc_loss" not in terms and int(model.step) == 1
    assert all(torch.equal(a, b) for a, b in zip(disc_before, model.discriminator.parameters()))
    history = trainer.fit()
    assert int(model.step) == 3 and {"disc_loss", "g_loss", "adaptive_weight"} <= set(history[-1]["train"])
    assert any(not torch.equal(a, b) for a, b in zip(disc_before, model.discriminator.parameters()))
    assert set(trainer.optimizers) == {"gen", "disc"}
    disc_ids = {id(p) for p in model.discriminator.parameters()}
    assert not any(id(p) in disc_ids for p in trainer.params["gen"])
    resumed = Trainer(VQGAN(tiny(disc_start=2), lpips=lpips_module), ProceduralDefects(8, 0, size=16),
                      config=TrainConfig(epochs=2, batch_size=4, lr=1e-3), out_dir=tmp_path, progress=False)
    resumed.fit(resume=True)  # tuple configs survive the JSON round trip
    assert resumed.epoch == 2 and int(resumed.model.step) == 5


def test_trained_as_vqvae(lpips_module):
    model = VQGAN(tiny(adversarial=False, perceptual_weight=0.0, ema=False)).train()
    assert model.discriminator is None and model.lpips is None
    x = torch.rand(2, 3, 16, 16)
    terms = model.training_loss(x)
    assert set(terms) == {"loss", "recon", "commitment", "perplexity", "usage"}
    # L_r (eq. 6, the MSE) + L_vq + beta L_c, where L_vq and L_c have the same value (stop-gradient apart)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 1.25 * terms["commitment"])
    torch.testing.assert_close(terms["recon"], (model(x).reconstruction - x).square().mean())
    ema = VQGAN(tiny(adversarial=False, perceptual_weight=0.0)).train()  # default: EMA codebook, no L_vq
    terms = ema.training_loss(x)
    torch.testing.assert_close(terms["loss"], terms["recon"] + 0.25 * terms["commitment"])


def _blocks_by_resolution(model, latent):
    """[(kind, resolution, channels)] of the decoder's residual (R) and non-local (N)
    blocks in order, from a forward pass of an (1, z, latent, latent) code map."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((type(m).__name__[0], o.shape[-1], o.shape[1])))
             for m in model.decoder.modules() if isinstance(m, (ResnetBlock, NonLocalBlock))]
    with torch.no_grad():
        out = model.decode(torch.randn(1, model.config.z_channels, latent, latent))
    for h in hooks:
        h.remove()
    return seen, out.shape


def test_decoder_follows_table_2():
    model = VQGAN(VQGANConfig(adversarial=False, perceptual_weight=0.0)).eval()
    seen, shape = _blocks_by_resolution(model, 8)
    assert shape == (1, 3, 128, 128)
    middle, rest = seen[:3], seen[3:]
    assert middle == [("R", 8, 256), ("N", 8, 256), ("R", 8, 256)]  # Residual + NonLocal + Residual
    expected = ([("R", 8, 256), ("N", 8, 256)] * 3 +  # (Residual + NonLocal) x 3 -> 8x8x256
                [("R", 8, 128), ("N", 8, 128)] * 3 +  # (Residual + NonLocal) x 3 + Upsample -> 16x16x128
                [("R", 16, 128)] * 3 +  # Residual x 3 + Upsample -> 32x32x128
                [("R", 32, 64)] * 3 +  # Residual x 3 + Upsample -> 64x64x64
                [("R", 64, 64)] * 3)  # Residual x 3 + Upsample -> 128x128x64
    assert rest == expected
    taming, shape = _blocks_by_resolution(VQGAN(VQGANConfig(adversarial=False, perceptual_weight=0.0,
                                                            decoder_layout="taming")).eval(), 8)
    assert shape == (1, 3, 128, 128)
    assert [b for b in taming if b[0] == "N"] == [("N", 8, 256)] + [("N", 16, 128)] * 3  # attention at 16x16
    assert [b[1] for b in taming if b[0] == "R"][-3:] == [128] * 3  # its last level runs at full size
    with pytest.raises(ValueError, match="decoder_layout must be"):
        VQGANConfig(decoder_layout="other")


def test_gan_loss_is_eq_13_log_loss(lpips_module):
    """The default adversarial loss is eq. 13's: the discriminator minimises
    -[log D(x) + log(1 - D(x_hat))] / 2, the generator the non-saturating -log D(x_hat)."""
    torch.manual_seed(0)
    model = VQGAN(tiny(), lpips=lpips_module).eval()
    assert model.config.disc_loss == "vanilla"
    x = torch.rand(2, 3, 16, 16)
    terms = model.training_loss(x)
    with torch.no_grad():
        fake = torch.sigmoid(model.discriminator(model(x).reconstruction))
        real = torch.sigmoid(model.discriminator(x))
    torch.testing.assert_close(terms["disc_loss"], -0.5 * (real.log().mean() + (1 - fake).log().mean()))
    torch.testing.assert_close(terms["g_loss"], -fake.log().mean())
    hinge = VQGAN(tiny(disc_loss="hinge"), lpips=lpips_module).eval()
    hinge.load_state_dict(model.state_dict())
    with torch.no_grad():
        logits = hinge.discriminator(hinge(x).reconstruction)
    torch.testing.assert_close(hinge.training_loss(x)["g_loss"], -logits.mean())


def test_vqgan_recipe_keeps_its_codebook():
    """The default codebook (EMA with dead-code restarts) stays in use on procedural
    textures with the GAN on (measured 23 of 32 codes, reconstruction no worse), where the
    paper's gradient codebook (ema=False) drifts towards collapse (measured 7.5)."""
    runs = {}
    for ema in (True, False):
        torch.manual_seed(0)
        data = ProceduralDefects(64, 0, size=32)
        cfg = dict(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), resolution=32, z_channels=16,
                   num_codes=32, disc_ch=16, disc_layers=2, disc_start=8, perceptual_weight=0.0, ema=ema)
        config = TrainConfig(epochs=6, batch_size=16, lr=2e-3, betas=(0.5, 0.9), early_stopping=False)
        runs[ema] = Trainer(VQGAN(VQGANConfig(**cfg)), data, config=config, progress=False).fit()[-1]["train"]
    assert "disc_loss" in runs[True]  # the GAN ran
    assert runs[True]["perplexity"] >= 0.5 * 32 and runs[True]["perplexity"] > runs[False]["perplexity"] + 5
    assert runs[True]["recon"] < 1.25 * runs[False]["recon"]


def test_vanilla_loss_and_config_errors(lpips_module):
    model = VQGAN(tiny(disc_loss="vanilla"), lpips=lpips_module).train()
    assert torch.isfinite(model.training_loss(torch.rand(2, 3, 16, 16))["disc_loss"])
    with pytest.raises(ValueError, match="disc_loss must be"):
        VQGANConfig(disc_loss="wasserstein")
    with pytest.raises(ValueError, match=r"x must be \(B, 3, H, W\) with H and W multiples of 2"):
        VQGAN(tiny(adversarial=False), lpips=lpips_module)(torch.rand(1, 3, 15, 16))


def test_vqgan_checkpoint_round_trip(tmp_path, lpips_module):
    model = VQGAN(tiny(), lpips=lpips_module)
    save_model(model, tmp_path / "g.safetensors")
    state = model.state_dict()
    assert not any(k.startswith("lpips") for k in state)  # frozen, rebuilt from its own files
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(tmp_path / "g.safetensors", expected="VQGAN")
    assert loaded.config == model.config and all(torch.equal(state[k], v) for k, v in loaded.state_dict().items())


def test_patch_discriminator_outputs_patch_logits():
    d = PatchDiscriminator(3, 16, 3)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)


def test_lpips_properties(lpips_module):
    x, y = torch.rand(3, 3, 32, 32), torch.rand(3, 3, 32, 32)
    d = lpips_module(x, y)
    assert d.shape == (3,) and (d > 0).all()
    assert torch.allclose(lpips_module(x, x), torch.zeros(3), atol=1e-7)
    torch.testing.assert_close(lpips_module(y, x), d)
    grey = torch.rand(2, 1, 32, 32)
    torch.testing.assert_close(lpips_module(grey, grey * 0.5), lpips_module(grey.expand(-1, 3, -1, -1),
                                                                            grey.expand(-1, 3, -1, -1) * 0.5))
    xg = x.clone().requires_grad_()
    lpips_module(xg, y).sum().backward()
    assert xg.grad.abs().sum() > 0 and not any(p.requires_grad for p in lpips_module.parameters())
    with pytest.raises(ValueError, match="must both be"):
        lpips_module(x, y[:, :2])


def test_lpips_weight_files(tmp_path):
    if lpips_weights_file() is not None:  # the installed lpips package's per-channel weights
        state = torch.load(lpips_weights_file(), map_location="cpu", weights_only=True)
        with pytest.warns(RuntimeWarning, match="VGG16 weights"):
            m = LPIPS()
        assert torch.equal(m.lins[2].weight, state["lin2.model.1.weight"])
    # A torchvision-format VGG16 file (features.* and classifier.*) loads its features.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        donor = LPIPS()
    fake = {f"features.{k}": torch.randn_like(v) for k, v in donor.features.state_dict().items()}
    fake["classifier.0.weight"] = torch.randn(4, 4)
    torch.save(fake, tmp_path / "vgg16.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = LPIPS(vgg_weights=tmp_path / "vgg16.pth")
    assert torch.equal(m.features[0].weight, fake["features.0.weight"])
    torch.save({"features.0.weight": torch.randn(2, 2)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: not a torchvision VGG16 state dict"):
        LPIPS(vgg_weights=tmp_path / "bad.pth")


def test_lpips_equals_reference_package(lpips_module):
    """Runs where lpips (and so torchvision) imports, e.g. on a GPU machine."""
    try:
        import lpips as reference
    except Exception as exc:  # torchvision missing or broken here
        pytest.skip(f"lpips does not import here: {exc}")
    ref = reference.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False).eval()
    # Give both the same (random) VGG: theirs lives in slices with torchvision's indices.
    feats = {}
    for name, v in ref.net.state_dict().items():
        _, idx, kind = name.split(".")  # "slice3.12.weight"
        feats[f"{idx}.{kind}"] = v
    ours = LPIPS(lin_weights=lpips_weights_file())
    ours.features.load_state_dict(feats)
    x, y = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(ours(x, y), ref(x * 2 - 1, y * 2 - 1).flatten(), rtol=1e-4, atol=1e-6)


def test_discriminator_lr_decays_only_once_it_trains(tmp_path, lpips_module):
    """The epoch's lr decay steps only the optimisers that stepped: before disc_start the
    discriminator keeps its lr (and torch's scheduler-order warning never fires)."""
    torch.manual_seed(0)
    model = VQGAN(tiny(disc_start=100), lpips=lpips_module)
    trainer = Trainer(model, ProceduralDefects(8, 0, size=16), config=TrainConfig(epochs=2, batch_size=4, lr=1e-3,
                                                                                lr_gamma=0.5),
                      out_dir=tmp_path, progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*lr_scheduler.step.*")
        trainer.fit()
    assert trainer.optimizers["gen"].param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)
    assert trainer.optimizers["disc"].param_groups[0]["lr"] == pytest.approx(1e-3)
