"""LPIPS (Zhang et al. 2018, VGG16 variant) implemented in vqfast.

d(x, y) = sum over layers l of the spatial mean of sum_c w_lc (u_l(x) - u_l(y))_c^2,
u_l the channel-unit-normalised VGG16 features after relu1_2, relu2_2, relu3_3,
relu4_3 and relu5_3, w_l >= 0 the learned per-channel weights: the lpips package's
weighted sum of squares, which the code computes. The paper's eq. 14 writes
||w_l * (u_l(x) - u_l(y))||^2, the same distance with its w_l the square roots of these.

Weights never come from a download:
- the per-channel weights are read from the installed ``lpips`` package's
  ``weights/v0.1/vgg.pth`` (found without importing lpips, which needs torchvision);
- the VGG16 weights from a torchvision-format file: ``vgg_weights=PATH``, or
  ``$TORCH_HOME/hub/checkpoints/vgg16-397923af.pth`` when present.
Whatever is missing stays random, with a warning that the loss is uncalibrated.
Both .pth files are read with ``torch.load(weights_only=True)``, which refuses
arbitrary pickled objects.
"""

import importlib.util
import os
import warnings
from pathlib import Path
from typing import List, Optional

import torch
import torch.nn as nn

# VGG16 "features" up to relu5_3, with torchvision's indices so its state dict loads.
_VGG16_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices of relu1_2, relu2_2, relu3_3, relu4_3, relu5_3
_CHANNELS = (64, 128, 256, 512, 512)
VGG16_FILE = "vgg16-397923af.pth"


def _vgg16_features() -> nn.Sequential:
    layers, c = [], 3
    for v in _VGG16_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, v, 3, padding=1), nn.ReLU(inplace=False)]
            c = v
    return nn.Sequential(*layers)


def lpips_weights_file() -> Optional[Path]:
    spec = importlib.util.find_spec("lpips")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "weights" / "v0.1" / "vgg.pth"
    return path if path.is_file() else None


def default_vgg16_file() -> Optional[Path]:
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    path = home / "hub" / "checkpoints" / VGG16_FILE
    return path if path.is_file() else None


class LPIPS(nn.Module):
    """Perceptual distance between images in [0, 1]; (B, C, H, W) -> (B,).

    Grey (C = 1) images are replicated to RGB. Frozen: parameters never train.
    ``calibrated`` says whether both weight files were found.
    """

    def __init__(self, vgg_weights=None, lin_weights=None):
        super().__init__()
        self.features = _vgg16_features()
        self.lins = nn.ModuleList(nn.Conv2d(c, 1, 1, bias=False) for c in _CHANNELS)
        self.register_buffer("shift", torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1))
        missing = []
        vgg_path = Path(vgg_weights) if vgg_weights is not None else default_vgg16_file()
        if vgg_path is not None:
            state = torch.load(vgg_path, map_location="cpu", weights_only=True)
            feats = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
            try:
                self.features.load_state_dict(feats, strict=True)
            except RuntimeError as exc:
                raise ValueError(f"{vgg_path}: not a torchvision VGG16 state dict ({exc})") from exc
        else:
            missing.append(f"VGG16 weights (pass vgg_weights= or put {VGG16_FILE} in $TORCH_HOME/hub/checkpoints)")
        lin_path = Path(lin_weights) if lin_weights is not None else lpips_weights_file()
        if lin_path is not None:
            state = torch.load(lin_path, map_location="cpu", weights_only=True)
            try:
                for i, lin in enumerate(self.lins):
                    lin.weight.data.copy_(state[f"lin{i}.model.1.weight"])
            except (KeyError, RuntimeError) as exc:
                raise ValueError(f"{lin_path}: not LPIPS v0.1 VGG linear weights ({exc})") from exc
        else:  # unit weights: the uncalibrated "baseline" variant of the LPIPS paper
            for lin in self.lins:
                nn.init.constant_(lin.weight, 1.0)
            missing.append("LPIPS linear weights (pip install --no-deps lpips)")
        self.calibrated = not missing
        if missing:
            warnings.warn("LPIPS runs with random or unit weights for: " + "; ".join(missing)
                          + ". The perceptual loss is uncalibrated.", RuntimeWarning, stacklevel=2)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)  # frozen network: always in eval mode

    def _taps(self, x: torch.Tensor) -> List[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                out.append(x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10))
                if i == _TAPS[-1]:
                    break
        return out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"x and y must both be (B, 1 or 3, H, W), got {tuple(x.shape)} and {tuple(y.shape)}")
        if x.shape[1] == 1:
            x, y = x.expand(-1, 3, -1, -1), y.expand(-1, 3, -1, -1)
        x = (x * 2 - 1 - self.shift) / self.scale
        y = (y * 2 - 1 - self.shift) / self.scale
        total = 0
        for lin, fx, fy in zip(self.lins, self._taps(x), self._taps(y)):
            total = total + lin((fx - fy).square()).mean(dim=(1, 2, 3))
        return total
