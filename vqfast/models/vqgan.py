"""The VQ model of the density/restoration paper's tables 1-2, trained as a VQ-VAE or
as a VQ-GAN (eq. 15).

Encoder (table 1): conv, then per level ``num_res_blocks`` residual blocks (GroupNorm,
Swish, 3x3 convs) with non-local attention at the resolutions in ``attn_resolutions``
and a stride-2 downsample between levels; a middle residual / attention / residual
stack; GroupNorm, Swish, conv to ``z_channels``.

Decoder, ``decoder_layout="paper"`` (table 2, the default): conv, the middle stack,
then ``num_res_blocks + 1`` residual blocks per level from the deepest, each level's
output channels ch * ch_mult[level]; the deepest level stays at the latent resolution
and every other level ends in a nearest-neighbour upsample, so two levels run at the
latent resolution (8 x 8), each of their residual blocks followed by a non-local block:
(Res + NonLocal) x 3 at 8x8x256, (Res + NonLocal) x 3 + Upsample -> 16x16x128, then
Res x 3 + Upsample to 32x32x128, 64x64x64 and 128x128x64. ``"taming"``: the taming
transformers layout (each level at its own resolution, attention at
``attn_resolutions``, no upsample after the last level), which table 2 departs from.
The defaults (channels 64-64-128-128-256, 128 x 128 input, 8 x 8 latents, 256-d codes,
128 codes) are the paper's best.

VQ-GAN loss (eq. 15): L_r + L_p + L_vq + beta L_c + lambda L_GAN, with L_r the MSE (eq.
6), L_p the LPIPS distance, L_GAN eq. 13's log-loss GAN of a PatchGAN discriminator
(``disc_loss="vanilla"``, default; the generator minimises the non-saturating
-log D(x_hat), the usual reading of the min-max game; ``"hinge"`` is taming's choice),
and lambda = ||grad_GL(L_r + L_p)|| / (||grad_GL L_GAN|| + 1e-6) on the decoder's last
layer G_L (eq. 16), from ``disc_start`` steps on.

Codebook: EMA updates with dead-code restarts by default, which departs from the
paper's L_vq gradient codebook (``ema=False``): on Magnetic Tile the gradient codebook
collapsed to a perplexity of 5-8 of 128 codes (benchmarks/RESULTS.md).
"""

import math
from dataclasses import asdict, dataclass
from typing import Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.base import VQAutoencoder
from vqfast.models.lpips import LPIPS
from vqfast.models.vq import VectorQuantizer


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, c), c, eps=1e-6)


class ResnetBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, dropout: float = 0.0):
        super().__init__()
        self.body = nn.Sequential(_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1), _norm(c_out), nn.SiLU(),
                                  nn.Dropout(dropout), nn.Conv2d(c_out, c_out, 3, padding=1))
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        return self.skip(x) + self.body(x)


