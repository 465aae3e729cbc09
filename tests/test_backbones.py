"""vqfast.models.backbones: torchvision-compatible names, weight loading, frozen features."""

import warnings

import pytest
import torch

from vqfast.models.backbones import ARCHS, Backbone


def _random(name, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Backbone(name, **kw)


@pytest.mark.parametrize("name,channels", [("resnet18", (64, 128, 256, 512)),
                                           ("resnet50", (256, 512, 1024, 2048)),
                                           ("wide_resnet50_2", (256, 512, 1024, 2048))])
def test_layer_shapes(name, channels):
    model = _random(name, layers=(1, 2, 3, 4))
    feats = model(torch.rand(2, 3, 64, 64))
    assert [tuple(feats[i].shape) for i in (1, 2, 3, 4)] == [(2, c, 64 // 2 ** (i + 1), 64 // 2 ** (i + 1))
                                                            for i, c in zip((1, 2, 3, 4), channels)]
    assert model.channels == dict(zip((1, 2, 3, 4), channels))


def test_torchvision_key_names_and_sizes():
    """Spot checks of torchvision's layout (names and shapes of its published files)."""
    sd = _random("wide_resnet50_2").state_dict()
    assert sd["layer1.0.conv1.weight"].shape == (128, 64, 1, 1)  # width 2 x 64
    assert sd["layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["layer4.2.conv2.weight"].shape == (1024, 1024, 3, 3)
    assert sd["fc.weight"].shape == (1000, 2048) and "layer2.0.downsample.1.running_mean" in sd
    assert sum(v.numel() for k, v in sd.items() if "running" not in k and "num_batches" not in k) == 68_883_240
    r18 = _random("resnet18").state_dict()
    assert "layer1.0.downsample.0.weight" not in r18 and r18["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert sum(v.numel() for k, v in r18.items() if "running" not in k and "num_batches" not in k) == 11_689_512


def test_loads_torchvision_file_from_path_and_torch_home(tmp_path, monkeypatch):
    donor = _random("resnet18")
    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in donor.state_dict().items()}
    path = tmp_path / "r18.pth"
    torch.save(state, path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "random weights" warning when a file is given
        model = Backbone("resnet18", weights=path)
    assert model.pretrained and torch.equal(model.layer3[1].conv2.weight, state["layer3.1.conv2.weight"])
    home = tmp_path / "home" / "hub" / "checkpoints"
    home.mkdir(parents=True)
    torch.save(state, home / ARCHS["resnet18"][3])
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "home"))
    assert torch.equal(Backbone("resnet18").conv1.weight, state["conv1.weight"])


def test_loads_safetensors_weights(tmp_path):
    from safetensors.torch import save_file

    state = {k: torch.randn_like(v) if v.is_floating_point() else v for k, v in _random("resnet18").state_dict().items()}
    save_file(state, str(tmp_path / "r18.safetensors"))
    assert torch.equal(Backbone("resnet18", weights=tmp_path / "r18.safetensors").fc.weight, state["fc.weight"])


def test_asks_for_other_layers(gen):
    model = _random("resnet18", layers=(1,))
    out = model(torch.rand(1, 3, 64, 64, generator=gen), layers=(2, 4))
    assert sorted(out) == [2, 4] and out[4].shape == (1, 512, 2, 2)
    with pytest.raises(ValueError, match="layers must be a non-empty subset of 1..4"):
        model(torch.rand(1, 3, 64, 64), layers=(5,))


def test_missing_and_wrong_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.warns(RuntimeWarning, match="resnet18: no pretrained weights"):
        assert not Backbone("resnet18").pretrained
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: not a torchvision resnet50 state dict"):
        Backbone("resnet50", weights=tmp_path / "bad.pth")
    (tmp_path / "notes.txt").write_text("these are not weights\n")
    with pytest.raises(ValueError, match="notes.txt: not a readable resnet18 weights file"):
        Backbone("resnet18", weights=tmp_path / "notes.txt")
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.pth: not a readable resnet18 weights file"):
        Backbone("resnet18", weights=tmp_path / "empty.pth")
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="list.pth: holds a list, not a state dict"):
        Backbone("resnet18", weights=tmp_path / "list.pth")
    with pytest.raises(ValueError, match="absent.pth: weights file not found"):
        Backbone("resnet18", weights=tmp_path / "absent.pth")
    with pytest.raises(ValueError, match="name must be one of"):
        Backbone("vgg16")
    with pytest.raises(ValueError, match="layers must be"):
        _random("resnet18", layers=(0, 5))


def test_frozen_grey_input_and_normalisation(gen):
    model = _random("resnet18", layers=(2,))
    model.train()
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    grey = torch.rand(2, 1, 32, 32, generator=gen)
    torch.testing.assert_close(model(grey)[2], model(grey.expand(-1, 3, -1, -1))[2])
    raw = _random("resnet18", layers=(2,), normalize=False)
    raw.load_state_dict(model.state_dict())
    x = torch.rand(2, 3, 32, 32, generator=gen)
    torch.testing.assert_close(model(x)[2], raw((x - model.mean) / model.std)[2])
    with pytest.raises(ValueError, match=r"x must be \(B, 1 or 3, H, W\)"):
        model(torch.rand(2, 2, 8, 8))


@pytest.mark.parametrize("name", ["resnet18", "wide_resnet50_2"])
def test_cpu_features_in_chunks_equal_one_call(name, gen):
    """On the CPU the network runs channels-last, CPU_CHUNK images per call (faster:
    benchmarks/cpu_convolutions.py); the features equal one channels-first call on the
    whole batch to float32 rounding, in order, returned in the default memory format."""
    from vqfast.models.base import CPU_CHUNK

    model = _random(name, layers=(1, 2, 3))
    n = 2 * CPU_CHUNK + 1
    x = torch.rand(n, 3, 64, 64, generator=gen)
    seen = []
    hook = model.conv1.register_forward_pre_hook(
        lambda mod, args: seen.append((args[0].shape[0], args[0].is_contiguous(memory_format=torch.channels_last))))
    feats = model(x)
    hook.remove()
    assert seen == [(CPU_CHUNK, True), (CPU_CHUNK, True), (1, True)]
    whole = model._features((x - model.mean) / model.std, (1, 2, 3))
    for i in (1, 2, 3):
        assert feats[i].is_contiguous() and feats[i].shape == whole[i].shape
        scale = float(whole[i].abs().amax())
        assert float((feats[i] - whole[i]).abs().amax()) <= 1e-5 * scale, i
