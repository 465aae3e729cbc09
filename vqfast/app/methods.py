"""The methods ``vqfast train`` knows: their settings (the papers' defaults, scaled to a
CPU budget where the paper's size cannot run there), how each trains into a run folder,
and which scorers a run of it offers.

A run folder holds ``run.json`` (method, settings, image transform, the data's identity,
the held-out validation images) and the method's files: ``model/`` (the Trainer's
checkpoint.safetensors, model.safetensors and metrics.jsonl) for trained models;
``vq.safetensors`` (a copy of the VQ model) and ``tokens.safetensors`` for priors;
``bank.safetensors`` for SGFR; ``stage1..3/`` for DSR.
"""

import json
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple

import torch

from vqfast import __version__, checkpoint
from vqfast.app import distributed
from vqfast.app.data import data_identity, held_out, open_data
from vqfast.app.files import write_json
from vqfast.app.ownership import owned, remove_own
from vqfast.data import DSRAnomalies, ImageTransform, TokenGrids, encode_dataset
from vqfast.models.masked_prior import MaskedGrids
from vqfast.training import RunExistsError, TrainConfig, Trainer

COMMON = {"size": 128, "channels": 3, "epochs": 100, "minutes": 10.0, "batch_size": 16, "lr": 1e-3, "seed": 0,
          "val_fraction": 0.1}


@dataclass(frozen=True)
class Method:
    name: str
    help: str
    defaults: Dict[str, object]
    scorers: Tuple[str, ...]  # the first is the default
    family: str  # "vq", "prior", "sgfr", "feature-ae", "dsr"


METHODS = {m.name: m for m in (
    Method("vqvae", "the Performer paper's VQ-VAE (appendix A: 3 down-sampling stages of 3 residual blocks); "
           "CPU-sized: 64 hidden channels, 256 codes of 32 dims (the paper: 128 hidden)",
           {"hidden": 64, "res_blocks": 3, "downsamples": 3, "codes": 256, "code_dim": 32, "lr_gamma": 0.99,
            "minutes": 19.0, "epochs": 300},
           ("regenerative",), "vq"),
    Method("vqgan", "the density/restoration paper's VQ-GAN (tables 1-2) with the recipe that keeps its codebook "
           "(EMA codes, dead-code restarts, Adam betas 0.5/0.9, GAN after disc_start steps); CPU-sized: 64x64 "
           "input, channels 32-64-64-128, 128 codes (the paper: 128x128, 256 channels)",
           {"size": 64, "disc_start": 400, "minutes": 19.0, "epochs": 300, "lr_gamma": 0.99},
           ("regenerative",), "vq"),
    Method("gpt2", "a GPT-2 prior over the token grids of a trained vqvae/vqgan run (--vq RUN)",
           {"vq": None, "minutes": 8.0, "epochs": 200, "lr": 3e-4}, ("pixel", "sample", "light", "kde",
                                                                     "regenerative"), "prior"),
    Method("pixelsnail", "a PixelSNAIL prior over a VQ run's token grids (--vq RUN); width 64 on a CPU "
           "(the paper: 128)", {"vq": None, "width": 64, "minutes": 8.0, "epochs": 200, "lr": 3e-4},
           ("pixel", "sample", "light", "kde", "regenerative"), "prior"),
    Method("performer", "a Performer (FAVOR+) prior over a VQ run's token grids (--vq RUN), trained by ILTM "
           "in iltm_rounds rounds", {"vq": None, "iltm_rounds": 2, "iltm_percentile": 95.0, "minutes": 8.0,
                                     "epochs": 200, "lr": 3e-4}, ("kde", "pixel", "sample", "light", "regenerative"),
           "prior"),
    Method("masked", "a bidirectional masked-token prior over a VQ run's token grids (--vq RUN), trained on "
           "random masks of random ratio, for masked-context scoring (the density paper's eq. 20): masked-sample "
           "scores the unusual tokens given only the normal ones, masked-restore in-paints them; the GPT-2 "
           "prior's sizes", {"vq": None, "minutes": 8.0, "epochs": 200, "lr": 3e-4, "passes": 4},
           ("masked-sample", "masked-restore"), "prior"),
    Method("sgfr", "subspace-guided feature reconstruction (nothing trained: a memory bank of the images' "
           "WideResNet-50-2 features, levels 2-3, level 4 for sampling, s_ref 10, s 7); 256x256 as the paper",
           {"size": 256, "weights": None, "s_ref": 10, "s": 7}, ("sgfr",), "sgfr"),
    Method("feature-ae", "the hierarchical feature-reconstruction autoencoder (WideResNet-50-2 layers 1-3, SGD "
           "0.4, momentum 0.9, weight decay 1e-4); 128x128 on a CPU (the paper: 256)",
           {"weights": None, "lr": 0.4, "minutes": 15.0, "epochs": 200}, ("feature-ae",), "feature-ae"),
    Method("dsr", "DSR in its three stages (discrete model, object-specific decoder, upsampling module) with "
           "the authors' step counts scaled to the budget (--set general=FILE loads their pretrained stage 1)",
           {"channels": 1, "general": None, "steps": [3000, 450, 120], "split": [0.3, 0.55, 0.15], "lr": 2e-4,
            "lr_general": 1e-3, "batch_size": 8, "minutes": 25.0}, ("dsr",), "dsr"),
)}


