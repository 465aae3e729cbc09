"""The VQ-VAE of the Performer paper (appendix A) and its "jukebox" loss.

Appendix A: "an encoder consisting of three down-sampling layers that contain a
convolution with stride 2 and kernel size 4 followed by a ReLU activation and 3 residual
blocks" and "similar to the encoder, the decoder has 3 layers of 3 residual blocks,
each followed by a transposed convolutional layer". The reading that fits both
sentences: each of the three encoder stages is a stride-2 4x4 conv, ReLU and 3 residual
blocks (3x3 conv, ReLU, 1x1 conv, ReLU, added to the input), then a 1x1 projection to
the code dimension; the decoder is a 1x1 projection, then three stages of 3 residual
blocks each followed by a stride-2 4x4 transposed convolution (ReLU between stages),
with dropout 0.05 before the last one. Codebook 256 x 32, beta = 0.25, EMA updates by
default. The paper trains with Adam, lr 1e-4, exponential decay 0.9999
(``vqfast.methods.vq.paper_train_config()``); its augmentations are not here.
"""

from dataclasses import asdict, dataclass
from typing import Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vqfast.models.base import VQAutoencoder
from vqfast.models.vq import VectorQuantizer


@dataclass
class VQVAEConfig:
    in_channels: int = 3
    hidden: int = 128
    res_blocks: int = 3  # per encoder and per decoder stage
    downsamples: int = 3
    num_codes: int = 256
    code_dim: int = 32
    beta: float = 0.25
    ema: bool = True
    ema_decay: float = 0.99
    dropout: float = 0.05
    spectral_weight: float = 1.0
    spectral: str = "stft"  # "stft": windowed 2-D FFT magnitudes; "fft": whole-image FFT magnitude
    stft_window: int = 16
    backend: str = "auto"


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1), nn.ReLU(), nn.Conv2d(channels, channels, 1), nn.ReLU()
        )

    def forward(self, x):
        return x + self.body(x)


def spectral_loss(x: torch.Tensor, y: torch.Tensor, mode: str = "stft", window: int = 16) -> torch.Tensor:
    """Mean squared difference of Fourier magnitudes of x and y, (B, C, H, W).

    "stft": Hann-windowed 2-D FFTs of window x window patches at half-window hops;
    "fft": the magnitude of each whole image's 2-D FFT (normalised by sqrt(H W)).
    """
    if mode == "fft":
        return F.mse_loss(torch.fft.rfft2(x, norm="ortho").abs(), torch.fft.rfft2(y, norm="ortho").abs())
    if mode != "stft":
        raise ValueError(f"spectral mode must be 'stft' or 'fft', got {mode!r}")
    b, c, h, w = x.shape
    win = min(window, h, w)
    hop = max(1, win // 2)
    hann = torch.hann_window(win, periodic=False, device=x.device, dtype=x.dtype)
    hann2 = (hann[:, None] * hann[None, :]).reshape(1, 1, win, win, 1)

    def mags(t):
        patches = F.unfold(t, win, stride=hop).reshape(b, c, win, win, -1) * hann2
        return torch.fft.rfft2(patches, dim=(2, 3), norm="ortho").abs()

    return F.mse_loss(mags(x), mags(y))


class VQVAE(VQAutoencoder):
    def __init__(self, config: Optional[VQVAEConfig] = None):
        super().__init__()
        self.config = config = config or VQVAEConfig()
        c, h = config.in_channels, config.hidden
        enc = []
        for i in range(config.downsamples):
            enc += [nn.Conv2d(c if i == 0 else h, h, 4, stride=2, padding=1), nn.ReLU()]
            enc += [ResBlock(h) for _ in range(config.res_blocks)]
        enc += [nn.Conv2d(h, config.code_dim, 1)]
        self.encoder = nn.Sequential(*enc)
        self.vq = VectorQuantizer(config.num_codes, config.code_dim, config.beta, config.ema, config.ema_decay,
                                  backend=config.backend)
        dec = [nn.Conv2d(config.code_dim, h, 1)]
        for i in range(config.downsamples):
            last = i == config.downsamples - 1
            dec += [ResBlock(h) for _ in range(config.res_blocks)]
            if last:
                dec.append(nn.Dropout(config.dropout))
            dec.append(nn.ConvTranspose2d(h, c if last else h, 4, stride=2, padding=1))
            if not last:
                dec.append(nn.ReLU())
        self.decoder = nn.Sequential(*dec)

    @property
    def downsample_factor(self) -> int:
        return 2**self.config.downsamples

    def training_loss(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Jukebox loss: ||x - x_hat||^2 + w ||S(x) - S(x_hat)||^2 + beta L_c (+ L_vq
        without EMA). Returns the terms, "loss" being their total."""
        out = self.forward(x)
        recon = F.mse_loss(out.reconstruction, x)
        spec = spectral_loss(x, out.reconstruction, self.config.spectral, self.config.stft_window)
        total = recon + self.config.spectral_weight * spec + out.vq.loss
        return {"loss": total, "recon": recon, "spectral": spec, "commitment": out.vq.commitment_loss,
                "perplexity": out.vq.perplexity, "usage": out.vq.usage}

    def config_dict(self) -> dict:
        return {"model": "VQVAE", **asdict(self.config)}
