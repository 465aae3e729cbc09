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

from dataclasses import asdict
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.dsr.anomalies import feature_anomalies
from vqfast.models.dsr.loss import focal_loss
from vqfast.models.dsr.networks import (DSRConfig, EncoderHi, EncoderLo, GeneralDecoder, ObjectDecoder,
                                        SubspaceRestriction, UNet)
from vqfast.models.dsr.weights import read_general
from vqfast.models.vq import VectorQuantizer
from vqfast.profiling import time_stages
from vqfast.reference.dsr_anomalies import pooled_mask, rank_bounds


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
        for module in (self.restrict_hi, self.restrict_lo, self.object_decoder, self.anomaly_module,
                       self.upsampling_module):
            module.apply(authors_init)
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
        averaged over square windows (the authors' rule), score_window wide at 256 x 256
        and scaled with the image (``score_window_for``)."""
        i_gen, i_spc, probs = self._masks(x)
        up = self.upsampling_module(torch.cat((i_spc, i_gen, probs), 1)).softmax(1)
        win = score_window_for(self.config.score_window, x.shape[-2:])
        score = F.avg_pool2d(probs[:, 1:], win, stride=1, padding=win // 2).amax(dim=(1, 2, 3))
        return up[:, 1], score

    def profile(self, x: torch.Tensor, repeats: int = 5):
        """Stage timings of predict(x) (vqfast.profiling)."""
        was = self.training
        self.eval()
        with torch.no_grad():
            e = self.encode(x)
            i_gen, i_spc, probs = self._masks(x)
            out = time_stages({"encode + quantise": lambda: self.encode(x),
                               "general decoder": lambda: self.decode_general(e["q_lo"], e["q_hi"]),
                               "object-specific decoder": lambda: self.decode_object(e["q_lo"], e["q_hi"]),
                               "anomaly module": lambda: self.anomaly_module(torch.cat((i_spc, i_gen), 1)),
                               "upsampling module": lambda: self.upsampling_module(torch.cat((i_spc, i_gen, probs), 1))},
                              x.device, repeats)
        self.train(was)
        return out

    @property
    def general_origin(self) -> str:
        """Where the discrete model and general decoder come from, in words."""
        if int(self.general_source) == 1:
            return "the authors' pretrained discrete model (load_general)"
        return "trained here on the user's images (stage 1)"

    def config_dict(self) -> dict:
        return {"model": "DSR", **asdict(self.config)}

    def load_general(self, path) -> "DSR":
        """Reads the authors' pretrained discrete model (their ImageNet file, a plain
        state dict, e.g. ``vq_model_pretrained_128_4096.pckl``) with
        ``torch.load(weights_only=True)`` and maps their names onto ours. Stage 1 is then
        not needed; ``general_source`` records it (1)."""
        mapped = read_general(path, self.state_dict())
        with torch.no_grad():
            own = self.state_dict()
            for k, v in mapped.items():
                own[k].copy_(v)
            self.vq_lo.initialized.fill_(True)
            self.vq_hi.initialized.fill_(True)
            self.general_source.fill_(1)
        return self


def score_window_for(window: int, size) -> int:
    """The authors' score window (``window`` at 256 x 256 images) for images of ``size``
    (H, W): scaled with the shorter side, odd, at least 1 (a defect covers the same share
    of the window at any input size)."""
    scaled = max(1, round(window * min(size) / 256))
    return scaled if scaled % 2 else scaled + 1


def authors_init(module: nn.Module) -> None:
    """The authors' initialisation of the modules DSR trains from scratch in stages 2 and 3
    (their ``weights_init``): convolution weights ~ N(0, 0.02), norm scales ~ N(1, 0.02)
    with zero shifts; other layers keep torch's defaults."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, (nn.BatchNorm2d, nn.InstanceNorm2d)) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)
