"""DSR, the dual subspace re-projection network (Zavrtnik, Kristan, Skocaj, ECCV 2022).

Parts, as the paper's section 3 and the authors' public code lay them out:

- Discrete latent model: an encoder to F_hi at 1/4 resolution (two stride-2 4x4 convs,
  a 3x3 conv, residual stack) and F_lo at 1/8 (one more stride-2 conv); F_lo is quantised
  with K_lo, upsampled (transposed conv), concatenated with the 1/4 encoder features and
  projected (1x1) to F_hi, quantised with K_hi. Two EMA codebooks (vqfast's
  VectorQuantizer and nearest_code).
- General object appearance decoder: [up(Q_lo), Q_hi] -> 3x3 conv, residual stack, two
  transposed-conv upsamplings -> I_gen.
- Object-specific appearance decoder: a subspace restriction module per resolution (conv
  blocks with InstanceNorm, two max-pools, bilinear-upsampling blocks, no skips: the
  authors' code; the paper's text says three) maps Q to the unquantised F~, projected
  with the frozen codebooks to Q~; [up(Q~_lo), Q~_hi] -> two down-sampling blocks and four
  transposed-conv upsamplings -> I_spc.
- Anomaly detection module: a U-Net with skips on [I_spc, I_gen] -> 2-class mask.
- Upsampling module: the same U-Net shape on [I_spc, I_gen, mask] refining it.

Training runs in three stages (``set_stage``; each a Trainer run): 1, the discrete model
and general decoder (VQ-VAE objective), unless ``load_general`` read the authors'
ImageNet weights; 2, feature-space anomalies (``feature_anomalies``) and the object
decoder, subspace modules and anomaly module; 3, the upsampling module on image-level
anomalies. ``vqfast.data.DSRAnomalies`` supplies the per-item masks and draws.

Departures from the authors' code, each said where it happens: the code draws of the
anomalies come from counter-based uniforms (pure in (seed, position)) and rank codes by
a stable order; dead-code restarts are on in the CPU-sized default config (off in
``paper_config``); input channels are configurable (the authors' model is RGB only).
"""

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.vq import VectorQuantizer
from vqfast.ops import code_at_rank
from vqfast.reference.dsr_anomalies import pooled_mask, rank_bounds
from vqfast.reference.restore_step import counter_uniform


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
    score_window: int = 21  # image score: max of the window-averaged mask
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


def focal_loss(probs: torch.Tensor, target: torch.Tensor, gamma: float = 2.0, smooth: float = 1e-5) -> torch.Tensor:
    """The authors' focal loss on probabilities: probs (B, C, H, W) (a softmax), target
    (B, H, W) or (B, 1, H, W) class indices. p_t = sum_c clamp(onehot_c, smooth / (C - 1),
    1 - smooth) p_c + smooth; loss = mean of -(1 - p_t)^gamma log p_t."""
    c = probs.shape[1]
    target = target.reshape(probs.shape[0], *probs.shape[2:]).long()
    onehot = F.one_hot(target, c).movedim(-1, 1).to(probs.dtype).clamp(smooth / (c - 1), 1.0 - smooth)
    pt = (onehot * probs).sum(1) + smooth
    return (-(1 - pt).pow(gamma) * pt.log()).mean()


