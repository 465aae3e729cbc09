"""The vector-quantisation layer shared by every VQ model.

Codebook learning by gradient (VQ-VAE's L_vq) or by exponential moving averages
(van den Oord et al., appendix; the Performer paper's choice), with Laplace
smoothing of the counts and optional restart of dead codes; batch perplexity and
codebook usage are reported for logging.
"""

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.ops import quantize


class VQOutput(NamedTuple):
    quantized: torch.Tensor  # (B, D, H, W), straight-through
    indices: torch.Tensor  # (B, H, W) int64
    loss: torch.Tensor  # scalar to add to the model loss: beta * L_c (+ L_vq without EMA)
    commitment_loss: torch.Tensor
    perplexity: torch.Tensor  # exp(entropy) of this batch's code histogram
    usage: torch.Tensor  # fraction of codes used in this batch


class VectorQuantizer(nn.Module):
    """Args:
    num_codes, dim: codebook size K and code length D.
    beta: commitment weight.
    ema: learn the codebook with EMA updates (else with the gradient of L_vq).
    decay, eps: EMA decay and Laplace smoothing.
    dead_threshold: in training with EMA, codes whose smoothed count (in vectors
        per batch) falls below this are restarted at random encoder outputs of the
        batch, as in Jukebox (0 disables).
    dead_fraction: also restart codes whose smoothed count is below this fraction of
        the batch's mean count per code (vectors in the batch / K), a threshold that
        scales with the batch and the codebook (0 disables).
    normalize: l2-normalise encoder outputs and codes before the lookup (cosine
        nearest neighbour, as in ViT-VQGAN / improved VQ-GAN), which keeps far more of
        the codebook in use; the quantised vectors are then unit vectors.
    backend: nearest_code backend.

    The codebook is initialised from random encoder outputs of the first training
    batch: a random init far from the encoder's scale collapses onto one code.
    """

    def __init__(self, num_codes: int, dim: int, beta: float = 0.25, ema: bool = True, decay: float = 0.99,
                 eps: float = 1e-5, dead_threshold: float = 1.0, dead_fraction: float = 0.0, normalize: bool = False,
                 backend: str = "auto"):
        super().__init__()
        if num_codes < 1 or dim < 1:
            raise ValueError(f"num_codes and dim must be >= 1, got {num_codes}, {dim}")
        if not 0 < decay < 1:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        self.num_codes, self.dim, self.beta, self.ema = num_codes, dim, beta, ema
        self.decay, self.eps, self.dead_threshold, self.backend = decay, eps, dead_threshold, backend
        self.dead_fraction, self.normalize = dead_fraction, normalize
        init = torch.randn(num_codes, dim) / dim**0.5
        if ema:
            self.register_buffer("codebook", init)
            self.register_buffer("ema_count", torch.ones(num_codes))
            self.register_buffer("ema_sum", init.clone())
        else:
            self.codebook = nn.Parameter(init)
        self.register_buffer("initialized", torch.tensor(False))

    def codes(self) -> torch.Tensor:
        """(K, D): the vectors the lookup uses and the decoder receives (unit vectors with
        ``normalize``)."""
        return F.normalize(self.codebook, dim=1) if self.normalize else self.codebook

    @torch.no_grad()
    def _init_from(self, flat: torch.Tensor) -> None:
        pick = torch.randint(flat.shape[0], (self.num_codes,), device=flat.device)
        self.codebook.copy_(flat[pick])
        if self.ema:
            self.ema_sum.copy_(flat[pick])
            self.ema_count.fill_(1.0)
        self.initialized.fill_(True)

    def forward(self, z: torch.Tensor) -> VQOutput:
        """z: (B, D, H, W) encoder output."""
        if self.normalize:
            z = F.normalize(z, dim=1)
        if self.training and not bool(self.initialized):
            self._init_from(z.detach().movedim(1, -1).reshape(-1, self.dim).float())
        q = quantize(z, self.codes(), backend=self.backend)
        flat = q.indices.reshape(-1)  # counted by scatter_add, not bincount: a fixed-size graph for export
        counts = torch.zeros(self.num_codes, dtype=z.dtype, device=z.device).scatter_add_(0, flat, torch.ones_like(flat, dtype=z.dtype))
        probs = counts / counts.sum()
        perplexity = torch.exp(-(probs * torch.log(probs.clamp_min(1e-12))).sum())
        usage = (counts > 0).float().mean()
        if self.training and self.ema:
            self._ema_update(z.detach(), q.indices, counts)
        loss = self.beta * q.commitment_loss
        if not self.ema:
            loss = loss + q.codebook_loss
        return VQOutput(q.quantized, q.indices, loss, q.commitment_loss, perplexity, usage)

    @torch.no_grad()
    def _ema_update(self, z: torch.Tensor, indices: torch.Tensor, counts: torch.Tensor) -> None:
        flat = z.movedim(1, -1).reshape(-1, self.dim).float()
        sums = torch.zeros_like(self.ema_sum).index_add_(0, indices.reshape(-1), flat)
        self.ema_count.mul_(self.decay).add_(counts.float(), alpha=1 - self.decay)
        self.ema_sum.mul_(self.decay).add_(sums, alpha=1 - self.decay)
        n = self.ema_count.sum()
        smoothed = (self.ema_count + self.eps) / (n + self.num_codes * self.eps) * n
        self.codebook.copy_(self.ema_sum / smoothed.unsqueeze(1))
        threshold = max(self.dead_threshold, self.dead_fraction * flat.shape[0] / self.num_codes)
        if threshold > 0:
            dead = smoothed < threshold
            n_dead = int(dead.sum())
            if n_dead:
                pick = torch.randint(flat.shape[0], (n_dead,), device=flat.device)
                self.codebook[dead] = flat[pick]
                self.ema_sum[dead] = flat[pick]
                self.ema_count[dead] = 1.0
