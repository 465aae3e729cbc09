"""Training augmentations of the VQ-VAE + transformer paper (appendix A: "Gaussian noise,
contrast adjustment, intensity shifts, translations, rotations and scaling"), in torch.

Each item's draw is a pure function of (seed, epoch, item index): an epoch always sees
the same augmented data, whatever the order, batch size or resume point. The geometric
part is one affine warp (rotation, scaling, translation) by ``grid_sample`` with
reflected borders, applied to the mask too (nearest); then contrast, intensity shift
and Gaussian noise on the image only.
"""

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Augment:
    """Ranges (each draw uniform in [-r, r] unless stated): noise_std (std of the
    added Gaussian noise, drawn uniform in [0, noise_std]), contrast (factor 1 +/- r
    around the image mean), intensity (added offset), translate (fraction of the size),
    rotate (degrees), scale (factor 1 +/- r); seed. A range of 0 turns that part off."""

    noise_std: float = 0.02
    contrast: float = 0.1
    intensity: float = 0.05
    translate: float = 0.05
    rotate: float = 5.0
    scale: float = 0.05
    seed: int = 0

    def __call__(self, item: dict, key: int) -> dict:
        """A new item with ``image`` (C, H, W) (and ``mask`` (H, W), if present)
        augmented by the draw of ``key``."""
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + key) % 2**63)
        u = torch.rand(7, generator=gen, dtype=torch.float64) * 2 - 1  # one uniform per parameter
        image = item["image"]
        angle = math.radians(self.rotate * float(u[0]))
        factor = 1 + self.scale * float(u[1])
        tx, ty = 2 * self.translate * float(u[2]), 2 * self.translate * float(u[3])  # grid units: 2 = the size
        out = dict(item)
        if any((self.rotate, self.scale, self.translate)):
            cos, sin = math.cos(angle) / factor, math.sin(angle) / factor
            theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=image.dtype).unsqueeze(0)
            grid = F.affine_grid(theta, (1, *image.shape), align_corners=False)
            image = F.grid_sample(image[None], grid, mode="bilinear", padding_mode="reflection", align_corners=False)[0]
            if "mask" in item:
                mask = F.grid_sample(item["mask"][None, None].float(), grid, mode="nearest", padding_mode="zeros",
                                     align_corners=False)[0, 0]
                out["mask"] = mask > 0.5
        if self.contrast:
            mean = image.mean()
            image = (image - mean) * (1 + self.contrast * float(u[4])) + mean
        if self.intensity:
            image = image + self.intensity * float(u[5])
        if self.noise_std:
            noise_std = self.noise_std * (float(u[6]) + 1) / 2
            image = image + noise_std * torch.randn(image.shape, generator=gen, dtype=image.dtype)
        out["image"] = image
        return out


class EpochKeyed(torch.utils.data.Dataset):
    """A wrapper of ``dataset`` whose items depend on the epoch, which the Trainer sets
    with ``set_epoch`` before each one: draws keyed by (epoch, index) make an item the
    same whatever the batch, worker or order it is read in."""

    def __init__(self, dataset):
        self.dataset = dataset
        self.epoch: Optional[int] = 0

    def set_epoch(self, epoch: Optional[int]) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)


class AugmentedDataset(EpochKeyed):
    """Items of ``dataset`` through ``augment``, keyed by (epoch, index); ``epoch=None``
    (or ``augment=None``) serves the items unchanged, e.g. for validation."""

    def __init__(self, dataset, augment: Optional[Augment]):
        super().__init__(dataset)
        self.augment = augment

    def __getitem__(self, i: int) -> dict:
        item = self.dataset[i]
        if self.augment is None or self.epoch is None:
            return item
        return self.augment(item, self.epoch * len(self.dataset) + i)
