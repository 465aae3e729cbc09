"""Simulated anomalies for training (DSR): Perlin-noise masks, and per-item draws.

Every draw comes from a torch.Generator seeded by (seed, epoch, item index), so an item
is the same whatever the batch, the worker or the order it is read in, and a resumed
run sees the data the uninterrupted one saw.
"""

import math

import torch
import torch.nn.functional as F

from vqfast.data.augment import EpochKeyed


def perlin_noise(height: int, width: int, res_y: int, res_x: int, generator: torch.Generator) -> torch.Tensor:
    """2-D gradient (Perlin) noise, (height, width) float32 in about [-0.7, 0.7]: random
    unit gradients on a (res_y + 1, res_x + 1) lattice, the quintic fade
    6t^5 - 15t^4 + 10t^3 between them. Sizes that res does not divide are generated on
    the next multiple and cropped."""
    hh, ww = math.ceil(height / res_y) * res_y, math.ceil(width / res_x) * res_x
    angles = 2 * math.pi * torch.rand(res_y + 1, res_x + 1, generator=generator)
    grad = torch.stack((angles.cos(), angles.sin()), -1)
    ys = torch.arange(hh, dtype=torch.float32) * res_y / hh
    xs = torch.arange(ww, dtype=torch.float32) * res_x / ww
    yi, xi = ys.floor().long(), xs.floor().long()
    fy, fx = (ys - yi)[:, None], (xs - xi)[None, :]

    def corner(dy: int, dx: int) -> torch.Tensor:
        g = grad[(yi + dy)[:, None], (xi + dx)[None, :]]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t):
        return t * t * t * (t * (t * 6 - 15) + 10)

    ty, tx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - tx) + corner(0, 1) * tx
    bottom = corner(1, 0) * (1 - tx) + corner(1, 1) * tx
    return (math.sqrt(2) * (top * (1 - ty) + bottom * ty))[:height, :width]


def perlin_mask(height: int, width: int, generator: torch.Generator, max_log_scale: int = 6,
                threshold: float = 0.5, max_degrees: float = 90.0) -> torch.Tensor:
    """DSR's anomaly region: Perlin noise at scale 2^U{0..max_log_scale-1} per axis,
    rotated by U(-max_degrees, max_degrees), thresholded -> (1, height, width) {0, 1}
    float32."""
    sy, sx = (2 ** int(torch.randint(0, max_log_scale, (1,), generator=generator)) for _ in range(2))
    noise = perlin_noise(height, width, sy, sx, generator)
    angle = math.radians(float(torch.empty(()).uniform_(-max_degrees, max_degrees, generator=generator)))
    c, s = math.cos(angle), math.sin(angle)
    theta = torch.tensor([[c, -s * width / height, 0.0], [s * height / width, c, 0.0]]).unsqueeze(0)
    grid = F.affine_grid(theta, (1, 1, height, width), align_corners=False)
    rotated = F.grid_sample(noise[None, None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    return (rotated[0] > threshold).float()


class DSRAnomalies(EpochKeyed):
    """The items of ``dataset`` with what DSR's stage 2 or 3 trains on.

    stage 2 (feature-space anomalies, drawn by the model): "mask" (1, H, W), all zero
        for a clean item (probability 1 - p_anomalous); "strength" (2,) float32, s ~
        U[strength_min, 1] for the lo and hi levels; "use_both", "use_lo" (bool coin
        flips: both levels, else lo only or hi only); "seed" int64 for the code draws.
    stage 3 (image-level anomalies): "image" with a random colour c blended into the
        Perlin region, x' = (1 - m) x + m (beta x + (1 - beta) c), beta ~ U[0, 0.8];
        "mask" the region.
    rotate: the probability that the image is first rotated by an angle ~ U(-90, 90)
        degrees about its centre (zeros outside, as the authors' imgaug Affine); default
        the authors': 0.4 in stage 2, 0.3 in stage 3.

    Draws are keyed by (seed, epoch, index) (vqfast.data.augment.EpochKeyed).
    """

    def __init__(self, dataset, stage: int, seed: int = 0, p_anomalous: float = 0.5, strength_min: float = 0.2,
                 max_beta: float = 0.8, rotate=None):
        if stage not in (2, 3):
            raise ValueError(f"stage must be 2 or 3 (stage 1 trains on the plain images), got {stage!r}")
        if not 0 <= p_anomalous <= 1:
            raise ValueError(f"p_anomalous must be in [0, 1], got {p_anomalous}")
        super().__init__(dataset)
        self.stage, self.seed = stage, seed
        self.p_anomalous, self.strength_min, self.max_beta = p_anomalous, strength_min, max_beta
        self.rotate = (0.4 if stage == 2 else 0.3) if rotate is None else float(rotate)
        if not 0 <= self.rotate <= 1:
            raise ValueError(f"rotate must be a probability in [0, 1], got {rotate}")

    def __getitem__(self, i: int) -> dict:
        item = dict(self.dataset[i])
        key = ((self.seed * 1_000_003 + (self.epoch or 0)) * 1_000_003 + i) % 2**63
        g = torch.Generator().manual_seed(key)
        x = item["image"]
        _, h, w = x.shape
        anomalous = float(torch.rand((), generator=g)) < self.p_anomalous
        mask = perlin_mask(h, w, g) if anomalous else torch.zeros(1, h, w)
        if self.stage == 2:
            item["strength"] = self.strength_min + (1 - self.strength_min) * torch.rand(2, generator=g)
            flips = torch.rand(2, generator=g) < 0.5
            item["use_both"], item["use_lo"] = flips[0], flips[1]
            item["seed"] = torch.randint(0, 2**40, (), generator=g)
        else:
            colour = torch.rand(x.shape[0], 1, 1, generator=g, dtype=x.dtype)
            beta = self.max_beta * float(torch.rand((), generator=g))
        if float(torch.rand((), generator=g)) < self.rotate:  # drawn last: the draws above stay as they were
            x = rotate(x, math.radians(180 * float(torch.rand((), generator=g)) - 90))
        if self.stage == 2:
            item["image"] = x
        else:
            item["image"] = (1 - mask) * x + mask * (beta * x + (1 - beta) * colour)
        item["mask"] = mask
        return item


def rotate(x: torch.Tensor, angle: float) -> torch.Tensor:
    """(C, H, W) rotated by ``angle`` radians about its centre, bilinear, zeros outside."""
    cos, sin = math.cos(angle), math.sin(angle)
    _, h, w = x.shape
    theta = torch.tensor([[cos, -sin * h / w, 0.0], [sin * w / h, cos, 0.0]], dtype=x.dtype)[None]
    grid = F.affine_grid(theta, (1, *x.shape), align_corners=False)
    return F.grid_sample(x[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
