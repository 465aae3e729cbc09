"""The scorer interface and dataset-level evaluation.

A scorer has ``fit(dataset)`` (a no-op where nothing is learnt) and
``score(images) -> ScoreBatch`` with anomalib-style fields.
"""

import hashlib
import json
from pathlib import Path
from typing import Dict, NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqfast import checkpoint, metrics


class ScoreBatch(NamedTuple):
    pred_score: torch.Tensor  # (B,) image anomaly scores, higher = more anomalous
    anomaly_map: torch.Tensor  # (B, H, W) pixel anomaly scores


def check_images(images, model: torch.nn.Module, model_name: str = "the model") -> None:
    """A clear error for what score(images) cannot take: not a (B, C, H, W) floating
    tensor, or on another device than ``model``'s parameters (named ``model_name``)."""
    if not torch.is_tensor(images) or images.dim() != 4 or not images.is_floating_point():
        got = f"{tuple(images.shape)} {images.dtype}" if torch.is_tensor(images) else type(images).__name__
        raise ValueError(f"images must be a (B, C, H, W) floating tensor, got {got}")
    param = next(iter(model.parameters()), None)
    if param is not None and param.device != images.device:
        raise ValueError(f"images are on {images.device} but {model_name} is on {param.device}: move the images "
                         f"(images.to({str(param.device)!r})) or the model")