class NonLocalBlock(nn.Module):
    """Single-head self-attention over all positions, with a residual connection."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _norm(c)
        self.qkv = nn.Conv2d(c, 3 * c, 1)
        self.proj = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, c, h * w).transpose(-1, -2).unbind(1)
        out = F.scaled_dot_product_attention(q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1)).squeeze(1)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, stride=2)

    def forward(self, x):
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # taming's asymmetric padding: exact halving


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


@dataclass
class VQGANConfig:
    in_channels: int = 3
    ch: int = 64
    ch_mult: Tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: Tuple[int, ...] = (16,)
    resolution: int = 128  # input size the attention resolutions refer to
    z_channels: int = 256
    num_codes: int = 128
    beta: float = 0.25
    ema: bool = True  # EMA codebook with dead-code restarts; False: the paper's L_vq gradient codebook
    dead_threshold: float = 1.0  # EMA only: restart codes used by fewer vectors per batch (smoothed)
    dead_fraction: float = 0.25  # EMA only: ... or by less than this fraction of the mean use per code
    code_dim: Optional[int] = None  # factorised lookup in this many dimensions (None: z_channels, the paper)
    normalize_codes: bool = False  # l2-normalised (cosine) lookup
    dropout: float = 0.0
    decoder_layout: str = "paper"  # table 2; "taming": taming transformers' decoder
    # adversarial=False with perceptual_weight=0 trains the model as a VQ-VAE (L_r + L_vq + beta L_c)
    adversarial: bool = True
    perceptual_weight: float = 1.0
    disc_weight: float = 1.0  # multiplies the adaptive lambda
    disc_start: int = 10000  # generator steps before the GAN terms switch on
    disc_loss: str = "vanilla"  # eq. 13's log-loss GAN; or "hinge" (taming)
    disc_layers: int = 3
    disc_ch: int = 64
    backend: str = "auto"

    def __post_init__(self):
        self.ch_mult, self.attn_resolutions = tuple(self.ch_mult), tuple(self.attn_resolutions)
        if self.disc_loss not in ("hinge", "vanilla"):
            raise ValueError(f"disc_loss must be 'hinge' or 'vanilla', got {self.disc_loss!r}")
        if self.decoder_layout not in ("paper", "taming"):
            raise ValueError(f"decoder_layout must be 'paper' or 'taming', got {self.decoder_layout!r}")


def _encoder(cfg: VQGANConfig) -> nn.Sequential:
    layers, c, res = [nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)], cfg.ch, cfg.resolution
    for level, mult in enumerate(cfg.ch_mult):
        for _ in range(cfg.num_res_blocks):
            layers.append(ResnetBlock(c, cfg.ch * mult, cfg.dropout))
            c = cfg.ch * mult
            if res in cfg.attn_resolutions:
                layers.append(NonLocalBlock(c))
        if level != len(cfg.ch_mult) - 1:
            layers.append(Downsample(c))
            res //= 2
    layers += [ResnetBlock(c, c, cfg.dropout), NonLocalBlock(c), ResnetBlock(c, c, cfg.dropout),
               _norm(c), nn.SiLU(), nn.Conv2d(c, cfg.z_channels, 3, padding=1)]
    return nn.Sequential(*layers)


def _decoder(cfg: VQGANConfig) -> nn.Sequential:
    c = cfg.ch * cfg.ch_mult[-1]
    latent = res = cfg.resolution // 2 ** (len(cfg.ch_mult) - 1)
    layers = [nn.Conv2d(cfg.z_channels, c, 3, padding=1), ResnetBlock(c, c, cfg.dropout), NonLocalBlock(c),
              ResnetBlock(c, c, cfg.dropout)]
    paper = cfg.decoder_layout == "paper"
    for level in reversed(range(len(cfg.ch_mult))):
        attend = res == latent if paper else res in cfg.attn_resolutions
        for _ in range(cfg.num_res_blocks + 1):
            layers.append(ResnetBlock(c, cfg.ch * cfg.ch_mult[level], cfg.dropout))
            c = cfg.ch * cfg.ch_mult[level]
            if attend:
                layers.append(NonLocalBlock(c))
        # Table 2 upsamples at the end of every level but the deepest; taming at the end of every level but the last.
        if (paper and level != len(cfg.ch_mult) - 1) or (not paper and level != 0):
            layers.append(Upsample(c))
            res *= 2
    layers += [_norm(c), nn.SiLU(), nn.Conv2d(c, cfg.in_channels, 3, padding=1)]
    return nn.Sequential(*layers)


class PatchDiscriminator(nn.Module):
    """PatchGAN (Isola et al.): stride-2 4x4 convs with BatchNorm and LeakyReLU(0.2),
    one logit per overlapping patch."""

    def __init__(self, in_channels: int = 3, ch: int = 64, n_layers: int = 3):
        super().__init__()
        layers = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)]
        c = ch
        for i in range(1, n_layers + 1):
            c_out = ch * min(2**i, 8)
            stride = 2 if i < n_layers else 1
            layers += [nn.Conv2d(c, c_out, 4, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.LeakyReLU(0.2)]
            c = c_out
        layers.append(nn.Conv2d(c, 1, 4, 1, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor) -> torch.Tensor:
    """Eq. 16: ||d nll / d G_L|| / (||d g_loss / d G_L|| + 1e-6), clamped to [0, 1e4], detached."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_gan.norm() + 1e-6)).clamp(0.0, 1e4).detach()


