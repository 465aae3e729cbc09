"""DSR's networks: the discrete latent model's encoders, the general and object-specific
appearance decoders with their subspace restriction modules, and the U-Net of the anomaly
detection and upsampling modules (section 3 and the authors' public code)."""

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

@dataclass
class DSRConfig:
    """CPU-sized defaults; ``paper_config()`` gives the authors' sizes."""
    in_channels: int = 3
    num_codes: int = 512  # per codebook; authors 4096
    code_dim: int = 64  # authors 128
    hidden: int = 64  # encoder / general decoder width; authors 128
    res_layers: int = 2
    res_hidden: int = 32  # authors 64
    object_mid: int = 64  # the object decoder's bottleneck width (authors 64)
    unet_width: int = 32  # anomaly and upsampling modules; authors 64
    beta: float = 0.25  # commitment
    ema_decay: float = 0.99
    dead_threshold: float = 1.0  # EMA dead-code restarts (authors: none, 0.0)
    strength_min: float = 0.2  # anomaly strength s ~ U[strength_min, 1]
    skip_fraction: float = 0.05  # the nearest codes never drawn
    image_weight: float = 10.0  # stage 2: weight of MSE(I, I_spc)
    focal_gamma: float = 2.0
    score_window: int = 21  # image score: max of the window-averaged mask, the window at 256 x 256 images
    backend: str = "auto"


def paper_config(in_channels: int = 3) -> DSRConfig:
    """The authors' model: 4096 x 128 codebooks, 128 hidden, 64-wide U-Nets, no restarts."""
    return DSRConfig(in_channels=in_channels, num_codes=4096, code_dim=128, hidden=128, res_hidden=64, object_mid=64,
                     unet_width=64, dead_threshold=0.0)


class Residual(nn.Module):
    def __init__(self, channels: int, hidden: int):
        super().__init__()
        self.block = nn.Sequential(nn.ReLU(), nn.Conv2d(channels, hidden, 3, padding=1, bias=False), nn.ReLU(),
                                   nn.Conv2d(hidden, channels, 1, bias=False))

    def forward(self, x):
        return x + self.block(x)


class ResidualStack(nn.Module):
    def __init__(self, channels: int, hidden: int, layers: int):
        super().__init__()
        self.layers = nn.ModuleList(Residual(channels, hidden) for _ in range(layers))

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return F.relu(x)


def _conv_block(cin: int, cout: int, mid: Optional[int] = None) -> nn.Sequential:
    mid = mid or cout
    return nn.Sequential(nn.Conv2d(cin, mid, 3, padding=1), nn.InstanceNorm2d(mid), nn.ReLU(),
                         nn.Conv2d(mid, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.ReLU())


def _up_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
                         nn.Conv2d(cin, cout, 3, padding=1), nn.InstanceNorm2d(cout), nn.ReLU())


class EncoderHi(nn.Module):
    def __init__(self, cfg: DSRConfig):
        super().__init__()
        h = cfg.hidden
        self.conv1 = nn.Conv2d(cfg.in_channels, h // 2, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(h // 2, h, 4, stride=2, padding=1)
        self.conv3 = nn.Conv2d(h, h, 3, padding=1)
        self.res = ResidualStack(h, cfg.res_hidden, cfg.res_layers)

    def forward(self, x):
        return self.res(self.conv3(F.relu(self.conv2(F.relu(self.conv1(x))))))


class EncoderLo(nn.Module):
    def __init__(self, cfg: DSRConfig):
        super().__init__()
        h = cfg.hidden
        self.conv1 = nn.Conv2d(h, h, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(h, h, 3, padding=1)
        self.res = ResidualStack(h, cfg.res_hidden, cfg.res_layers)

    def forward(self, x):
        return self.res(F.relu(self.conv2(F.relu(self.conv1(x)))))


class GeneralDecoder(nn.Module):
    def __init__(self, cfg: DSRConfig):
        super().__init__()
        h = cfg.hidden
        self.conv = nn.Conv2d(2 * cfg.code_dim, h, 3, padding=1)
        self.res = ResidualStack(h, cfg.res_hidden, cfg.res_layers)
        self.up1 = nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(h // 2, cfg.in_channels, 4, stride=2, padding=1)

    def forward(self, q):
        return self.up2(F.relu(self.up1(self.res(self.conv(q)))))


class SubspaceRestriction(nn.Module):
    """Q (B, D, h, w) -> F~ (B, D, h, w): conv blocks down by two max-pools, bilinear up."""

    def __init__(self, width: int):
        super().__init__()
        w = width
        self.block1, self.block2, self.block3 = _conv_block(w, w), _conv_block(w, 2 * w), _conv_block(2 * w, 4 * w)
        self.up2, self.db2 = _up_block(4 * w, 2 * w), _conv_block(2 * w, 2 * w)
        self.up3, self.db3 = _up_block(2 * w, w), _conv_block(w, w)
        self.out = nn.Conv2d(w, w, 3, padding=1)

    def forward(self, q):
        x = self.block3(F.max_pool2d(self.block2(F.max_pool2d(self.block1(q), 2)), 2))
        return self.out(self.db3(self.up3(self.db2(self.up2(x)))))


class ObjectDecoder(nn.Module):
    """[up(Q~_lo), Q~_hi] (B, 2D, h, w) -> I_spc: two down-sampling blocks, four
    transposed-conv upsamplings (the last two after a residual stack)."""

    def __init__(self, cfg: DSRConfig):
        super().__init__()
        c, m, h = 2 * cfg.code_dim, cfg.object_mid, cfg.hidden
        self.block1 = _conv_block(c, 2 * c, mid=c)
        self.block2 = _conv_block(2 * c, 4 * c, mid=2 * c)
        self.pre = nn.Conv2d(4 * c, m, 1)
        self.up1 = nn.ConvTranspose2d(m, m, 4, stride=2, padding=1)
        self.up2 = nn.ConvTranspose2d(m, m, 4, stride=2, padding=1)
        self.conv = nn.Conv2d(m, h, 3, padding=1)
        self.res = ResidualStack(h, cfg.res_hidden, cfg.res_layers)
        self.up3 = nn.ConvTranspose2d(h, h // 2, 4, stride=2, padding=1)
        self.up4 = nn.ConvTranspose2d(h // 2, cfg.in_channels, 4, stride=2, padding=1)

    def forward(self, q):
        x = self.pre(F.max_pool2d(self.block2(F.max_pool2d(self.block1(q), 2)), 2))
        x = self.conv(F.relu(self.up2(F.relu(self.up1(x)))))
        return self.up4(F.relu(self.up3(self.res(x))))


class UNet(nn.Module):
    """(B, cin, H, W) -> (B, cout, H, W); three max-pools, skips at every level."""

    def __init__(self, cin: int, cout: int, width: int):
        super().__init__()
        w = width
        self.enc = nn.ModuleList([_conv_block(cin, w), _conv_block(w, 2 * w), _conv_block(2 * w, 4 * w),
                                  _conv_block(4 * w, 4 * w)])
        self.ups = nn.ModuleList([_up_block(4 * w, 4 * w), _up_block(4 * w, 2 * w), _up_block(2 * w, w)])
        self.dec = nn.ModuleList([_conv_block(8 * w, 4 * w), _conv_block(4 * w, 2 * w), _conv_block(2 * w, w)])
        self.out = nn.Conv2d(w, cout, 3, padding=1)

    def forward(self, x):
        skips = []
        for i, block in enumerate(self.enc):
            x = block(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, dec, skip in zip(self.ups, self.dec, reversed(skips[:-1])):
            x = dec(torch.cat((up(x), skip), 1))
        return self.out(x)
