"""What every VQ autoencoder shares: encode -> vq -> decode, token grids, profiling."""

from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.vq import VQOutput


class VQAutoencoderOutput(NamedTuple):
    reconstruction: torch.Tensor  # (B, C, H, W)
    vq: VQOutput


class VQAutoencoder(nn.Module):
    """Subclasses set ``self.encoder``, ``self.vq``, ``self.decoder``, ``self.config``
    (with ``in_channels``) and ``downsample_factor``, and define training_loss."""

    downsample_factor: int

    def _check(self, x: torch.Tensor) -> None:
        f = self.downsample_factor
        if x.dim() != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % f or x.shape[3] % f:
            raise ValueError(f"x must be (B, {self.config.in_channels}, H, W) with H and W multiples of {f}, "
                             f"got {tuple(x.shape)}")

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, code_dim, H/f, W/f) continuous encoder output."""
        self._check(x)
        return self.encoder(x)

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/f, W/f) int64 code indices (the priors' token grids)."""
        return self.vq(self.encode(x)).indices

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        return self.decoder(z_q)

    def decode_indices(self, indices: torch.Tensor) -> torch.Tensor:
        """(B, h, w) int64 token grid -> (B, C, H, W) image."""
        return self.decode(F.embedding(indices, self.vq.codes()).permute(0, 3, 1, 2))

    def forward(self, x: torch.Tensor) -> VQAutoencoderOutput:
        vq = self.vq(self.encode(x))
        return VQAutoencoderOutput(self.decode(vq.quantized), vq)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward(x).reconstruction

    def profile(self, x: torch.Tensor, repeats: int = 5):
        """Timings of encode / quantise / decode on ``x`` (vqfast.profiling)."""
        from vqfast.profiling import time_callable

        was_training = self.training
        self.eval()
        with torch.no_grad():
            z = self.encode(x)
            q = self.vq(z)
            stages = {"encode": lambda: self.encode(x), "quantise": lambda: self.vq(z),
                      "decode": lambda: self.decode(q.quantized)}
            timings = [time_callable(fn, name=name, device=x.device, repeats=repeats) for name, fn in stages.items()]
        self.train(was_training)
        return timings