class VQGAN(VQAutoencoder):
    def __init__(self, config: Optional[VQGANConfig] = None, lpips=None):
        """lpips: an LPIPS module to share between models; built (with its weight-file
        lookup and warning) when the config needs one."""
        super().__init__()
        self.config = cfg = config or VQGANConfig()
        if cfg.resolution % 2 ** (len(cfg.ch_mult) - 1):
            raise ValueError(f"resolution {cfg.resolution} must be divisible by {2 ** (len(cfg.ch_mult) - 1)}")
        code_dim = cfg.code_dim or cfg.z_channels
        self.encoder = nn.Sequential(_encoder(cfg), nn.Conv2d(cfg.z_channels, code_dim, 1))
        self.vq = VectorQuantizer(cfg.num_codes, code_dim, cfg.beta, cfg.ema, dead_threshold=cfg.dead_threshold,
                                  dead_fraction=cfg.dead_fraction, normalize=cfg.normalize_codes, backend=cfg.backend)
        self.decoder = nn.Sequential(nn.Conv2d(code_dim, cfg.z_channels, 1), _decoder(cfg))
        self.discriminator = PatchDiscriminator(cfg.in_channels, cfg.disc_ch, cfg.disc_layers) if cfg.adversarial else None
        if cfg.perceptual_weight > 0 and lpips is None:
            lpips = LPIPS()
        # Kept out of the state dict: frozen, and rebuilt from its weight files.
        self.__dict__["lpips"] = lpips
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.config.ch_mult) - 1)

    def _apply(self, fn, recurse=True):
        if self.lpips is not None:
            self.lpips._apply(fn, recurse)
        return super()._apply(fn, recurse)

    def discriminator_parameters(self) -> Iterator[nn.Parameter]:
        return iter(()) if self.discriminator is None else self.discriminator.parameters()

    @property
    def last_layer(self) -> torch.Tensor:
        return self.decoder[-1][-1].weight

    def training_loss(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Generator objective in "loss"; with the GAN on, the discriminator's in "disc_loss"."""
        cfg = self.config
        out = self.forward(x)
        recon = F.mse_loss(out.reconstruction, x)
        nll = recon
        terms = {"recon": recon}
        if cfg.perceptual_weight > 0:
            terms["perceptual"] = self.lpips(x, out.reconstruction).mean()
            nll = nll + cfg.perceptual_weight * terms["perceptual"]
        total = nll + out.vq.loss
        gan_on = self.discriminator is not None and int(self.step) >= cfg.disc_start
        if gan_on:
            logits = self.discriminator(out.reconstruction)
            g_loss = F.softplus(-logits).mean() if cfg.disc_loss == "vanilla" else -logits.mean()
            lam = adaptive_weight(nll, g_loss, self.last_layer) if self.training else torch.zeros(())
            total = total + cfg.disc_weight * lam * g_loss
            real, fake = self.discriminator(x.detach()), self.discriminator(out.reconstruction.detach())
            if cfg.disc_loss == "hinge":
                d_loss = 0.5 * (F.relu(1 - real).mean() + F.relu(1 + fake).mean())
            else:
                d_loss = 0.5 * (F.softplus(-real).mean() + F.softplus(fake).mean())
            terms.update(g_loss=g_loss, adaptive_weight=lam, disc_loss=d_loss)
        if self.training:
            self.step += 1
        terms.update(loss=total, commitment=out.vq.commitment_loss, perplexity=out.vq.perplexity, usage=out.vq.usage)
        return terms

    def config_dict(self) -> dict:
        return {"model": "VQGAN", **asdict(self.config)}