def feature_anomalies(z: torch.Tensor, quantized: torch.Tensor, codebook: torch.Tensor, mask: torch.Tensor,
                      strength: torch.Tensor, seeds: torch.Tensor, skip_fraction: float = 0.05,
                      backend: str = "auto") -> torch.Tensor:
    """DSR's feature-space anomalies for a whole minibatch at once.

    Args:
        z: (B, D, h, w) unquantised features (the ranking is by distance from them,
            as in the authors' code).
        quantized: (B, D, h, w) their quantised vectors (replaced inside the mask).
        codebook: (K, D).
        mask: (B, 1, H, W) {0, 1} at image resolution, max-pooled to (h, w).
        strength: (B,) s in (0, 1]: codes are drawn among the k = clamp(int(s K) + 1, 1,
            K - 1) nearest, after the nearest int(skip_fraction K).
        seeds: (B,) int64: position p of image b draws with counter_uniform(seeds[b], p).

    Returns:
        (B, D, h, w): ``quantized`` with every vector inside the pooled mask replaced by
        a code drawn uniformly among its allowed ranks; equal to
        vqfast.reference.dsr_anomalies.feature_anomalies (the per-image loop).

    Only the masked positions are ranked (the others are discarded by the blend): on
    the CPU they are gathered first, and code_at_rank selects each one's code without a
    sort. On CUDA every position is ranked, so the call never waits on the host.
    """
    b, d, h, w = z.shape
    skip, k = rank_bounds(strength, codebook.shape[0], skip_fraction)
    m = pooled_mask(mask, (h, w)).view(b, h * w) > 0
    positions = torch.arange(h * w, device=z.device)
    u = counter_uniform(seeds.view(b, 1).expand(b, h * w), positions.view(1, -1).expand(b, h * w))
    rank = skip + (u * (k.view(b, 1) - skip).to(u.dtype)).floor().long()  # (B, h*w)
    flat = z.detach().permute(0, 2, 3, 1).reshape(b * h * w, d).to(codebook.dtype)
    out = quantized.permute(0, 2, 3, 1).reshape(b * h * w, d).clone()
    if z.is_cuda:
        codes = codebook[code_at_rank(flat, codebook, rank.view(-1), backend)]
        out = torch.where(m.view(-1, 1), codes.to(out.dtype), out)
    else:
        rows = m.view(-1).nonzero()[:, 0]
        out[rows] = codebook[code_at_rank(flat[rows], codebook, rank.view(-1)[rows], backend)].to(out.dtype)
    return out.view(b, h, w, d).permute(0, 3, 1, 2)