class RunError(ValueError):
    """A run folder that is missing, of another method, or changed since; the message
    says what and how to fix it."""


def settings_for(method: str, given: Dict[str, object]) -> Dict[str, object]:
    """The method's defaults updated with ``given``; unknown keys are refused by name."""
    if method not in METHODS:
        raise RunError(f"unknown method {method!r} (vqfast train takes {', '.join(METHODS)})")
    settings = {**COMMON, **METHODS[method].defaults}
    unknown = sorted(set(given) - set(settings))
    if unknown:
        raise RunError(f"{method} has no setting {', '.join(unknown)} (it has: {', '.join(sorted(settings))})")
    for key, value in given.items():
        default = settings[key]
        settings[key] = _coerce(key, value, default)
    step, least = SIZE_RULES.get(method, (1, 1))
    if method == "vqvae":
        step = least = 2 ** int(settings["downsamples"])
    size = int(settings["size"])
    if size % step or size < least:
        raise RunError(f"{method} takes images whose side is a multiple of {step}"
                       f"{f' and at least {least}' if least > step else ''}, got --size {size}: pass e.g. "
                       f"--size {max(least, (size + step - 1) // step * step)}")
    fraction = float(settings["val_fraction"])
    if not 0 <= fraction < 1 or fraction == 0 and METHODS[method].family not in ("sgfr", "feature-ae"):
        raise RunError(f"val_fraction takes a fraction in [0, 1) (0, every image trained on and no --threshold "
                       f"auto, only for sgfr and feature-ae), got {settings['val_fraction']} for {method}")
    _check_memory(settings)
    for key in ("weights", "general"):  # weight files: checked now, not after run.json says "training"
        if settings.get(key) is not None and not Path(str(settings[key])).is_file():
            raise RunError(f"setting {key}: {settings[key]} is not a file (a weights file the method loads)")
    if int(settings["channels"]) not in (1, 3):
        raise RunError(f"--channels takes 1 (grey) or 3 (colour), got {settings['channels']}")
    return settings