def reduce_map(anomaly_map: torch.Tensor, reduction: str, topk: float) -> torch.Tensor:
    """(B, H, W) -> (B,): "max", "mean", or "topk_mean" (mean of the top ``topk``
    fraction of pixels, at least one)."""
    flat = anomaly_map.flatten(1)
    if reduction == "max":
        return flat.amax(1)
    if reduction == "mean":
        return flat.mean(1)
    if reduction == "topk_mean":
        k = max(1, int(round(topk * flat.shape[1])))
        return flat.topk(k, dim=1).values.mean(1)
    raise ValueError(f"reduction must be 'max', 'mean' or 'topk_mean', got {reduction!r}")


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(B, H, W) separable Gaussian smoothing, kernel radius 4 sigma, reflected borders."""
    if sigma <= 0:
        return maps
    radius = max(1, int(4 * sigma + 0.5))
    t = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = k / k.sum()
    x = maps.unsqueeze(1)
    pad_h, pad_w = min(radius, x.shape[2] - 1), min(radius, x.shape[3] - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect" if pad_w else "replicate")
    x = F.conv2d(x, k[radius - pad_w : radius + pad_w + 1].view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect" if pad_h else "replicate")
    x = F.conv2d(x, k[radius - pad_h : radius + pad_h + 1].view(1, 1, -1, 1))
    return x.squeeze(1)


# Attributes that choose how a result is computed, not what it is (the fast pass and the
# reference loop restore the same tokens): a resume may change them.
EXECUTION_SETTINGS = frozenset({"fast", "op_backend", "batch_size", "progress"})


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _tensor_items(value):
    if torch.is_tensor(value):
        return [("", value)]
    if isinstance(value, torch.nn.Module):
        return sorted(value.state_dict().items())
    if isinstance(value, dict) and value and all(torch.is_tensor(v) for v in value.values()):
        return sorted((str(k), v) for k, v in value.items())
    return None


def scorer_fingerprint(scorer) -> Dict[str, str]:
    """What a scorer's results depend on, for refusing stale resumes: its class, its
    settings (public attributes that are numbers, strings, None or tuples of them, less
    EXECUTION_SETTINGS) and a digest per model or fitted state (modules' state dicts,
    tensors and dicts of tensors, e.g. SGFR's memory bank)."""
    settings, weights = {}, {}
    for name, value in sorted(vars(scorer).items()):
        if name.startswith("_") or name in EXECUTION_SETTINGS:
            continue
        tensors = _tensor_items(value)
        if tensors is not None:
            weights[name] = _digest(tensors)
            if hasattr(value, "config_dict"):  # e.g. the backbone a FeatureAE keeps out of its state dict
                settings[f"{name}.config"] = value.config_dict()
        elif value is None or isinstance(value, (bool, int, float, str)):
            settings[name] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            settings[name] = list(value)
    return {"scorer": type(scorer).__qualname__, "settings": json.dumps(settings, sort_keys=True),
            "weights": json.dumps(weights, sort_keys=True)}


def _batch_identity(batch) -> Dict[str, str]:
    items = [("image", batch["image"]), ("label", torch.as_tensor(batch["label"])), ("mask", batch["mask"])]
    out = {"items": _digest(items)}
    if "path" in batch:
        out["paths"] = json.dumps([str(p) for p in batch["path"]])
    return out


def _what_changed(path: Path, meta: Dict[str, str], expected: Dict[str, str], first_item: int, count: int) -> str:
    reasons = []
    for key in ("batch_size", "n_items"):
        if meta.get(key) != expected[key]:
            reasons.append(f"{key} was {meta.get(key)}, is {expected[key]}")
    if meta.get("scorer") != expected["scorer"]:
        reasons.append(f"scorer was {meta.get('scorer')}, is {expected['scorer']}")
    for key, what in (("settings", "setting"), ("weights", "model or fitted state")):
        old, new = json.loads(meta.get(key) or "{}"), json.loads(expected[key])
        for name in sorted(set(old) | set(new)):
            if old.get(name) != new.get(name):
                reasons.append(f"{what} {name!r} changed" + ("" if key == "weights" else
                                                             f" ({old.get(name)!r} -> {new.get(name)!r})"))
    if meta.get("items") != expected["items"] and not reasons:  # other batches hold other items anyway
        old, new = json.loads(meta.get("paths") or "[]"), json.loads(expected.get("paths") or "[]")
        diff = next((f": item {first_item + i} was {a}, is {b}" for i, (a, b) in enumerate(zip(old, new)) if a != b),
                    " (same files, other content: a file was modified)" if old and old == new else "")
        reasons.append(f"the dataset's items {first_item}..{first_item + count - 1} "
                       f"changed{diff}")
    if meta.get("items") == expected["items"] and meta.get("paths") != expected.get("paths"):
        old, new = json.loads(meta.get("paths") or "[]"), json.loads(expected.get("paths") or "[]")
        first = next(((i, a, b) for i, (a, b) in enumerate(zip(old, new)) if a != b), None)
        reasons.append("the same images read from other paths" +
                       (f" (item {first_item + first[0]} was {first[1]}, is {first[2]})" if first else ""))
    for key in sorted(k for k in expected if k.startswith("stamp.")):
        if meta.get(key) != expected[key]:
            reasons.append(f"stamp {key[6:]!r} was {meta.get(key)!r}, is {expected[key]!r}")
    return (f"{path}: scored under other conditions, refusing to resume: " + "; ".join(reasons) +
            ". Score into another out_dir, or pass resume=False to score again.")


@torch.no_grad()
def score_dataset(scorer, dataset, batch_size: int = 32, device=None, out_dir=None, resume: bool = False,
                  progress: bool = False, stamp: Optional[Dict[str, str]] = None) -> Tuple[torch.Tensor, ...]:
    """(scores (N,), maps (N, H, W), labels (N,), masks (N, H, W)) on the CPU.

    out_dir: each batch's results go to ``<out_dir>/batch_<i>.safetensors`` as soon as
    they exist (atomically), so a crash loses at most one batch. ``resume=True`` reads
    the batches already there instead of scoring them again, after checking that
    nothing they depend on changed: the batch size and dataset length, the scorer's
    class and settings and a digest of its models' weights and fitted state
    (scorer_fingerprint), the batch's items (a digest of images, labels and masks, and
    their file names where items have a "path"), and ``stamp`` (anything else the caller
    wants held fixed); a mismatch raises CheckpointError saying what changed.
    ``resume=False`` scores everything again and replaces the folder's batch files.
    The scorers draw no randomness from call order, so a resumed run gives the results
    of an uninterrupted one.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    common = {"batch_size": str(batch_size), "n_items": str(len(dataset)), **scorer_fingerprint(scorer),
              **{f"stamp.{k}": str(v) for k, v in (stamp or {}).items()}}
    if out_dir is not None and not resume:
        for old in Path(out_dir).glob("batch_*.safetensors"):
            old.unlink()
    parts = []
    for i, batch in enumerate(tqdm(loader, desc="scoring", disable=not progress)):
        path = Path(out_dir) / f"batch_{i:05d}.safetensors" if out_dir is not None else None
        expected = {**common, **_batch_identity(batch)} if path is not None else None
        if resume and path is not None and path.is_file():
            tensors, meta = checkpoint.read(path)
            if any(meta.get(k) != v for k, v in expected.items()):
                raise checkpoint.CheckpointError(_what_changed(path, meta, expected, i * batch_size,
                                                                 len(batch["image"])))
            parts.append(tensors)
            continue
        x = batch["image"] if device is None else batch["image"].to(device)
        out = scorer.score(x)
        part = {"scores": out.pred_score.float().cpu(), "maps": out.anomaly_map.float().cpu(),
                "labels": torch.as_tensor(batch["label"]), "masks": batch["mask"]}
        if path is not None:
            checkpoint.write_atomic(path, part, expected)
        parts.append(part)
    if not parts:
        raise ValueError("dataset is empty")
    return tuple(torch.cat([p[k] for p in parts]) for k in ("scores", "maps", "labels", "masks"))


def evaluate_scorer(scorer, dataset, batch_size: int = 32, device=None) -> Dict[str, float]:
    """All image metrics, and the pixel metrics when the dataset has masks."""
    scores, maps, labels, masks = score_dataset(scorer, dataset, batch_size, device)
    pixel = getattr(dataset, "has_masks", False) and bool(masks.any())
    return metrics.evaluate(labels, scores, masks if pixel else None, maps if pixel else None)