class DSR(nn.Module):
    """Input (B, C, H, W) with H and W multiples of 32 and at least 64 (the subspace
    module pools the 1/8 latents twice, then instance-normalises them). ``predict(x)`` -> (map (B, H, W), score (B,))."""

    STAGES = (1, 2, 3)
    # The Trainer's input_key per stage: the item fields training_loss reads (vqfast.data.DSRAnomalies).
    STAGE_INPUTS = {1: "image", 2: ("image", "mask", "strength", "use_both", "use_lo", "seed"), 3: ("image", "mask")}

    def __init__(self, config: Optional[DSRConfig] = None):
        super().__init__()
        self.config = cfg = config or DSRConfig()
        if cfg.num_codes < 2:
            raise ValueError(f"num_codes must be >= 2 (anomalies draw among K - 1 codes), got {cfg.num_codes}")
        if not 0 < cfg.strength_min <= 1 or not 0 <= cfg.skip_fraction < 1:
            raise ValueError(f"need 0 < strength_min <= 1 and 0 <= skip_fraction < 1, got {cfg.strength_min}, "
                             f"{cfg.skip_fraction}")
        rank_bounds(torch.tensor([cfg.strength_min]), cfg.num_codes, cfg.skip_fraction)  # some code left to draw

        def vq():
            return VectorQuantizer(cfg.num_codes, cfg.code_dim, beta=cfg.beta, ema=True, decay=cfg.ema_decay,
                                   dead_threshold=cfg.dead_threshold, backend=cfg.backend)

        # stage 1: the discrete latent model and general decoder
        self.encoder_hi, self.encoder_lo = EncoderHi(cfg), EncoderLo(cfg)
        self.pre_vq_lo = nn.Conv2d(cfg.hidden, cfg.code_dim, 1)
        self.pre_vq_hi = nn.Conv2d(cfg.hidden + cfg.code_dim, cfg.code_dim, 1)
        self.vq_lo, self.vq_hi = vq(), vq()
        self.upsample_lo = nn.ConvTranspose2d(cfg.code_dim, cfg.code_dim, 4, stride=2, padding=1)
        self.general_decoder = GeneralDecoder(cfg)
        # stage 2: the object-specific decoder and the anomaly detection module
        self.restrict_hi, self.restrict_lo = SubspaceRestriction(cfg.code_dim), SubspaceRestriction(cfg.code_dim)
        self.object_decoder = ObjectDecoder(cfg)
        self.anomaly_module = UNet(2 * cfg.in_channels, 2, cfg.unet_width)
        # stage 3
        self.upsampling_module = UNet(2 * cfg.in_channels + 2, 2, cfg.unet_width)
        self.register_buffer("general_source", torch.zeros((), dtype=torch.int64))  # 0 trained here, 1 authors' file
        self.stage = 1
        self.set_stage(1)

    # -- stages ---------------------------------------------------------------
    def stage_modules(self, stage: int):
        if stage == 1:
            return [self.encoder_hi, self.encoder_lo, self.pre_vq_lo, self.pre_vq_hi, self.vq_lo, self.vq_hi,
                    self.upsample_lo, self.general_decoder]
        if stage == 2:
            return [self.restrict_hi, self.restrict_lo, self.object_decoder, self.anomaly_module]
        if stage == 3:
            return [self.upsampling_module]
        raise ValueError(f"stage must be 1, 2 or 3, got {stage!r}")

    def set_stage(self, stage: int) -> "DSR":
        """Makes only ``stage``'s modules trainable (requires_grad) and keeps the rest in
        eval mode under train(), so frozen codebooks take no EMA update. Build the
        Trainer after this call: it optimises the parameters that require grad."""
        trainable = {id(m) for m in self.stage_modules(stage)}
        for module in (m for s in self.STAGES for m in self.stage_modules(s)):
            module.requires_grad_(id(module) in trainable)
        self.stage = stage
        return self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for s in self.STAGES:
                if s != self.stage:
                    for module in self.stage_modules(s):
                        module.eval()
        return self

    # -- the discrete latent model --------------------------------------------
    def _check(self, x: torch.Tensor) -> None:
        c = self.config.in_channels
        if (not torch.is_tensor(x) or x.dim() != 4 or x.shape[1] != c or x.shape[2] % 32 or x.shape[3] % 32
                or min(x.shape[2:]) < 64):
            got = tuple(x.shape) if torch.is_tensor(x) else type(x).__name__
            raise ValueError(f"x must be (B, {c}, H, W) with H and W multiples of 32 and at least 64 (DSR's 1/8 "
                             f"latents are pooled twice more and instance-normalised), got {got}")

    def encode(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """x -> enc (1/4 encoder features), z_lo, q_lo (B, D, H/8, W/8), z_hi, q_hi (B, D,
        H/4, W/4), the VQ outputs vq_lo / vq_hi (losses, perplexity)."""
        self._check(x)
        enc = self.encoder_hi(x)
        z_lo = self.pre_vq_lo(self.encoder_lo(enc))
        vq_lo = self.vq_lo(z_lo)
        z_hi = self.pre_vq_hi(torch.cat((enc, self.upsample_lo(vq_lo.quantized)), 1))
        vq_hi = self.vq_hi(z_hi)
        return {"enc": enc, "z_lo": z_lo, "q_lo": vq_lo.quantized, "z_hi": z_hi, "q_hi": vq_hi.quantized,
                "vq_lo": vq_lo, "vq_hi": vq_hi}

    def decode_general(self, q_lo: torch.Tensor, q_hi: torch.Tensor) -> torch.Tensor:
        return self.general_decoder(torch.cat((self.upsample_lo(q_lo), q_hi), 1))

    def decode_object(self, q_lo: torch.Tensor, q_hi: torch.Tensor):
        """Q -> (F~_lo, F~_hi, I_spc): restricted, re-projected on the frozen codebooks
        (straight-through, so the image loss trains the restriction modules), decoded."""
        f_lo, f_hi = self.restrict_lo(q_lo), self.restrict_hi(q_hi)
        qt_lo, qt_hi = self.vq_lo(f_lo).quantized, self.vq_hi(f_hi).quantized
        return f_lo, f_hi, self.object_decoder(torch.cat((self.upsample_lo(qt_lo), qt_hi), 1))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """I_gen: the general decoder's reconstruction (what stage 1 trains)."""
        e = self.encode(x)
        return self.decode_general(e["q_lo"], e["q_hi"])

    # -- stage 2's anomalies --------------------------------------------------
    def anomalous_latents(self, x: torch.Tensor, mask: torch.Tensor, strength: torch.Tensor, use_both: torch.Tensor,
                          use_lo: torch.Tensor, seeds: torch.Tensor) -> Dict[str, torch.Tensor]:
        """The authors' stage-2 latents. Per image: anomalies on both levels (lo drawn
        from F_lo, hi from the F_hi re-encoded over the anomalous lo), or only lo (hi kept
        clean), or only hi (drawn from the clean F_hi). mask (B, 1, H, W), strength (B, 2)
        (lo, hi), use_both and use_lo (B,) bool, seeds (B,) int64. Returns the clean
        q_lo / q_hi, the anomalous a_lo / a_hi, I_gen of the anomalous latents and the
        ground-truth mask (B, 1, H, W) at the resolution of the level that changed."""
        cfg = self.config
        e = self.encode(x)
        both, lo_only = use_both.view(-1, 1, 1, 1), (~use_both & use_lo).view(-1, 1, 1, 1)
        hi_only = ~both & ~lo_only
        codes_lo, codes_hi = self.vq_lo.codes(), self.vq_hi.codes()
        seeds = seeds.to(torch.int64)
        # Masks zeroed where an image takes no anomaly of that kind: those rows are never ranked.
        a_lo = feature_anomalies(e["z_lo"], e["q_lo"], codes_lo, mask * (both | lo_only), strength[:, 0], seeds * 3,
                                 cfg.skip_fraction, cfg.backend)
        z_hi_def = self.pre_vq_hi(torch.cat((e["enc"], self.upsample_lo(a_lo)), 1))
        q_hi_def = self.vq_hi(z_hi_def).quantized
        a_hi_both = feature_anomalies(z_hi_def, q_hi_def, codes_hi, mask * both, strength[:, 1], seeds * 3 + 1,
                                      cfg.skip_fraction, cfg.backend)
        a_hi_only = feature_anomalies(e["z_hi"], e["q_hi"], codes_hi, mask * hi_only, strength[:, 1], seeds * 3 + 2,
                                      cfg.skip_fraction, cfg.backend)
        a_lo = torch.where(hi_only, e["q_lo"], a_lo)
        a_hi = torch.where(both, a_hi_both, torch.where(lo_only, e["q_hi"], a_hi_only))
        size = x.shape[2:]
        m_lo = F.interpolate(pooled_mask(mask, e["q_lo"].shape[2:]), size=size, mode="nearest")
        m_hi = F.interpolate(pooled_mask(mask, e["q_hi"].shape[2:]), size=size, mode="nearest")
        truth = torch.where(hi_only, m_hi, m_lo)
        return {"q_lo": e["q_lo"], "q_hi": e["q_hi"], "a_lo": a_lo, "a_hi": a_hi,
                "i_gen": self.decode_general(a_lo, a_hi), "mask": truth}

    # -- losses ---------------------------------------------------------------
    def training_loss(self, batch) -> Dict[str, torch.Tensor]:
        """Stage 1: batch (B, C, H, W) images or a dict with "image". Stages 2 and 3: the
        dict of vqfast.data.DSRAnomalies (image, mask, strength, use_both, use_lo, seed)."""
        x = batch["image"] if isinstance(batch, dict) else batch
        cfg = self.config
        if self.stage == 1:
            e = self.encode(x)
            recon = F.mse_loss(self.decode_general(e["q_lo"], e["q_hi"]), x)
            total = recon + e["vq_lo"].loss + e["vq_hi"].loss
            return {"loss": total, "recon": recon, "perplexity_lo": e["vq_lo"].perplexity,
                    "perplexity_hi": e["vq_hi"].perplexity}
        if not isinstance(batch, dict):
            raise ValueError(f"stage {self.stage} trains on vqfast.data.DSRAnomalies items (a dict), got a tensor")
        if self.stage == 2:
            with torch.no_grad():
                lat = self.anomalous_latents(x, batch["mask"], batch["strength"], batch["use_both"].bool(),
                                             batch["use_lo"].bool(), batch["seed"])
            f_lo, f_hi, i_spc = self.decode_object(lat["a_lo"], lat["a_hi"])
            probs = self.anomaly_module(torch.cat((i_spc.detach(), lat["i_gen"]), 1)).softmax(1)
            feat_hi, feat_lo = F.mse_loss(f_hi, lat["q_hi"]), F.mse_loss(f_lo, lat["q_lo"])
            image = F.mse_loss(i_spc, x)
            focal = focal_loss(probs, lat["mask"], cfg.focal_gamma)
            total = feat_hi + feat_lo + cfg.image_weight * image + focal
            return {"loss": total, "feature_hi": feat_hi, "feature_lo": feat_lo, "image": image, "focal": focal}
        with torch.no_grad():
            i_gen, i_spc, probs = self._masks(x)
        up = self.upsampling_module(torch.cat((i_spc, i_gen, probs), 1)).softmax(1)
        focal = focal_loss(up, batch["mask"], cfg.focal_gamma)
        return {"loss": focal, "focal": focal}

    # -- inference ------------------------------------------------------------
    def _masks(self, x: torch.Tensor):
        e = self.encode(x)
        i_gen = self.decode_general(e["q_lo"], e["q_hi"])
        _, _, i_spc = self.decode_object(e["q_lo"], e["q_hi"])
        return i_gen, i_spc, self.anomaly_module(torch.cat((i_spc, i_gen), 1)).softmax(1)

    @torch.no_grad()
    def predict(self, x: torch.Tensor):
        """x (B, C, H, W) -> anomaly map (B, H, W) (the upsampling module's anomaly
        probability) and image score (B,): the maximum of the anomaly module's mask
        averaged over score_window x score_window windows (the authors' rule)."""
        i_gen, i_spc, probs = self._masks(x)
        up = self.upsampling_module(torch.cat((i_spc, i_gen, probs), 1)).softmax(1)
        win = self.config.score_window
        score = F.avg_pool2d(probs[:, 1:], win, stride=1, padding=win // 2).amax(dim=(1, 2, 3))
        return up[:, 1], score

    def profile(self, x: torch.Tensor, repeats: int = 5):
        """Stage timings of predict(x) (vqfast.profiling)."""
        from vqfast.profiling import time_callable

        was = self.training
        self.eval()
        with torch.no_grad():
            e = self.encode(x)
            i_gen, i_spc, probs = self._masks(x)
            dev = x.device
            out = [time_callable(lambda: self.encode(x), name="encode + quantise", device=dev, repeats=repeats),
                   time_callable(lambda: self.decode_general(e["q_lo"], e["q_hi"]), name="general decoder", device=dev,
                                 repeats=repeats),
                   time_callable(lambda: self.decode_object(e["q_lo"], e["q_hi"]), name="object-specific decoder",
                                 device=dev, repeats=repeats),
                   time_callable(lambda: self.anomaly_module(torch.cat((i_spc, i_gen), 1)), name="anomaly module",
                                 device=dev, repeats=repeats),
                   time_callable(lambda: self.upsampling_module(torch.cat((i_spc, i_gen, probs), 1)),
                                 name="upsampling module", device=dev, repeats=repeats)]
        self.train(was)
        return out

    # -- weights --------------------------------------------------------------
    def load_general(self, path) -> "DSR":
        """Reads the authors' pretrained discrete model (their ImageNet file, a plain
        state dict, e.g. ``vq_model_pretrained_128_4096.pckl``) with
        ``torch.load(weights_only=True)`` and maps their names onto ours. Stage 1 is then
        not needed; ``general_source`` records it (1)."""
        path = Path(path)
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as exc:  # a pickle with code in it, or no torch file at all
            raise ValueError(f"{path}: not a plain state dict torch.load(weights_only=True) can read ({exc})") from exc
        if not isinstance(state, dict):
            raise ValueError(f"{path}: holds a {type(state).__name__}, not a state dict")
        mapped = {authors_key_to_ours(k): v for k, v in state.items()}
        mine = {k: v for k, v in self.state_dict().items() if k.split(".")[0] in GENERAL_PARTS}
        missing = sorted(set(mine) - set(mapped) - {"vq_lo.initialized", "vq_hi.initialized"})
        extra = sorted(set(mapped) - set(mine))
        if missing or extra:
            raise ValueError(f"{path}: not the authors' discrete model for this config (missing {missing[:4]}, "
                             f"unexpected {extra[:4]})")
        for k, v in mapped.items():
            if mine[k].shape != v.shape:
                raise ValueError(f"{path}: {k} has shape {tuple(v.shape)}, this config needs {tuple(mine[k].shape)} "
                                 "(use dsr.paper_config())")
        with torch.no_grad():
            own = self.state_dict()
            for k, v in mapped.items():
                own[k].copy_(v)
            self.vq_lo.initialized.fill_(True)
            self.vq_hi.initialized.fill_(True)
            self.general_source.fill_(1)
        return self

    @property
    def general_origin(self) -> str:
        """Where the discrete model and general decoder come from, in words."""
        if int(self.general_source) == 1:
            return "the authors' pretrained discrete model (load_general)"
        return "trained here on the user's images (stage 1)"

    def config_dict(self) -> dict:
        return {"model": "DSR", **asdict(self.config)}


GENERAL_PARTS = ("encoder_hi", "encoder_lo", "pre_vq_lo", "pre_vq_hi", "vq_lo", "vq_hi", "upsample_lo",
                 "general_decoder")
# The authors' module names (DiscreteLatentModel) -> ours; top = lo, bot = hi.
_PREFIXES = (("_encoder_b.", "encoder_hi."), ("_encoder_t.", "encoder_lo."), ("_pre_vq_conv_top.", "pre_vq_lo."),
             ("_pre_vq_conv_bot.", "pre_vq_hi."), ("_vq_vae_top.", "vq_lo."), ("_vq_vae_bot.", "vq_hi."),
             ("upsample_t.", "upsample_lo."), ("_decoder_b.", "general_decoder."))
_PARTS = (("_residual_stack._layers.", "res.layers."), ("._block.", ".block."), ("_conv_trans_1", "up1"),
          ("_conv_trans_2", "up2"), ("_conv_1", "conv1"), ("_conv_2", "conv2"), ("_conv_3", "conv3"),
          ("_embedding.weight", "codebook"), ("_ema_cluster_size", "ema_count"), ("_ema_w", "ema_sum"))


def authors_key_to_ours(key: str) -> str:
    """One state-dict key of the authors' DiscreteLatentModel -> this model's name."""
    for theirs, ours in _PREFIXES:
        if key.startswith(theirs):
            key = ours + key[len(theirs):]
            break
    for theirs, ours in _PARTS:
        key = key.replace(theirs, ours)
    if key.startswith("general_decoder.conv1"):  # the general decoder's first conv is "conv" here
        key = "general_decoder.conv" + key[len("general_decoder.conv1"):]
    return key
