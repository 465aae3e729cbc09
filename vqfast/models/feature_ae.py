"""Hierarchical feature-reconstruction autoencoder (seed 002, eqs. 2-11).

A frozen, pretrained ResNet's first three stages encode the image into
f_enc^1..f_enc^3; the decoder reconstructs all three from the deepest one:
f_dec^3 = Conv1x1(Convs(f_enc^3)) and f_dec^k = Conv1x1(Convs(Up(f_dec^{k+1}))), where
Convs are 1x1, 3x3, 1x1 convolutions each followed by BatchNorm and LeakyReLU(0.1)
and Up is nearest-neighbour x2 upsampling (eqs. 3-4). The residual of level k is
phi_k = 1/2 ||f_enc^k / ||f_enc^k|| - f_dec^k / ||f_dec^k|| ||^2 per pixel, the L2 norms
taken over channels (eqs. 5-6).
"""

from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from vqfast.models.backbones import Backbone


@dataclass
class FeatureAEConfig:
    backbone: str = "wide_resnet50_2"
    weights: Optional[str] = None  # torchvision state-dict file; None: $TORCH_HOME's copy, else random
    backbone_seed: int = 0  # seeds a random backbone, so a reloaded model sees the same encoder
    negative_slope: float = 0.1


def _conv_block(c_in: int, c_out: int, kernel: int, slope: float) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.LeakyReLU(slope, inplace=True))


class FeatureAE(nn.Module):
    """Args:
    config: FeatureAEConfig.
    backbone: a Backbone returning layers 1-3 to share between models; default: built
        from the config (seeded when no weights are found). It is frozen and kept out of
        ``state_dict`` (checkpoints hold the decoder; the config names the encoder).
    """

    LEVELS = (1, 2, 3)

    def __init__(self, config: Optional[FeatureAEConfig] = None, backbone: Optional[Backbone] = None):
        super().__init__()
        self.config = cfg = config or FeatureAEConfig()
        if backbone is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.backbone_seed)
                backbone = Backbone(cfg.backbone, layers=self.LEVELS, weights=cfg.weights)
        elif not set(self.LEVELS) <= set(backbone.layers):
            raise ValueError(f"backbone returns layers {backbone.layers}; the feature AE needs {self.LEVELS}")
        self.__dict__["backbone"] = backbone  # frozen: not a submodule, not in the state dict
        ch = backbone.channels
        self.blocks = nn.ModuleDict()
        self.heads = nn.ModuleDict()
        for k in self.LEVELS:
            c_in = ch[k] if k == self.LEVELS[-1] else ch[k + 1]
            slope = cfg.negative_slope
            self.blocks[str(k)] = nn.Sequential(_conv_block(c_in, ch[k], 1, slope), _conv_block(ch[k], ch[k], 3, slope),
                                                _conv_block(ch[k], ch[k], 1, slope))
            self.heads[str(k)] = nn.Conv2d(ch[k], ch[k], 1)

    def _apply(self, fn, recurse=True):
        self.backbone._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def encode(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        """x (B, 1 or 3, H, W) in [0, 1] -> {k: f_enc^k (B, C_k, H / 2^(k+1), W / 2^(k+1))} float32."""
        return {k: v for k, v in self.backbone(x).items() if k in self.LEVELS}

    def decode(self, enc: Dict[int, torch.Tensor]) -> Dict[int, torch.Tensor]:
        """{k: f_enc^k} -> {k: f_dec^k} of the same shapes, from f_enc^3 alone."""
        dec = {}
        h = enc[self.LEVELS[-1]]
        for k in reversed(self.LEVELS):
            if k != self.LEVELS[-1]:
                h = F.interpolate(h, size=enc[k].shape[-2:], mode="nearest")
            h = self.heads[str(k)](self.blocks[str(k)](h))
            dec[k] = h
        return dec

    @staticmethod
    def residual(f_enc: torch.Tensor, f_dec: torch.Tensor) -> torch.Tensor:
        """phi_k (eqs. 5-6): (B, C, h, w) twice -> (B, h, w), summed over channels."""
        diff = F.normalize(f_enc.float(), dim=1) - F.normalize(f_dec.float(), dim=1)
        return 0.5 * diff.square().sum(1)

    def residual_maps(self, x: torch.Tensor) -> Dict[int, torch.Tensor]:
        """x (B, C, H, W) -> {k: phi_k (B, h_k, w_k)}."""
        enc = self.encode(x)
        dec = self.decode(enc)
        return {k: self.residual(enc[k], dec[k]) for k in self.LEVELS}

    def training_loss(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """L = mean over levels of L_k, L_k = phi_k averaged over its pixels (eqs. 7-8)."""
        per_level = {k: phi.mean(dim=(1, 2)).mean() for k, phi in self.residual_maps(x).items()}
        loss = torch.stack(list(per_level.values())).mean()
        return {"loss": loss, **{f"level{k}": v for k, v in per_level.items()}}

    def config_dict(self) -> dict:
        return {"model": "FeatureAE", **asdict(self.config)}
