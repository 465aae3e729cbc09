"""Image and mask loading and transforms with PIL and torch (no torchvision).

Images become (C, H, W) float32 in [0, 1] (then optionally normalised); masks become
(H, W) bool, resized with nearest neighbour and binarised at > 127.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

Size = Union[int, Tuple[int, int]]


class DatasetError(ValueError):
    """A file or folder of a dataset is missing, unreadable or inconsistent; the
    message names it."""


def _hw(size: Optional[Size]) -> Optional[Tuple[int, int]]:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {size}")
    return int(h), int(w)


def open_image(path: Union[str, Path], mode: str) -> Image.Image:
    """Decodes the whole file now (so a truncated file fails here), converted to ``mode``."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit grey: PIL's convert would clip every value above 255 to white
                im = Image.fromarray((np.asarray(im, dtype=np.float64) * (255 / 65535)).round().clip(0, 255)
                                     .astype(np.uint8))
            return im.convert(mode)
    except FileNotFoundError as exc:
        raise DatasetError(f"{path}: file not found") from exc
    except Image.DecompressionBombError as exc:
        raise DatasetError(f"{path}: refused, too many pixels for an image ({exc})") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(f"{path}: unreadable or truncated image ({exc})") from exc


@dataclass(frozen=True)
class ImageTransform:
    """Resize, centre crop, channel conversion and normalisation.

    Args:
        size: (H, W) or an int for a square; None keeps the file's size.
        crop: centre crop (H, W) after resizing; None for none.
        channels: 3 (grey images are replicated to RGB) or 1 (colour images become
            luminance).
        mean, std: per-channel normalisation after scaling to [0, 1]; None for none.
    """

    size: Optional[Size] = None
    crop: Optional[Size] = None
    channels: int = 3
    mean: Optional[Sequence[float]] = None
    std: Optional[Sequence[float]] = None

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels}")
        if (self.mean is None) != (self.std is None):
            raise ValueError("mean and std must be given together")
        _hw(self.size), _hw(self.crop)

    def _geometry(self, im: Image.Image, resample) -> Image.Image:
        size = _hw(self.size)
        if size is not None and im.size != (size[1], size[0]):
            im = im.resize((size[1], size[0]), resample)
        crop = _hw(self.crop)
        if crop is not None:
            w, h = im.size
            if crop[0] > h or crop[1] > w:
                raise ValueError(f"crop {crop} is larger than the resized image ({h}, {w})")
            top, left = (h - crop[0]) // 2, (w - crop[1]) // 2
            im = im.crop((left, top, left + crop[1], top + crop[0]))
        return im

    def image(self, path: Union[str, Path]) -> torch.Tensor:
        """(C, H, W) float32."""
        return self.pil(open_image(path, "RGB" if self.channels == 3 else "L"))

    def pil(self, im: Image.Image) -> torch.Tensor:
        """(C, H, W) float32 of an image already open (converted to RGB or L here)."""
        im = self._geometry(im.convert("RGB" if self.channels == 3 else "L"), Image.BILINEAR)
        x = torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)
        x = x.permute(2, 0, 1) if x.dim() == 3 else x.unsqueeze(0)
        if self.mean is not None:
            mean = torch.tensor(self.mean, dtype=torch.float32).view(-1, 1, 1)
            std = torch.tensor(self.std, dtype=torch.float32).view(-1, 1, 1)
            x = (x - mean) / std
        return x.contiguous()

    def mask(self, path: Union[str, Path], image_path: Union[str, Path]) -> torch.Tensor:
        """(H, W) bool; the mask must have its image's size before any transform."""
        with Image.open(image_path) as im:
            image_size = im.size
        m = open_image(path, "L")
        if m.size != image_size:
            raise DatasetError(f"{path}: mask is {m.size[0]}x{m.size[1]} but its image {image_path} is "
                               f"{image_size[0]}x{image_size[1]} (width x height)")
        m = self._geometry(m, Image.NEAREST)
        return torch.from_numpy(np.asarray(m) > 127)
