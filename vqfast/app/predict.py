"""One image in, one answer out: a run's scorer with the run's preprocessing and threshold.

    detector = vqfast.load("runs/mt_sgfr")          # the run's first scorer, threshold "auto"
    result = detector.predict("part_0042.png")      # {"score", "map", "decision", "threshold"}

``predict`` takes a path, a PIL image, a NumPy array ((H, W) or (H, W, C), uint8 in 0-255
or float in [0, 1]) or a tensor ((C, H, W) or (B, C, H, W) float in [0, 1]); the map comes
back at the input's resolution. Paths and PIL images go through exactly the run's
ImageTransform (what ``vqfast score`` applies); arrays and tensors are resized by torch's
bilinear interpolation with antialiasing, which matches PIL's to about 1e-2 per pixel.
"""

import math
from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from vqfast.app import tiles
from vqfast.app.score import _validation_images, auto_threshold, load_scorer
from vqfast.data import ImageTransform
from vqfast.methods import RunError, registry
from vqfast.methods.runs import read_run


class Detector:
    """A loaded run: ``preprocess(x)`` -> the model's input (B, C, H, W) float32 on its
    device; ``predict(x)`` -> one result dict per image (a list for a batch or a list of
    inputs): "score" float, "map" (H, W) float32 NumPy at the input's resolution,
    "decision" 1 / 0 (None without a threshold) and "threshold"."""

    def __init__(self, scorer, run: Dict, transform: ImageTransform, threshold: Optional[float], device):
        self.scorer, self.run, self.transform = scorer, run, transform
        self.threshold, self.device = threshold, device

    def _one(self, x) -> torch.Tensor:
        """The (C, H, W) model input of one image."""
        if isinstance(x, (str, Path)):
            return self.transform.image(x)
        if isinstance(x, Image.Image):
            return self.transform.pil(x)
        if isinstance(x, np.ndarray):
            if x.dtype == np.uint8:
                return self.transform.pil(Image.fromarray(x))
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            x = x.unsqueeze(0) if x.dim() == 2 else x.permute(2, 0, 1)
        if not torch.is_tensor(x) or x.dim() != 3 or x.shape[0] not in (1, 3):
            raise ValueError(f"predict takes a path, a PIL image, an (H, W) or (H, W, C) array or a (C, H, W) / "
                             f"(B, C, H, W) tensor, got {type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        return tiles.resize(x.float(), self.transform.size, self.transform.channels)

    @staticmethod
    def _inputs(x) -> list:
        if torch.is_tensor(x) and x.dim() == 4:
            return list(x)
        return list(x) if isinstance(x, (list, tuple)) else [x]

    def preprocess(self, x) -> torch.Tensor:
        """The model's input batch (B, C, H, W) float32 on the detector's device."""
        return torch.stack([self._one(item) for item in self._inputs(x)]).to(self.device)

    @torch.no_grad()
    def predict(self, x, *, tile: Optional[int] = None, stride: Optional[int] = None,
                batch_size: int = 16) -> Union[Dict, List[Dict]]:
        """``tile``: score a large image by tile x tile crops every ``stride`` pixels (default
        tile / 2) at its own resolution, each resized to the model's input; the tiles' maps
        are stitched (overlaps averaged) at full resolution and the image score is the
        scorer's reduction (its ``reduction``, else max) of the stitched map, so a defect
        smaller than a token of the whole-image input stays visible. Memory: the tile
        batch (``batch_size`` tiles) and the full-resolution map."""
        items = self._inputs(x)
        batch = (torch.is_tensor(x) and x.dim() == 4) or isinstance(x, (list, tuple))
        if tile is not None:
            results = [self._tiled(item, tile, stride or max(1, tile // 2), batch_size) for item in items]
            return results if batch else results[0]
        sizes = [_input_size(item) for item in items]
        out = self.scorer.score(self.preprocess(items))
        results = []
        for j, (h, w) in enumerate(sizes):
            amap = out.anomaly_map[j].float()[None, None]
            if amap.shape[-2:] != (h, w):
                amap = F.interpolate(amap, size=(h, w), mode="bilinear", align_corners=False)
            results.append(self._result(float(out.pred_score[j]), amap[0, 0].cpu().numpy()))
        return results if batch else results[0]


    def _tiled(self, image, tile: int, stride: int, batch_size: int) -> Dict:
        score, stitched, count = tiles.score_by_tiles(self.scorer, tiles.full_image(image, self.transform.channels),
                                                      tile, stride, self.transform.size, self.device, batch_size)
        return {**self._result(score, stitched), "tiles": count}

    def _result(self, score: float, amap: np.ndarray) -> Dict:
        return {"score": score, "map": amap, "threshold": self.threshold,
                "decision": None if self.threshold is None else int(score >= self.threshold)}


def _input_size(x):
    """(H, W) of an input as given (the map comes back at this size)."""
    if isinstance(x, (str, Path)):
        with Image.open(x) as im:
            return im.size[1], im.size[0]
    if isinstance(x, Image.Image):
        return x.size[1], x.size[0]
    return tuple(x.shape[:2]) if isinstance(x, np.ndarray) else tuple(x.shape[-2:])


def load(run, scorer: Optional[str] = None, *, threshold="auto", device=None, batch_size: int = 8,
         **options) -> Detector:
    """The detector of run folder ``run`` with ``scorer`` (default: the run's method's
    first). ``threshold``: "auto" (``vqfast score``'s rule over the run's held-out
    images, scored once here), a number, or None (no decision). ``options``: load_scorer's
    (percentile, restorations, decode_precision, ...)."""
    run_dir = Path(run)
    record = read_run(run_dir)
    name = scorer or registry.get(record["method"]).scorers[0].name
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, record = load_scorer(run_dir, name, device=device, **options)
    transform = ImageTransform(size=int(record["transform"]["size"]), channels=int(record["transform"]["channels"]))
    if threshold == "auto":
        val = _validation_images(record, run_dir.resolve(), transform)
        scores = []
        for b in range(0, len(val), batch_size):
            batch = torch.stack([val[i]["image"] for i in range(b, min(b + batch_size, len(val)))]).to(device)
            scores += model.score(batch).pred_score.float().cpu().tolist()
        threshold = auto_threshold([{"score": s, "label": 0} for s in scores])["value"]
    elif threshold is not None:
        try:
            threshold = float(threshold)
        except (TypeError, ValueError):
            threshold = float("nan")
        if not math.isfinite(threshold):
            raise RunError(f"threshold takes 'auto', a finite number or None, got {threshold!r}")
    return Detector(model, record, transform, threshold, device)
