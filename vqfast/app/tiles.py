"""Large images by tiles: overlapping crops at the image's own resolution, each resized to
the model's input and scored, the maps stitched at full resolution (overlaps averaged),
the image score the scorer's reduction of the stitched map. A defect smaller than one
token of the whole image resized to the model's input stays visible. Used by
``Detector.predict(tile=...)`` and ``vqfast score --tile``."""

from pathlib import Path
from typing import List, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqfast.data.transforms import open_image
from vqfast.scorers import reduce_map


def to_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(C, H, W) with ``channels``: RGB -> luminance with PIL's weights, grey -> RGB."""
    if x.shape[0] == channels:
        return x
    if x.shape[0] == 3:
        return (x * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0, keepdim=True)
    return x.expand(3, -1, -1)


def resize(x: torch.Tensor, size, channels: int) -> torch.Tensor:
    """(C, H, W) float -> the model's input (channels, *size): bilinear with antialiasing."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    return F.interpolate(to_channels(x, channels)[None], size=size, mode="bilinear", antialias=True,
                         align_corners=False)[0]


def full_image(x, channels: int) -> torch.Tensor:
    """A path, PIL image, (H, W[, C]) array or (C, H, W) tensor -> (channels, H, W) float
    in [0, 1] at its own resolution."""
    if isinstance(x, (str, Path)):
        x = open_image(x, "RGB" if channels == 3 else "L")
    if isinstance(x, Image.Image):
        x = np.asarray(x.convert("RGB" if channels == 3 else "L"))
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32) / (255.0 if x.dtype == np.uint8 else 1.0))
        x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
    return to_channels(x.float(), channels)


def starts(size: int, tile: int, stride: int) -> List[int]:
    """Tile offsets every ``stride`` pixels, the last one flush with the border."""
    out = list(range(0, size - tile + 1, stride))
    return out if out[-1] == size - tile else out + [size - tile]


@torch.no_grad()
def score_by_tiles(scorer, image: torch.Tensor, tile: int, stride: int, size, device,
                   batch_size: int = 16) -> Tuple[float, np.ndarray, int]:
    """image (C, H, W) at full resolution -> (score, map (H, W) float32, tiles). Memory:
    ``batch_size`` model-sized tiles and the full-resolution map."""
    channels, h, w = image.shape
    if tile < 1 or stride < 1 or tile > min(h, w):
        raise ValueError(f"tile must be in [1, {min(h, w)}] (the image is {h} x {w}) and stride >= 1, got "
                         f"tile {tile}, stride {stride}")
    corners = [(y, x) for y in starts(h, tile, stride) for x in starts(w, tile, stride)]
    total, count = torch.zeros(h, w), torch.zeros(h, w)
    for b in range(0, len(corners), batch_size):
        part = corners[b:b + batch_size]
        crops = torch.stack([resize(image[:, y:y + tile, x:x + tile], size, channels) for y, x in part])
        maps = scorer.score(crops.to(device)).anomaly_map.float().cpu()
        maps = F.interpolate(maps[:, None], size=(tile, tile), mode="bilinear", align_corners=False)[:, 0]
        for (y, x), m in zip(part, maps):
            total[y:y + tile, x:x + tile] += m
            count[y:y + tile, x:x + tile] += 1
    stitched = total / count
    score = float(reduce_map(stitched[None], getattr(scorer, "reduction", "max"), getattr(scorer, "topk", 0.01))[0])
    return score, stitched.numpy(), len(corners)