def _check_memory(settings) -> None:
    """Refuses an image size whose training batch cannot fit this machine's memory
    (about 256 float32 activations per input pixel and channel across the networks)."""
    need = int(settings["batch_size"]) * int(settings["size"]) ** 2 * 3 * 4 * 256
    try:
        pages, page = os.sysconf("SC_PHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # no sysconf: no bound
        return
    if need > pages * page:
        raise RunError(f"--size {settings['size']} with batch_size {settings['batch_size']} needs about "
                       f"{need / 2**30:.0f} GiB for one training batch; this machine has {pages * page / 2**30:.0f} GiB: "
                       "choose a smaller --size or --batch-size")


# (multiple, least) of the image side: the VQ models' 8x down-sampling, the backbones'
# stride-16/32 levels, DSR's 1/8 latents pooled twice more.
SIZE_RULES = {"vqvae": (8, 8), "vqgan": (8, 8), "sgfr": (32, 32), "feature-ae": (16, 32), "dsr": (32, 64)}


# Whole-number settings that may be 0; every other one counts something and is >= 1.
_ZERO_OK = {"seed", "disc_start", "iltm_rounds", "res_blocks"}
# Float settings and the open/closed interval each takes (all must be finite).
_FLOAT_RANGES = {"lr": (0, None), "lr_general": (0, None), "minutes": (0, None), "lr_gamma": (0, 1),
                 "iltm_percentile": (0, 100)}


def _coerce(key: str, value, default):
    """``value`` (a --set string, or a config file's TOML/YAML value) as the type of the
    setting's default, checked: booleans are true or false, whole numbers whole and in
    range, floats finite and in range. A bad value is a RunError naming the key."""
    if value is None or default is None:
        return value
    try:
        if isinstance(default, bool):
            if isinstance(value, bool):
                return value
            if str(value).strip().lower() in ("true", "false"):
                return str(value).strip().lower() == "true"
            raise ValueError
        if isinstance(default, list):
            parts = value if isinstance(value, list) else str(value).split(",")
            if len(parts) != len(default):
                raise RunError(f"setting {key}: takes {len(default)} comma-separated values like "
                               f"{','.join(map(str, default))}, got {value!r}")
            return [_coerce(key, p, default[0]) for p in parts]
        if isinstance(default, int):
            number = _number(value)
            least = 0 if key in _ZERO_OK else 1
            if not number.is_integer() or number < least:
                raise RunError(f"setting {key}: takes a whole number >= {least}, got {value!r}")
            return int(number)
        if isinstance(default, float):
            number = _number(value)
            lo, hi = _FLOAT_RANGES.get(key, (None, None))
            if (lo is not None and number <= lo) or (hi is not None and number > hi):
                raise RunError(f"setting {key}: takes a number in ({lo}, {'inf' if hi is None else hi}], got {value!r}")
            return number
    except RunError:
        raise
    except (TypeError, ValueError, OverflowError):
        raise RunError(f"setting {key}: expected a finite value like {default!r}, got {value!r}") from None
    return value


def _number(value) -> float:
    if isinstance(value, bool):
        raise ValueError("a boolean is not a number")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError("not finite")
    return number


def _differences(old: Dict, new: Dict, prefix: str = "") -> list:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} was {a!r}, is {b!r}")
    return out


def read_run(run_dir) -> Dict:
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a vqfast run folder (no run.json); make one with vqfast train")
    try:
        run = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: unreadable ({exc})") from None
    _check_run(path, run)
    return run


