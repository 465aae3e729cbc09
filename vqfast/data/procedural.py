"""A dataset generated in code: striped textures with synthetic defects and exact masks.

The embedded default for demos and tests: no files, and sample i depends only on
(seed, i). Normal images are gratings whose orientation, frequency and phase vary a
little; an anomalous image adds one defect: a "blob" (an ellipse of shifted
intensity), a "scratch" (a thin bright or dark segment) or a "patch" (a square whose
stripes run the other way). The mask is exactly the pixels the defect changed.
"""

import io
import math
from pathlib import Path
from typing import Tuple

import numpy as np
import torch
from PIL import Image

DEFECTS = ("blob", "scratch", "patch")
_TINT = (1.0, 0.85, 0.7)


def _grating(yy, xx, angle, freq, phase):
    return torch.sin(2 * math.pi * freq * (xx * math.cos(angle) + yy * math.sin(angle)) + phase)


def make_sample(seed: int, index: int, size: int, anomalous: bool, channels: int = 3) -> dict:
    """One item (the AnomalyDataset item format), generated from (seed, index) alone."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + index)

    def u(lo, hi):
        return lo + (hi - lo) * float(torch.rand((), generator=g))

    yy, xx = torch.meshgrid(torch.arange(size) / size, torch.arange(size) / size, indexing="ij")
    angle, freq, phase = math.radians(30 + u(-8, 8)), 6 + u(-0.5, 0.5), u(0, 2 * math.pi)
    img = 0.5 + 0.25 * _grating(yy, xx, angle, freq, phase) + 0.08 * _grating(yy, xx, angle + math.pi / 2, 3, u(0, 6.3))
    img = img + 0.02 * torch.randn(size, size, generator=g)
    mask = torch.zeros(size, size, dtype=torch.bool)
    defect = "good"
    if anomalous:
        defect = DEFECTS[int(torch.randint(len(DEFECTS), (), generator=g))]
        cy, cx = u(0.25, 0.75), u(0.25, 0.75)
        if defect == "blob":
            ry, rx, rot = u(0.06, 0.14), u(0.06, 0.14), u(0, math.pi)
            dy, dx = yy - cy, xx - cx
            a = (dx * math.cos(rot) + dy * math.sin(rot)) / rx
            b = (-dx * math.sin(rot) + dy * math.cos(rot)) / ry
            mask = a.square() + b.square() <= 1
            img = torch.where(mask, img + (0.4 if u(0, 1) < 0.5 else -0.4), img)
        elif defect == "scratch":
            length, rot, width = u(0.3, 0.6), u(0, math.pi), u(1.5, 2.5) / size
            p0 = torch.tensor([cy - 0.5 * length * math.sin(rot), cx - 0.5 * length * math.cos(rot)])
            d = torch.tensor([math.sin(rot), math.cos(rot)]) * length
            pts = torch.stack([yy, xx], -1)
            t = ((pts - p0) @ d / (d @ d)).clamp(0, 1)
            dist = (pts - (p0 + t[..., None] * d)).norm(dim=-1)
            mask = dist <= width
            img = torch.where(mask, torch.full_like(img, 0.97 if u(0, 1) < 0.5 else 0.03), img)
        else:
            half = u(0.08, 0.15)
            mask = ((yy - cy).abs() <= half) & ((xx - cx).abs() <= half)
            other = 0.5 + 0.25 * _grating(yy, xx, angle + math.pi / 2, freq, phase)
            img = torch.where(mask, other, img)
    img = img.clamp(0, 1)
    image = torch.stack([img * t for t in _TINT]) if channels == 3 else img.unsqueeze(0)
    return {"image": image.float(), "mask": mask, "label": int(anomalous), "defect": defect,
            "path": f"procedural://{seed}/{index}"}


class ProceduralDefects(torch.utils.data.Dataset):
    """``n_normal`` normal images followed by ``n_anomalous`` anomalous ones, each
    (channels, size, size) in [0, 1]; items as AnomalyDataset's."""

    def __init__(self, n_normal: int, n_anomalous: int = 0, size: int = 64, channels: int = 3, seed: int = 0):
        if n_normal < 0 or n_anomalous < 0 or n_normal + n_anomalous == 0:
            raise ValueError(f"need a non-empty dataset, got n_normal={n_normal}, n_anomalous={n_anomalous}")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.items = [make_sample(seed, i, size, i >= n_normal, channels) for i in range(n_normal + n_anomalous)]
        self.skipped = []

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]

    @property
    def labels(self) -> torch.Tensor:
        """(len,) int64."""
        return torch.tensor([it["label"] for it in self.items], dtype=torch.int64)

    has_masks = True


def procedural_splits(size: int = 64, channels: int = 3, seed: int = 0, n_train: int = 200,
                      n_test_normal: int = 40, n_test_anomalous: int = 40) -> Tuple[ProceduralDefects, ProceduralDefects]:
    """(train: normal only, test: normal then anomalous), from disjoint seeds."""
    train = ProceduralDefects(n_train, 0, size, channels, seed)
    test = ProceduralDefects(n_test_normal, n_test_anomalous, size, channels, seed + 1)
    return train, test


def write_image_folder(dataset, root) -> Path:
    """Writes a dataset's items as PNGs in the layout ``vqfast score --format folder``
    reads: ``good/`` for normal items, ``defect/`` for anomalous ones and their masks in
    ``ground_truth/defect/<stem>_mask.png`` (a flat folder when every item is normal).
    Returns ``root``; for turning the procedural data into files a user would have. A file
    that already holds the same PNG is left as it is, so runs on the folder (whose data
    identity includes modification times) still resume after it is written again."""
    def save(array, path: Path):
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        data = buffer.getvalue()
        if not path.is_file() or path.read_bytes() != data:
            path.write_bytes(data)

    root = Path(root)
    labels = [int(dataset[i]["label"]) for i in range(len(dataset))]
    flat = not any(labels)
    for i, label in enumerate(labels):
        item = dataset[i]
        folder = root if flat else root / ("defect" if label else "good")
        folder.mkdir(parents=True, exist_ok=True)
        pixels = (item["image"].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
        save(pixels[..., 0] if pixels.shape[2] == 1 else pixels, folder / f"{i:04d}.png")
        if label:
            (root / "ground_truth" / "defect").mkdir(parents=True, exist_ok=True)
            save(item["mask"].numpy().astype(np.uint8) * 255, root / "ground_truth" / "defect" / f"{i:04d}_mask.png")
    return root
