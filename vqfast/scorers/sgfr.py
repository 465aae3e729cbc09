"""Subspace-guided feature reconstruction (SGFR): Algorithm 1, eqs. 2-7, section 3.3.

Each image's feature map at level l, flattened, is one vector x_{n,l} in R^{w h c}; the
nominal training images are the dictionary columns. For a test image:
1. sampling (eqs. 6-7): OMP of y_ref over all N training images at level l_ref picks
   M_S, the s_ref images whose span holds the test image's subspace;
2. at every level l, OMP over the columns in M_S (at most s atoms, or until the
   residual's norm ||e_l||_2 <= eps, Algorithm 1's test) gives the anomalous term
   e_l = y_l - X_l c_l;
3. the map is the per-pixel L2 norm of e_l over channels, bilinearly resized to the
   image, summed over levels, smoothed with a Gaussian of sigma = 4; the image score
   is the map's maximum.
"""

import json
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqfast import checkpoint
from vqfast.models.backbones import Backbone
from vqfast.ops import lowered, omp
from vqfast.profiling import time_stages
from vqfast.scorers.base import ScoreBatch, check_images, gaussian_blur, reduce_map


class SGFRScorer:
    """Args:
    backbone: a Backbone (asked for ``levels`` and ``ref_level`` whatever layers it was
        built with), or any module returning a {level: (B, C, h, w)} dict holding them.
    levels: reconstruction levels (the paper: 2 and 3).
    ref_level: sampling level l_ref (the paper: l + 1); None: max(levels) + 1, capped at 4.
    s_ref, s: sampled bank size and atoms per reconstruction (Magnetic Tile: 10 and 7).
    eps: stop a reconstruction once ||e_l||_2 <= eps (Algorithm 1, line 2: "while k < s
        and ||e_l||_2 > eps"; None: only s bounds it).
    sampling: False reconstructs over the whole bank (the ablation of Figure 4).
    sigma: Gaussian smoothing of the map.
    """

    def __init__(self, backbone: Backbone, levels: Sequence[int] = (2, 3), ref_level: Optional[int] = None,
                 s_ref: int = 10, s: int = 7, eps: Optional[float] = None, sampling: bool = True,
                 sigma: float = 4.0, batch_size: int = 16):
        self.ref_level = ref_level if ref_level is not None else min(max(levels) + 1, 4)
        needed = set(levels) | {self.ref_level}
        if not needed <= {1, 2, 3, 4}:
            raise ValueError(f"levels {tuple(levels)} and ref_level {self.ref_level} must lie in 1..4")
        self._layers = tuple(sorted(needed)) if isinstance(backbone, Backbone) else None
        if self._layers is None and not needed <= set(backbone.layers):
            raise ValueError(f"backbone returns layers {backbone.layers} but levels {tuple(levels)} and ref_level "
                             f"{self.ref_level} are needed")
        if s_ref < 1 or s < 1:
            raise ValueError(f"s_ref and s must be >= 1, got {s_ref}, {s}")
        self.backbone, self.levels = backbone, tuple(levels)
        self.s_ref, self.s, self.eps, self.sampling, self.sigma = s_ref, s, eps, sampling, sigma
        self.batch_size = batch_size
        self.bank = None  # {level: (N, w h c) float64}
        self.image_size = None  # (H, W) of the fitted images: features of other sizes are other vectors

    def _features(self, images: torch.Tensor):
        check_images(images, self.backbone, "the backbone")
        feats = self.backbone(images) if self._layers is None else self.backbone(images, layers=self._layers)
        return {lvl: f.double() for lvl, f in feats.items() if lvl in self.levels or lvl == self.ref_level}

    @classmethod
    def magnetic_tile(cls, backbone: Backbone, **overrides) -> "SGFRScorer":
        """Section 4.2.1's MTD setting: feature levels 2, 3 and 4, the last used only for
        subspace sampling (levels (2, 3), ref_level 4), s_ref = 10, s = 7."""
        return cls(backbone, **{"levels": (2, 3), "ref_level": 4, "s_ref": 10, "s": 7, **overrides})

    @torch.no_grad()
    def fit(self, dataset, progress: bool = False):
        """Stores every nominal image's flattened features per level (the memory bank)
        and each level's Gram matrix, once, on the backbone's device."""
        device = next(self.backbone.parameters()).device
        loader = torch.utils.data.DataLoader(dataset, batch_size=self.batch_size, shuffle=False)
        parts = {}
        for batch in tqdm(loader, desc="SGFR memory bank", disable=not progress):
            self.image_size = tuple(batch["image"].shape[-2:])
            for lvl, f in self._features(batch["image"].to(device)).items():
                parts.setdefault(lvl, []).append(f.flatten(1))
        return self._set_bank({lvl: torch.cat(p) for lvl, p in parts.items()})

    def _set_bank(self, bank) -> "SGFRScorer":
        self.bank = bank
        self.gram = {lvl: x @ x.T for lvl, x in bank.items()}  # sub-banks' Grams are slices of these
        n = bank[self.ref_level].shape[0]
        if self.s_ref > n:
            raise ValueError(f"s_ref={self.s_ref} exceeds the {n} training images")
        return self

    def save_bank(self, path) -> None:
        """Writes the memory bank and the fitted image size (a checkpoint file)."""
        if self.bank is None:
            raise RuntimeError("call fit(dataset) first")
        n = self.bank[self.ref_level].shape[0]
        checkpoint.write_atomic(path, {f"bank.{lvl}": v for lvl, v in self.bank.items()},
                                {"images": str(n), "image_size": json.dumps(self.image_size)})

    def load_bank(self, path) -> "SGFRScorer":
        """The bank save_bank wrote, on the backbone's device."""
        tensors, meta = checkpoint.read(path)
        device = next(self.backbone.parameters()).device
        self.image_size = tuple(json.loads(meta["image_size"]))
        return self._set_bank({int(k.split(".")[1]): v.to(device) for k, v in tensors.items()})

    @torch.no_grad()
    def sample(self, images: torch.Tensor) -> torch.Tensor:
        """(B, s_ref) indices of the sampled memory bank M_S per image (-1 where OMP
        stopped early); all N when sampling is off."""
        self._check_fitted(images)
        y = self._features(images)[self.ref_level].flatten(1)
        return self._sample(y)

    def _check_fitted(self, images: torch.Tensor) -> None:
        if self.bank is None:
            raise RuntimeError("call fit(dataset) first")
        if torch.is_tensor(images) and tuple(images.shape[-2:]) != self.image_size:
            h, w = self.image_size
            raise ValueError(f"images are {images.shape[-2]}x{images.shape[-1]} but the memory bank was fitted on "
                             f"{h}x{w} images: score at the fitted size (e.g. ImageTransform(size=({h}, {w}))) "
                             "or fit on images of this size")

    def _sample(self, y_ref: torch.Tensor) -> torch.Tensor:
        n = self.bank[self.ref_level].shape[0]
        if not self.sampling:
            return torch.arange(n, device=y_ref.device).expand(y_ref.shape[0], n)
        xty = y_ref @ self.bank[self.ref_level].T
        return omp(self.gram[self.ref_level], xty, self.s_ref, y_norm_sq=y_ref.square().sum(1))[1]

    @torch.no_grad()
    def score(self, images: torch.Tensor) -> ScoreBatch:
        """images: (B, C, H, W) -> ScoreBatch with (B, H, W) maps (max as image score)."""
        self._check_fitted(images)
        feats = self._features(images)
        support = self._sample(feats[self.ref_level].flatten(1))
        h, w = images.shape[-2:]
        tol = None if self.eps is None else float(self.eps) ** 2  # omp's tol bounds ||e||^2
        if torch.compiler.is_exporting():
            maps = gaussian_blur(self._batched_maps(feats, support, tol, (h, w)), self.sigma)
            return ScoreBatch(reduce_map(maps, "max", 0.0), maps)
        total = torch.zeros(images.shape[0], h, w, dtype=torch.float64, device=images.device)
        for lvl in self.levels:
            f = feats[lvl]
            y = f.flatten(1)
            for b in range(y.shape[0]):
                idx = support[b][support[b] >= 0]
                atoms = self.bank[lvl][idx]  # (|M_S|, D)
                k = min(self.s, atoms.shape[0])
                coef, _, _ = omp(self.gram[lvl][idx][:, idx], (atoms @ y[b]).unsqueeze(0), k, tol=tol,
                                 y_norm_sq=y[b].square().sum().unsqueeze(0))
                residual = (y[b] - coef[0] @ atoms).view(f.shape[1:])
                per_pixel = residual.norm(dim=0)[None, None]
                total[b] += F.interpolate(per_pixel, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        maps = gaussian_blur(total, self.sigma).float()
        return ScoreBatch(reduce_map(maps, "max", 0.0), maps)

    def _batched_maps(self, feats, support: torch.Tensor, tol: Optional[float], size) -> torch.Tensor:
        """score()'s summed per-level maps (B, H, W) float32 (resized in float32, not
        float64: about 1e-7 relative), every image at once in
        standard operators (vqfast.ops.lowered.omp over each image's gathered sub-bank,
        the -1 entries of ``support`` unavailable): the exported graph's path. The loop
        in score() keeps the fused OMP kernel."""
        valid, idx = support >= 0, support.clamp_min(0)
        m = idx.shape[1]
        total = None
        for lvl in self.levels:
            f = feats[lvl]
            y = f.flatten(1)
            atoms = self.bank[lvl][idx]  # (B, M, D)
            gram = self.gram[lvl][idx].gather(2, idx[:, None, :].expand(-1, m, -1))  # (B, M, M)
            xty = (atoms @ y[:, :, None])[..., 0]
            coef, _, _ = lowered.omp(gram, xty, min(self.s, m), tol, y.square().sum(1), available=valid)
            residual = (y - (coef[:, None, :] @ atoms)[:, 0]).view(f.shape)
            per_pixel = residual.norm(dim=1).float()  # ONNX runtimes resize and convolve float32 only
            up = F.interpolate(per_pixel[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
            total = up if total is None else total + up
        return total

    @torch.no_grad()
    def profile(self, images: torch.Tensor, repeats: int = 5):
        """Timings of feature extraction, subspace sampling, and the whole score call."""
        feats = self._features(images)
        y_ref = feats[self.ref_level].flatten(1)
        return time_stages({"features (backbone)": lambda: self._features(images),
                            "sampling (OMP over the bank)": lambda: self._sample(y_ref),
                            "score (total)": lambda: self.score(images)}, images.device, repeats)