def _check_run(path: Path, run) -> None:
    """The fields every reader of a run record relies on, with their types."""
    def bad(what: str):
        raise RunError(f"{path}: not a valid vqfast run record: {what} (train the run again, or restore its run.json)")

    if not isinstance(run, dict):
        bad("expected a JSON object")
    if run.get("method") not in METHODS:
        bad(f"unknown method {run.get('method')!r}")
    if not isinstance(run.get("settings"), dict):
        bad("settings must be an object")
    transform = run.get("transform")
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
    if not isinstance(transform, dict) or not whole(transform.get("size")) or transform.get("channels") not in (1, 3):
        bad("transform must give a whole-number size >= 1 and channels 1 or 3")
    images = run.get("val_images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        bad("val_images must be a list of paths")
    known = {**COMMON, **METHODS[run["method"]].defaults}
    for key, value in run["settings"].items():  # the typed rules of --set and config files
        if key in known:
            try:
                _coerce(key, value, known[key])
            except RunError as exc:
                bad(str(exc))


def _begin(out: Path, record: Dict, resume: bool, overwrite: bool) -> None:
    """Refuses a folder holding another run (unless overwrite) and a resume whose
    method, settings or data changed, saying what changed."""
    if (out / "run.json").is_file():
        old = read_run(out)
        if resume:
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


def _transform(settings) -> ImageTransform:
    return ImageTransform(size=int(settings["size"]), channels=int(settings["channels"]))


def _vq_run(settings) -> Tuple[Path, Dict]:
    if not settings.get("vq"):
        raise RunError("a prior trains on a VQ run's token grids: pass --vq RUN_DIR (a vqvae or vqgan run)")
    vq_dir = Path(settings["vq"])
    vq = read_run(vq_dir)
    if METHODS[vq["method"]].family != "vq":
        raise RunError(f"{vq_dir}: a {vq['method']} run, not a vqvae or vqgan run (--vq)")
    return vq_dir, vq


@owned("run")
def train(method: str, data, fmt: str, out, settings: Dict[str, object], *, category: Optional[str] = None,
          resume: bool = False, overwrite: bool = False, skip_bad: bool = False, device=None,
          progress: bool = True, echo: Callable = print) -> Dict:
    """Trains ``method`` on the defect-free images of ``data`` into ``out``; returns the
    run record (also ``out/run.json``, updated with results as they come)."""
    settings = settings_for(method, settings)
    out = Path(out)
    spec = METHODS[method]
    if spec.family == "prior":  # the images go through the VQ model's transform
        vq_dir, vq = _vq_run(settings)
        settings["size"], settings["channels"] = vq["settings"]["size"], vq["settings"]["channels"]
    transform = _transform(settings)
    images = open_data(data, fmt, "train", transform, category=category, skip_bad=skip_bad)
    if getattr(images, "labelled", True) is False or fmt in ("folder", "frames"):
        normal = [i for i, r in enumerate(images.records) if r.label == 0]
        images = torch.utils.data.Subset(images, normal) if len(normal) < len(images) else images
    base = images.dataset if isinstance(images, torch.utils.data.Subset) else images
    positions = list(images.indices) if isinstance(images, torch.utils.data.Subset) else list(range(len(images)))
    train_pos, val_pos = held_out(len(positions), settings["val_fraction"], settings["seed"])
    train_set = torch.utils.data.Subset(base, [positions[i] for i in train_pos])
    val_set = torch.utils.data.Subset(base, [positions[i] for i in val_pos])
    if not val_pos:  # val_fraction 0: the paper's use of every image
        val_set = None
    record = {"vqfast": __version__, "method": method, "settings": settings,
              "transform": {"size": settings["size"], "channels": settings["channels"]},
              "data": {"path": str(Path(data).resolve()), "format": fmt, "category": category,
                       **data_identity(base)},
              # absolute: a run is scored from any working directory
              "val_images": [str(Path(base.records[positions[i]].image).resolve()) for i in val_pos],
              "status": "training"}
    rank = distributed.rank_world()[0]
    if rank == 0:
        _begin(out, record, resume, overwrite)
    distributed.barrier()
    echo = echo if rank == 0 else (lambda *a, **k: None)
    echo(f"{method}: {len(train_set)} training and {len(val_pos)} validation images from {data}, "
         f"{settings['size']}x{settings['size']}x{settings['channels']}")
    torch.manual_seed(settings["seed"])
    start = time.monotonic()
    try:
        summary = _TRAINERS[spec.family](method, settings, train_set, val_set, out, resume, overwrite, device,
                                         progress, echo)
    except Exception as exc:  # the run says it failed (and why) rather than "training" forever
        if rank == 0:
            write_json(out / "run.json", {**record, "status": "failed", "error": f"{type(exc).__name__}: {exc}"[:500]})
        raise
    record.update(status="trained", summary=summary, minutes_this_run=(time.monotonic() - start) / 60)
    if rank == 0:
        write_json(out / "run.json", record)
    distributed.barrier()
    return record


def export_run(model: torch.nn.Module, out, method: str, *, size: int, channels: int, val_images, data=None,
               settings: Optional[Dict] = None) -> Dict:
    """Makes a run folder (as ``vqfast train`` writes) for a VQ model, feature AE or DSR
    trained in Python, so ``vqfast score`` and ``vqfast report`` take it. ``val_images``:
    paths of held-out defect-free images for ``--threshold auto``; ``settings``: what to
    record of how it was trained."""
    out = Path(out)
    family = METHODS[method].family if method in METHODS else None
    if family not in ("vq", "feature-ae", "dsr"):
        raise RunError(f"export_run takes vqvae, vqgan, feature-ae or dsr models, got method {method!r}")
    out.mkdir(parents=True, exist_ok=True)
    checkpoint.save_model(model, out / ("model.safetensors" if family == "dsr" else "model/model.safetensors"))
    record = {"vqfast": __version__, "method": method, "settings": {**(settings or {}), "size": size,
                                                                      "channels": channels, "seed": 0},
              "transform": {"size": size, "channels": channels}, "data": {"path": None if data is None else str(data)},
              "val_images": [str(Path(p).resolve()) for p in val_images], "status": "trained",
              "summary": {"exported": "trained in Python, written by export_run"}}
    write_json(out / "run.json", record)
    return record


def _config(settings, **over) -> TrainConfig:
    base = dict(epochs=int(settings["epochs"]), batch_size=int(settings["batch_size"]), lr=float(settings["lr"]),
                max_minutes=float(settings["minutes"]), seed=int(settings["seed"]))
    return TrainConfig(**{**base, **over})


def _history_summary(history) -> Dict:
    last = history[-1]
    return {"epochs": last["epoch"], "steps": last["step"], "stopped": last["stopped"], "final_train": last["train"],
            "final_val": last["val"]}


def build_model(method: str, settings: Dict) -> torch.nn.Module:
    from vqfast.models import VQGAN, VQVAE, FeatureAE, FeatureAEConfig, VQGANConfig, VQVAEConfig

    c = int(settings["channels"])
    if method == "vqvae":
        return VQVAE(VQVAEConfig(in_channels=c, hidden=int(settings["hidden"]), num_codes=int(settings["codes"]),
                                 code_dim=int(settings["code_dim"]), res_blocks=int(settings["res_blocks"]),
                                 downsamples=int(settings["downsamples"])))
    if method == "vqgan":
        return VQGAN(VQGANConfig(in_channels=c, ch=32, ch_mult=(1, 2, 2, 4), resolution=int(settings["size"]),
                                 z_channels=64, num_codes=128, disc_start=int(settings["disc_start"])))
    if method == "feature-ae":
        return FeatureAE(FeatureAEConfig(weights=settings["weights"], backbone_seed=int(settings["seed"])))
    raise RunError(f"{method} builds no single model")


def _train_vq(method, settings, train_set, val_set, out, resume, overwrite, device, progress, echo):
    model = build_model(method, settings)
    betas = (0.5, 0.9) if method == "vqgan" else (0.9, 0.999)
    config = _config(settings, lr_gamma=float(settings["lr_gamma"]), betas=betas)
    history = Trainer(model, train_set, val_set, config, out_dir=out / "model", device=device,
                      progress=progress).fit(resume=resume, overwrite=overwrite)
    last = history[-1]["train"]
    echo(f"trained {history[-1]['epoch']} epochs ({history[-1]['stopped'] or 'epoch budget used'}): loss "
         f"{last['loss']:.4g}, perplexity {last.get('perplexity', float('nan')):.1f} of {model.config.num_codes}")
    return _history_summary(history)


def _train_feature_ae(method, settings, train_set, val_set, out, resume, overwrite, device, progress, echo):
    model = build_model(method, settings)
    if not model.backbone.pretrained:
        echo("no WideResNet-50-2 weights found (--set weights=FILE or $TORCH_HOME): the backbone is random")
    config = _config(settings, optimizer="sgd", momentum=0.9, weight_decay=1e-4, early_stopping=False)
    history = Trainer(model, train_set, val_set, config, out_dir=out / "model", device=device,
                      progress=progress).fit(resume=resume, overwrite=overwrite)
    return {**_history_summary(history), "pretrained": model.backbone.pretrained}


def _train_sgfr(method, settings, train_set, val_set, out, resume, overwrite, device, progress, echo):
    scorer = build_sgfr(settings)
    if resume and (out / "bank.safetensors").is_file():
        return {"bank_images": int(checkpoint.read(out / "bank.safetensors")[1]["images"])}
    if not scorer.backbone.pretrained:
        echo("no WideResNet-50-2 weights found (--set weights=FILE or $TORCH_HOME): the backbone is random")
    # The bank holds the training images only (the paper: all of them), so that the held-out
    # ones score as unseen normal images do and can set the --threshold auto rule.
    scorer.fit(train_set, progress=progress)
    tensors = {f"bank.{lvl}": v for lvl, v in scorer.bank.items()}
    if distributed.rank_world()[0] == 0:
        checkpoint.write_atomic(out / "bank.safetensors", tensors, {"images": str(len(train_set)),
                                                                     "image_size": json.dumps(scorer.image_size)})
    return {"bank_images": len(train_set), "pretrained": scorer.backbone.pretrained}


def build_sgfr(settings):
    from vqfast.models import Backbone
    from vqfast.scorers import SGFRScorer

    torch.manual_seed(int(settings["seed"]))  # a random backbone is the same one at scoring time
    backbone = Backbone("wide_resnet50_2", layers=(2, 3, 4), weights=settings["weights"])
    return SGFRScorer.magnetic_tile(backbone, s_ref=int(settings["s_ref"]), s=int(settings["s"]))


def _train_prior(method, settings, train_set, val_set, out, resume, overwrite, device, progress, echo):
    from vqfast.iltm import iltm_fit

    vq_dir, _ = _vq_run(settings)
    vq_model = checkpoint.load_model(vq_dir / "model" / "model.safetensors").eval()
    path = out / "tokens.safetensors"
    if resume and path.is_file():
        tokens = checkpoint.read(path)[0]
    else:
        tokens = {"train": encode_dataset(vq_model, train_set, progress=progress),
                  "val": encode_dataset(vq_model, val_set, progress=progress)}
        if distributed.rank_world()[0] == 0:
            shutil.copyfile(vq_dir / "model" / "model.safetensors", out / "vq.safetensors")
            checkpoint.write_atomic(path, tokens, {"what": "token grids"})
    prior = build_prior(method, settings, vq_model, tokens["train"].shape[1:])
    if method == "performer" and int(settings["iltm_rounds"]) > 1:
        rounds = int(settings["iltm_rounds"])
        config = _config(settings, max_minutes=float(settings["minutes"]) / rounds)
        iltm_fit(prior, tokens["train"], rounds, config, out_dir=out / "iltm",
                 percentile=float(settings["iltm_percentile"]), val_tokens=tokens["val"], resume=resume,
                 progress=progress)
        if distributed.rank_world()[0] == 0:
            checkpoint.save_model(prior, out / "model" / "model.safetensors")
        return {"iltm_rounds": rounds}
    if method == "masked":  # random hidden sets keyed by (seed, epoch, grid); validation keeps epoch 0's
        seed = int(settings["seed"])
        grids = MaskedGrids(tokens["train"], seed), MaskedGrids(tokens["val"], seed + 1)
    else:
        grids = TokenGrids(tokens["train"]), TokenGrids(tokens["val"])
    history = Trainer(prior, *grids, _config(settings),
                      out_dir=out / "model", device=device, progress=progress,
                      input_key="tokens").fit(resume=resume, overwrite=overwrite)
    return _history_summary(history)


def build_prior(method: str, settings: Dict, vq_model, grid) -> torch.nn.Module:
    from vqfast.models import GPT2Prior, GPT2PriorConfig, MaskedPriorConfig, MaskedTokenPrior, PerformerPrior, \
        PerformerPriorConfig, PixelSNAIL, PixelSNAILConfig

    h, w = grid
    k = vq_model.config.num_codes
    if method == "gpt2":
        return GPT2Prior(GPT2PriorConfig(num_codes=k, height=h, width=w))
    if method == "performer":
        return PerformerPrior(PerformerPriorConfig(num_codes=k, height=h, width=w))
    if method == "masked":
        return MaskedTokenPrior(MaskedPriorConfig(num_codes=k, height=h, width=w))
    return PixelSNAIL(PixelSNAILConfig(num_codes=k, height=h, width=w, channels=int(settings["width"])))


def _train_dsr(method, settings, train_set, val_set, out, resume, overwrite, device, progress, echo):
    from vqfast.models import DSR, DSRConfig
    from vqfast.models.dsr import paper_config

    c = int(settings["channels"])
    model = DSR(paper_config(c) if settings["general"] else DSRConfig(in_channels=c))
    if settings["general"]:
        model.load_general(settings["general"])
    stages = {}
    for stage in (1, 2, 3):
        if stage == 1 and settings["general"]:
            stages["1"] = {"source": f"the authors' pretrained file {settings['general']}"}
            continue
        model.set_stage(stage)
        steps = int(settings["steps"][stage - 1])
        config = _config(settings, epochs=10_000, lr=float(settings["lr_general" if stage == 1 else "lr"]),
                         max_steps=steps, lr_milestones=(int(0.8 * steps),) if stage == 2 else (),
                         early_stopping=stage == 1,
                         max_minutes=float(settings["minutes"]) * float(settings["split"][stage - 1]),
                         seed=int(settings["seed"]) + stage)
        data = train_set if stage == 1 else DSRAnomalies(train_set, stage, seed=int(settings["seed"]) + stage)
        history = Trainer(model, data, val_set if stage == 1 else None, config, out_dir=out / f"stage{stage}",
                          device=device, progress=progress, input_key=DSR.STAGE_INPUTS[stage]).fit(
            resume=resume, overwrite=overwrite)
        stages[str(stage)] = _history_summary(history)
        echo(f"DSR stage {stage}: {history[-1]['step']} steps ({history[-1]['stopped'] or 'epoch budget used'})")
    if distributed.rank_world()[0] == 0:
        checkpoint.save_model(model, out / "model.safetensors")
    return {"stages": stages, "general_model": model.general_origin}


_TRAINERS = {"vq": _train_vq, "prior": _train_prior, "sgfr": _train_sgfr, "feature-ae": _train_feature_ae,
             "dsr": _train_dsr}
