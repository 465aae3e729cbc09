"""``vqfast train``: a registered method (vqfast.methods) trained on a folder's
defect-free images into a run folder.

A run folder holds ``run.json`` (method, settings, image transform, the data's identity,
the held-out validation images, status) and the method's files: ``model/`` (the Trainer's
checkpoint.safetensors, model.safetensors and metrics.jsonl) for trained models;
``vq.safetensors`` (a copy of the VQ model) and ``tokens.safetensors`` for priors;
``bank.safetensors`` for SGFR; ``stage1..3/`` for DSR.
"""

import os
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import torch

from vqfast import __version__, checkpoint
from vqfast.app import distributed
from vqfast.app.data import data_identity, held_out, open_data
from vqfast.files import write_json
from vqfast.app.ownership import owned, remove_own
from vqfast.data import ImageTransform, unwrap_subset
from vqfast.methods import RunError, SettingError, TrainJob, registry
from vqfast.methods.runs import read_run
from vqfast.training import RunExistsError


def settings_for(method: str, given: Dict[str, object]) -> Dict[str, object]:
    """The settings run.json records: ``method``'s defaults updated with ``given``
    (strings or typed values), checked; unknown keys are refused by name."""
    return _settings(method, given).record()


def _settings(method: str, given: Dict[str, object]):
    """settings_for's, typed (the method's Settings)."""
    spec = registry.get(method)
    try:
        settings = spec.settings.parse(given)
    except SettingError as exc:
        raise RunError(f"{method}: {exc}") from None
    if settings.val_fraction == 0 and not spec.val_optional:
        optional = [name for name in registry.names() if registry.get(name).val_optional]
        raise RunError(f"val_fraction takes a fraction in [0, 1) (0, every image trained on and no --threshold "
                       f"auto, only for {' and '.join(optional)}), got {settings.val_fraction} for {method}")
    _check_memory(settings)
    return settings


def _check_memory(settings) -> None:
    """Refuses an image size whose training batch cannot fit this machine's memory
    (about 256 float32 activations per input pixel and channel across the networks)."""
    need = settings.batch_size * settings.size ** 2 * 3 * 4 * 256
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf: no bound
        return
    if need > pages * page:
        raise RunError(f"--size {settings.size} with batch_size {settings.batch_size} needs about "
                       f"{need / 2**30:.0f} GiB for one training batch; this machine has {pages * page / 2**30:.0f} GiB: "
                       "choose a smaller --size or --batch-size")


def _differences(old: Dict, new: Dict, prefix: str = "") -> list:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} was {a!r}, is {b!r}")
    return out


def _begin(out: Path, record: Dict, resume: bool, overwrite: bool) -> None:
    """Refuses a folder holding another run (unless overwrite) and a resume whose
    method, settings or data changed, saying what changed."""
    if (out / "run.json").is_file():
        old = read_run(out)
        if resume:  # a setting added since the run was recorded counts as its default
            defaults = registry.get(record["method"]).settings().record()
            old = {**old, "settings": {**{k: v for k, v in defaults.items() if k not in old["settings"]},
                                       **old["settings"]}}
            keep = ("method", "settings", "data", "transform")
            changed = _differences({k: old.get(k) for k in keep}, {k: record[k] for k in keep})
            if changed:
                raise RunError(f"{out}: cannot resume, the run changed: {'; '.join(changed)} "
                               "(resume with the run's settings and data, or --overwrite to start again)")
        elif not overwrite:
            raise RunExistsError(f"{out} already holds a {old.get('method')} run: pass --resume to continue it, "
                                 "--overwrite to replace it, or another --out")
        else:
            remove_own(out, "run")  # only what vqfast train wrote: the folder may hold other files
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "run.json", record)


