"""Checkpoints: one safetensors file holding the tensors, with the JSON config (and any
JSON state) in its metadata, written atomically. No pickle is ever loaded.

    save_model(model, "vqvae.safetensors")
    model = load_model("vqvae.safetensors")
"""

import json
import os
import tempfile
from pathlib import Path
from typing import Dict, Tuple, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file

FORMAT = "vqfast-1"
PathLike = Union[str, Path]


class CheckpointError(ValueError):
    """A checkpoint file is missing, unreadable, or not what was asked for; the
    message names the file."""


def _model_registry():
    from vqfast.models.dsr import DSR, DSRConfig
    from vqfast.models.feature_ae import FeatureAE, FeatureAEConfig
    from vqfast.models.gpt2_prior import GPT2Prior, GPT2PriorConfig
    from vqfast.models.masked_prior import MaskedPriorConfig, MaskedTokenPrior
    from vqfast.models.performer import PerformerPrior, PerformerPriorConfig
    from vqfast.models.pixelsnail import PixelSNAIL, PixelSNAILConfig
    from vqfast.models.vqgan import VQGAN, VQGANConfig
    from vqfast.models.vqvae import VQVAE, VQVAEConfig

    return {"VQVAE": (VQVAE, VQVAEConfig), "VQGAN": (VQGAN, VQGANConfig), "FeatureAE": (FeatureAE, FeatureAEConfig),
            "GPT2Prior": (GPT2Prior, GPT2PriorConfig), "PixelSNAIL": (PixelSNAIL, PixelSNAILConfig),
            "PerformerPrior": (PerformerPrior, PerformerPriorConfig), "DSR": (DSR, DSRConfig),
            "MaskedTokenPrior": (MaskedTokenPrior, MaskedPriorConfig)}


def write_atomic(path: PathLike, tensors: Dict[str, torch.Tensor], metadata: Dict[str, str]) -> None:
    """Writes a safetensors file through a temporary file in the same folder and an
    os.replace, so readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata={"format": FORMAT, **metadata})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would keep the checkpoint from its readers
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


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
    registry = _model_registry()
    if name not in registry:
        raise CheckpointError(f"{path}: unknown model {name!r} (known: {sorted(registry)})")
    if expected is not None and name != expected:
        raise CheckpointError(f"{path}: holds a {name}, not a {expected}")
    cls, config_cls = registry[name]
    try:
        model = cls(config_cls(**config))
        model.load_state_dict(tensors, strict=True)
    except (TypeError, RuntimeError, ValueError, KeyError, ZeroDivisionError) as exc:  # a config no model takes
        raise CheckpointError(f"{path}: weights do not fit {name} with its config ({exc})") from exc
    return model
