"""Checkpoints: one safetensors file holding the tensors, with the JSON config (and any
JSON state) in its metadata, written atomically. No pickle is ever loaded.

    save_model(model, "vqvae.safetensors")
    model = load_model("vqvae.safetensors")
"""

import json
from pathlib import Path
from typing import Dict, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save

from vqfast.files import write_atomic as write_bytes_atomic
from vqfast.models import MODELS

FORMAT = "vqfast-1"
PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not what was asked for; the
    message names the file."""


def write_atomic(path: PathLike, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """Writes a safetensors file atomically (vqfast.files.write_atomic): readers see
    the old file or the new one, never half of one."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata={"format": FORMAT, **metadata})
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(Path(path), data)


def read(path: PathLike) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """(tensors, metadata) of a vqfast checkpoint, on the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: not a readable safetensors file ({exc})") from exc
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a vqfast checkpoint (format {metadata.get('format')!r}, expected {FORMAT!r})")
    return tensors, metadata


def save_model(model: torch.nn.Module, path: PathLike) -> None:
    """Weights and buffers plus ``model.config_dict()``."""
    write_atomic(path, dict(model.state_dict()), {"config": json.dumps(model.config_dict())})


def load_model(path: PathLike, expected: str = None) -> torch.nn.Module:
    """Rebuilds the model a save_model file describes (the Trainer's model.safetensors),
    or the model inside a Trainer's checkpoint.safetensors (its optimiser and RNG state
    are left out); ``expected`` (a class name) turns a checkpoint of another model into
    an error."""
    tensors, metadata = read(path)
    if "trainer" in metadata:  # a training checkpoint: the model's tensors carry a "model." prefix
        tensors = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        config = json.loads(metadata["config"])
        name = config.pop("model")
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: no model config in the checkpoint ({exc})") from exc
    if name not in MODELS:
        raise CheckpointError(f"{path}: unknown model {name!r} (known: {sorted(MODELS)})")
    if expected is not None and name != expected:
        raise CheckpointError(f"{path}: holds a {name}, not a {expected}")
    cls, config_cls = MODELS[name]
    try:
        model = cls(config_cls(**config))
        model.load_state_dict(tensors, strict=True)
    except (TypeError, RuntimeError, ValueError, KeyError, ZeroDivisionError) as exc:  # a config no model takes
        raise CheckpointError(f"{path}: weights do not fit {name} with its config ({exc})") from exc
    return model