@owned("run")
def train(method: str, data, fmt: str, out, settings: Dict[str, object], *, category: Optional[str] = None,
          resume: bool = False, overwrite: bool = False, skip_bad: bool = False, device=None,
          progress: bool = True, echo: Callable = print) -> Dict:
    """Trains ``method`` on the defect-free images of ``data`` into ``out``; returns the
    run record (also ``out/run.json``, updated with results as they come)."""
    spec = registry.get(method)
    settings = _settings(method, settings)
    if spec.prepare is not None:  # e.g. a prior takes its VQ run's transform
        settings = spec.prepare(settings)
    out = Path(out)
    base, train_set, val_set, val_paths = _split_images(data, fmt, settings, category, skip_bad)
    record = {"vqfast": __version__, "method": method, "settings": settings.record(),
              "transform": {"size": settings.size, "channels": settings.channels},
              "data": {"path": str(Path(data).resolve()), "format": fmt, "category": category,
                       **data_identity(base)},
              "val_images": val_paths, "status": "training"}
    rank = distributed.rank_world()[0]
    if rank == 0:
        _begin(out, record, resume, overwrite)
    distributed.barrier()
    echo = echo if rank == 0 else (lambda *a, **k: None)
    echo(f"{method}: {len(train_set)} training and {len(val_paths)} validation images from {data}, "
         f"{settings.size}x{settings.size}x{settings.channels}")
    torch.manual_seed(settings.seed)
    start = time.monotonic()
    job = TrainJob(out, train_set, val_set, resume=resume, overwrite=overwrite, device=device, progress=progress,
                   echo=echo, main=rank == 0)
    try:
        summary = spec.train(settings, job)
    except Exception as exc:  # the run says it failed (and why) rather than "training" forever
        if rank == 0:
            write_json(out / "run.json", {**record, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]})
        raise
    record.update(status="trained", summary=summary, minutes_this_run=(time.monotonic() - start) / 60)
    if rank == 0:
        write_json(out / "run.json", record)
    distributed.barrier()
    return record


def _split_images(data, fmt: str, settings, category, skip_bad: bool):
    """(the dataset, its training Subset, validation Subset or None, the validation images'
    absolute paths): the defect-free images of ``data`` split by val_fraction and seed."""
    transform = ImageTransform(size=settings.size, channels=settings.channels)
    images = open_data(data, fmt, "train", transform, category=category, skip_bad=skip_bad)
    if getattr(images, "labelled", True) is False or fmt in ("folder", "frames"):
        normal = [i for i, r in enumerate(images.records) if r.label == 0]
        images = torch.utils.data.Subset(images, normal) if len(normal) < len(images) else images
    base, positions = unwrap_subset(images)
    train_pos, val_pos = held_out(len(positions), settings.val_fraction, settings.seed)
    train_set = torch.utils.data.Subset(base, [positions[i] for i in train_pos])
    # val_fraction 0: the paper's use of every image
    val_set = torch.utils.data.Subset(base, [positions[i] for i in val_pos]) if val_pos else None
    # absolute: a run is scored from any working directory
    return base, train_set, val_set, [str(Path(base.records[positions[i]].image).resolve()) for i in val_pos]


def export_run(model: torch.nn.Module, out, method: str, *, size: int, channels: int, val_images, data=None,
               settings: Optional[Dict] = None) -> Dict:
    """Makes a run folder (as ``vqfast train`` writes) for a VQ model, feature AE or DSR
    trained in Python, so ``vqfast score`` and ``vqfast report`` take it. ``val_images``:
    paths of held-out defect-free images for ``--threshold auto``; ``settings``: what to
    record of how it was trained."""
    out = Path(out)
    if method not in _EXPORTED:
        raise RunError(f"export_run takes {', '.join(_EXPORTED)} models, got method {method!r}")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_model(model, out / _EXPORTED[method])
    record = {"vqfast": __version__, "method": method, "settings": {**(settings or {}), "size": size,
                                                                      "channels": channels, "seed": 0},
              "transform": {"size": size, "channels": channels}, "data": {"path": None if data is None else str(data)},
              "val_images": [str(Path(p).resolve()) for p in val_images], "status": "trained",
              "summary": {"exported": "trained in Python, written by export_run"}}
    write_json(out / "run.json", record)
    return record


# Where a run of each single-model method keeps its model (its scorer loads it from there).
_EXPORTED = {"vqvae": "model/model.safetensors", "vqgan": "model/model.safetensors",
             "feature-ae": "model/model.safetensors", "dsr": "model.safetensors"}
