"""What every VQ autoencoder shares: encode -> vq -> decode, token grids, profiling."""

import contextlib
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.vq import VQOutput
from vqfast.profiling import time_stages


PRECISIONS = ("float32", "bfloat16")


def check_precision(precision: str, name: str = "decode precision") -> None:
    if precision not in PRECISIONS:
        raise ValueError(f"{name} must be one of {', '.join(PRECISIONS)}, got {precision!r}")


def autocast_precision(device: torch.device, precision: str, name: str = "decode precision"):
    """A context running float32 models in ``precision``: nothing for "float32",
    bfloat16 autocast on ``device``'s type for "bfloat16"."""
    check_precision(precision, name)
    if precision == "float32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


CPU_CHUNK = 4


def cpu_conv(module: nn.Module, t: torch.Tensor, chunk: int = CPU_CHUNK) -> torch.Tensor:
    """module(t) for a convolution stack on t (B, C, H, W), run the way the CPU runs it
    fastest; the values are module(t)'s to float32 rounding.

    On the CPU t goes in channels-last (NHWC) memory, which oneDNN's convolutions run faster,
    and in inference (no autograd, the module in eval mode) ``chunk`` images per call: a
    whole batch's activations are buffers of tens of MB that the allocator takes fresh from
    the OS every call (100,000-400,000 page faults for 40 decodes), while a chunk's are
    reused. Measured on 2 cores of an AMD EPYC (benchmarks/cpu_convolutions.py, 128 x 128
    images): NHWC made the default VQ-VAE's encoder 1.13x, its decoder 1.18x and its
    training step 1.07-1.21x faster; chunks of 4 made 40 decodes 1.15x (float32) and
    1.29-1.32x (bfloat16) and encoding 16 images 1.30-1.42x faster than one call (the
    default VQ-GAN: 0.97-1.05x, 1.04-1.07x, 1.34-1.38x). GPUs: not measured, so the
    caller's layout and batch stay."""
    if t.device.type != "cpu" or t.dim() != 4:
        return module(t)
    t = t.contiguous(memory_format=torch.channels_last)
    if torch.is_grad_enabled() or module.training or torch.compiler.is_exporting() or t.shape[0] <= chunk:
        return module(t)
    return torch.cat([module(c) for c in t.split(chunk)])


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
        return cpu_conv(self.encoder, x)

    @torch.no_grad()
    def encode_indices(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) -> (B, H/f, W/f) int64 code indices (the priors' token grids)."""
        return self.vq(self.encode(x)).indices

    def decode(self, z_q: torch.Tensor) -> torch.Tensor:
        """(B, code_dim, h, w) quantised codes -> (B, C, H, W) image (channels-last memory
        on the CPU, see cpu_conv)."""
        return cpu_conv(self.decoder, z_q)

    def decode_indices(self, indices: torch.Tensor, precision: str = "float32") -> torch.Tensor:
        """(B, h, w) int64 token grid -> (B, C, H, W) image; precision as in decode_grids."""
        return self._decode_in(F.embedding(indices, self.vq.codes()).permute(0, 3, 1, 2), precision)

    @torch.no_grad()
    def decode_grids(self, indices: torch.Tensor, precision: str = "float32", distinct: bool = True) -> torch.Tensor:
        """(M, h, w) int64 token grids -> (M, C, H, W) images in the codebook's dtype, for
        scoring (no gradients; the decoder as it is set: eval for deterministic results).

        distinct: decode each distinct grid once and copy it to its rows (only in eval
            mode, where a grid always decodes the same). The restoration scorers' S
            restorations of an image coincide wherever nothing was resampled: an image
            with no unusual token gives S copies of its own grid.
        precision: "float32" (the model's own dtype), or "bfloat16": the decoder under
            autocast on the grids' device, so its convolutions run in bfloat16 where the
            hardware has it (AMX or AVX512-BF16 CPUs, CUDA GPUs). Decoded pixels then differ
            from float32's by about 1e-3 (benchmarks/RESULTS.md); token grids never change,
            only decoding does.
        """
        if distinct and indices.shape[0] > 1 and not self.training:
            unique, inverse = torch.unique(indices.flatten(1), dim=0, return_inverse=True)
            if unique.shape[0] < indices.shape[0]:
                return self.decode_grids(unique.view(-1, *indices.shape[1:]), precision, distinct=False)[inverse]
        return self.decode_indices(indices, precision)

    def forward(self, x: torch.Tensor) -> VQAutoencoderOutput:
        vq = self.vq(self.encode(x))
        return VQAutoencoderOutput(self.decode(vq.quantized), vq)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, precision: str = "float32") -> torch.Tensor:
        """(B, C, H, W) -> (B, C, H, W); precision of the decoding as in decode_grids
        (the encoding and lookup always run in the model's dtype: the tokens never change)."""
        check_precision(precision)
        vq = self.vq(self.encode(x))
        return self._decode_in(vq.quantized, precision)

    def _decode_in(self, z_q: torch.Tensor, precision: str) -> torch.Tensor:
        with autocast_precision(z_q.device, precision):
            return self.decode(z_q).to(z_q.dtype)

    def profile(self, x: torch.Tensor, repeats: int = 5, precision: str = "float32"):
        """Timings of encode / quantise / decode (in ``precision``, as decode_grids) on
        ``x`` (vqfast.profiling)."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            z = self.encode(x)
            q = self.vq(z)
            stages = {"encode": lambda: self.encode(x), "quantise": lambda: self.vq(z),
                      f"decode ({precision})": lambda: self._decode_in(q.quantized, precision)}
            timings = time_stages(stages, x.device, repeats)
        self.train(was_training)
        return timings
