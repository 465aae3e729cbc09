"""The token priors as methods: GPT-2, PixelSNAIL, Performer (trained by ILTM) and the
masked-token prior, each over the token grids of a trained VQ run (``--vq RUN``). A prior
run holds ``vq.safetensors`` (a copy of the VQ model), ``tokens.safetensors`` (the train
and validation grids) and ``model/`` (the Trainer's files).

Its scorers: the density/restoration paper's Sample-, Pixel- and Light-Pixel-wise
scorers, the Performer paper's KDE maps, regeneration by the run's VQ model, and the
masked-context scorers of a masked run. Each loads the run's VQ model and prior and sets
the token NLL threshold: ``options.token_threshold`` when given, else the
``options.percentile`` (default the paper's) of the prior's NLLs on the validation grids."""

import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from vqfast import checkpoint
from vqfast.data import Augment, AugmentedGrids, MaskedGrids, TokenGrids, encode_dataset
from vqfast.iltm import iltm_fit
from vqfast.methods import registry
from vqfast.methods.api import Method, Run, RunError, Scorer, ScoreOptions, TrainJob, config_of, history_summary
from vqfast.methods.runs import open_run, read_run
from vqfast.methods.settings import Settings, setting
from vqfast.models import (VQGAN, GPT2Prior, GPT2PriorConfig, MaskedPriorConfig, MaskedTokenPrior, PerformerPrior,
                           PerformerPriorConfig, PixelSNAIL, PixelSNAILConfig)
from vqfast.scorers import (KDEScorer, LightPixelWiseScorer, MaskedContextScorer, MaskedRestorationScorer,
                            PAPER_PERCENTILES, PixelWiseScorer, RegenerativeScorer, SampleWiseScorer, nll_threshold)


@dataclass
class PriorSettings(Settings):
    """A prior's settings; its size and channels are its VQ run's."""

    vq: Optional[str] = setting(None, "the vqvae or vqgan run whose token grids it models (--vq)")
    epochs: int = setting(200, "most epochs to train")
    minutes: float = setting(8.0, "training time budget in minutes")
    batch_size: int = setting(16, "grids a training step", paper=10)
    lr: float = setting(3e-4, "learning rate", paper=2.25e-5)
    layers: int = setting(4, "transformer layers", paper=24)
    width: int = setting(256, "embedding width", paper=1024)
    heads: int = setting(8, "attention heads", paper=16)


@dataclass
class MaskedSettings(PriorSettings):
    """The GPT-2 prior's sizes; the paper has no masked prior to take others from."""

    batch_size: int = setting(16, "grids a training step")
    lr: float = setting(3e-4, "learning rate")
    layers: int = setting(4, "transformer layers")
    width: int = setting(256, "embedding width")
    heads: int = setting(8, "attention heads")
    passes: int = setting(4, "masked-restore's in-painting passes")


@dataclass
class PixelSNAILSettings(PriorSettings):
    lr: float = setting(3e-4, "learning rate", paper=1e-4)
    layers: int = setting(4, "pixel blocks")
    width: int = setting(64, "channels of the residual blocks", paper=128)
    heads: int = setting(4, "attention heads")


@dataclass
class PerformerSettings(PriorSettings):
    epochs: int = setting(200, "most epochs to train", paper=80)
    batch_size: int = setting(16, "grids a training step", paper=1)
    lr: float = setting(3e-4, "learning rate", paper=1e-3)
    layers: int = setting(4, "transformer layers", paper=16)
    width: int = setting(64, "embedding width", paper=32)
    heads: int = setting(8, "attention heads")
    iltm_rounds: int = setting(2, "ILTM rounds (1: plain training)", least=0)
    augment: bool = setting(True, "train on the VQ-VAE's augmentations of the images, encoded each epoch (the "
                            "paper's appendix B); false: the plain images' grids, encoded once")
    iltm_percentile: float = setting(95.0, "the NLL percentile above which ILTM masks tokens", most=100)



def vq_run(settings: PriorSettings):
    """(folder, record) of the prior's VQ run, checked."""
    if not settings.vq:
        raise RunError("a prior trains on a VQ run's token grids: pass --vq RUN_DIR (a vqvae or vqgan run)")
    vq_dir = Path(settings.vq)
    vq = read_run(vq_dir)
    if "vq" not in registry.get(vq["method"]).tags:
        raise RunError(f"{vq_dir}: a {vq['method']} run, not a vqvae or vqgan run (--vq)")
    return vq_dir, vq


def take_vq_transform(settings: PriorSettings) -> PriorSettings:
    """The images go through the VQ model's transform: its run's size and channels."""
    _, vq = vq_run(settings)
    settings.size, settings.channels = int(vq["settings"]["size"]), int(vq["settings"]["channels"])
    return settings


def build_prior(method: str, settings: PriorSettings, num_codes: int, grid) -> torch.nn.Module:
    """The prior of ``method`` for (h, w) grids of ``num_codes`` codes."""
    h, w = grid
    sizes = dict(n_layer=settings.layers, n_embd=settings.width, n_head=settings.heads)
    if method == "gpt2":
        return GPT2Prior(GPT2PriorConfig(num_codes=num_codes, height=h, width=w, **sizes))
    if method == "performer":
        return PerformerPrior(PerformerPriorConfig(num_codes=num_codes, height=h, width=w, **sizes))
    if method == "masked":
        return MaskedTokenPrior(MaskedPriorConfig(num_codes=num_codes, height=h, width=w, **sizes))
    return PixelSNAIL(PixelSNAILConfig(num_codes=num_codes, height=h, width=w, channels=settings.width,
                                       blocks=settings.layers, attn_heads=settings.heads))


def run_tokens(vq_dir: Path, job: TrainJob):
    """The VQ model and the job's token grids {"train", "val"}: encoded and written into
    the run (with a copy of the VQ model), or read back on a resume."""
    vq_model = checkpoint.load_model(vq_dir / "model" / "model.safetensors").eval()
    path = job.out / "tokens.safetensors"
    if job.resume and path.is_file():
        return vq_model, checkpoint.read(path)[0]
    tokens = {"train": encode_dataset(vq_model, job.train_set, progress=job.progress),
              "val": encode_dataset(vq_model, job.val_set, progress=job.progress)}
    if job.main:
        shutil.copyfile(vq_dir / "model" / "model.safetensors", job.out / "vq.safetensors")
        checkpoint.write_atomic(path, tokens, {"what": "token grids"})
    return vq_model, tokens


def _augmented(images, vq_model, seed: int):
    """masks (N, h, w) or None -> the training grids of the paper's augmented images, ILTM's
    masks travelling with their image."""
    augment = Augment(seed=seed)
    return lambda masks: AugmentedGrids(images, vq_model, augment,
                                        masks if masks is not None and bool(masks.any()) else None)


def train_prior(method: str, settings: PriorSettings, job: TrainJob) -> dict:
    """Encodes the images with the VQ run and trains ``method``'s prior on the grids."""
    vq_dir, _ = vq_run(settings)
    vq_model, tokens = run_tokens(vq_dir, job)
    prior = build_prior(method, settings, vq_model.config.num_codes, tokens["train"].shape[1:])
    augmented = _augmented(job.train_set, vq_model, settings.seed) if method == "performer" and settings.augment \
        else None
    if method == "performer" and settings.iltm_rounds > 1:
        rounds = settings.iltm_rounds
        iltm_fit(prior, tokens["train"], rounds, config_of(settings, max_minutes=settings.minutes / rounds),
                 out_dir=job.out / "iltm", percentile=settings.iltm_percentile, val_tokens=tokens["val"],
                 resume=job.resume, progress=job.progress, grids=augmented)
        if job.main:
            checkpoint.save_model(prior, job.out / "model" / "model.safetensors")
        return {"iltm_rounds": rounds}
    if method == "masked":  # random hidden sets keyed by (seed, epoch, grid); validation keeps epoch 0's
        grids = MaskedGrids(tokens["train"], settings.seed), MaskedGrids(tokens["val"], settings.seed + 1)
    else:
        grids = TokenGrids(tokens["train"]) if augmented is None else augmented(None), TokenGrids(tokens["val"])
    return history_summary(job.fit(prior, config_of(settings), train_set=grids[0], val_set=grids[1],
                                   input_key="tokens"))


def load_prior(run: Run, vq_model, device):
    """(prior in eval mode on ``device``, the run's token grids {"train", "val"})."""
    tokens = checkpoint.read(run.dir / "tokens.safetensors")[0]
    prior = build_prior(run.record["method"], run.settings, vq_model.config.num_codes, tokens["train"].shape[1:])
    prior.load_state_dict(checkpoint.read(run.dir / "model" / "model.safetensors")[0])
    return prior.to(device).eval(), tokens


def _threshold(run: Run, vq_model, prior, tokens, kind: str, options: ScoreOptions):
    """(token NLL threshold, the percentile that set it or None when given)."""
    if options.token_threshold is not None:
        return float(options.token_threshold), None
    # the masked prior has no paper percentiles: the GPT-2 prior's (Sample-wise, Pixel-wise)
    method = "gpt2" if run.record["method"] == "masked" else run.record["method"]
    paper = dict(zip(("sample", "pixel", "light"), PAPER_PERCENTILES[(vq_kind(vq_model), method)]))
    pct = options.percentile if options.percentile is not None else paper[kind]
    return nll_threshold(prior, tokens["val"].to(options.device), pct, precision=options.prior_precision), pct


def vq_kind(vq_model) -> str:
    """Which of the density paper's VQ models ``vq_model`` is, for its threshold tables:
    "VQGAN", or "VQVAE" for its VQ-VAE (a VQ-GAN without the GAN) and, borrowing those
    percentiles, the Performer paper's VQ-VAE."""
    if isinstance(vq_model, VQGAN) and not vq_model.config.adversarial:
        return "VQVAE"
    return type(vq_model).__name__


def _loader(make, kind: str):
    """A Scorer.load for a prior run: VQ model, prior and threshold, then ``make``."""
    def load(run: Run, options: ScoreOptions):
        vq_model = run.model("vq.safetensors").to(options.device)
        prior, tokens = load_prior(run, vq_model, options.device)
        threshold, pct = _threshold(run, vq_model, prior, tokens, kind, options)
        scorer = make(run, options, vq_model, prior, threshold, pct)
        scorer.percentile = pct
        return scorer
    return load


def _restoring(run: Run, options: ScoreOptions) -> dict:
    return dict(restorations=options.restorations or 5, seed=run.settings.seed,
                decode_precision=options.decode_precision,
                prior_precision=options.prior_precision)


def _marker(run: Run, options: ScoreOptions, vq_model, pct):
    """(raster prior, its NLL threshold) of the --marker run on the same VQ model: the same
    percentile of its validation NLLs, or the same given token threshold."""
    marker_dir = Path(options.marker)
    marker_run = open_run(marker_dir, trained=False)
    method = marker_run.record["method"]
    if "raster-prior" not in registry.get(method).tags:
        raise RunError(f"--marker {marker_dir}: a {method} run; it must be a gpt2, performer or pixelsnail run")
    if marker_run.record.get("status") != "trained":
        raise RunError(f"--marker {marker_dir}: its training did not finish (status "
                       f"{marker_run.record.get('status')!r})")
    if (marker_dir / "vq.safetensors").read_bytes() != (run.dir / "vq.safetensors").read_bytes():
        raise RunError(f"--marker {marker_dir}: trained on another VQ model than {run.dir}; train it with the "
                       "masked run's --vq")
    marker, tokens = load_prior(marker_run, vq_model, options.device)
    if options.token_threshold is not None:
        return marker, float(options.token_threshold)
    return marker, nll_threshold(marker, tokens["val"].to(options.device), pct, precision=options.prior_precision)


def _masked_sample(run, options, vq_model, prior, threshold, pct):
    marker, mark = _marker(run, options, vq_model, pct) if options.marker is not None else (None, None)
    return MaskedContextScorer(vq_model, prior, threshold, mark, marker, prior_precision=options.prior_precision)


def _masked_restore(run, options, vq_model, prior, threshold, pct):
    # u: over the marker's threshold when there is one, else over the masked prior's
    marker, mark = _marker(run, options, vq_model, pct) if options.marker is not None else (None, threshold)
    passes = run.settings.passes if options.passes is None else options.passes
    return MaskedRestorationScorer(vq_model, prior, mark, passes=passes, marker=marker, **_restoring(run, options))


def _kde(run: Run, options: ScoreOptions, vq_model, prior, threshold, pct):
    """Tokens with p < exp(-lambda_P) resampled; the Performer paper's 20 restorations x 20
    dropout decodes on a run trained with preset=paper, else 5 x 1 (a CPU's budget)."""
    paper = run.settings.preset == "paper"
    restoring = {**_restoring(run, options), "restorations": options.restorations or (20 if paper else 5)}
    return KDEScorer(vq_model, prior, math.exp(-threshold), dropout_decodes=options.dropout_decodes or
                     (20 if paper else 1), **restoring)


def _regenerative(run: Run, options: ScoreOptions):
    return RegenerativeScorer(run.model("vq.safetensors").to(options.device),
                              decode_precision=options.decode_precision)


RASTER_SCORERS = {
    "pixel": Scorer("pixel", _loader(lambda run, o, vq, prior, t, _: PixelWiseScorer(vq, prior, t, **_restoring(run, o)),
                                     "pixel"), decodes=True, prior=True),
    "sample": Scorer("sample", _loader(lambda run, o, vq, prior, t, _: SampleWiseScorer(
        vq, prior, t, prior_precision=o.prior_precision), "sample"), prior=True),
    "light": Scorer("light", _loader(lambda run, o, vq, prior, t, _: LightPixelWiseScorer(
        vq, prior, t, **_restoring(run, o)), "light"), decodes=True, prior=True),
    # tokens with p < exp(-lambda_P) resampled
    "kde": Scorer("kde", _loader(_kde, "pixel"), decodes=True, prior=True, dropout=True),
    "regenerative": Scorer("regenerative", _regenerative, decodes=True),
}
MASKED_SCORERS = (Scorer("masked-sample", _loader(_masked_sample, "sample"), prior=True, marks=True),
                  Scorer("masked-restore", _loader(_masked_restore, "pixel"), decodes=True, prior=True, marks=True,
                         in_paints=True))


def _raster(first: str):
    """The raster priors' scorers, ``first`` the default."""
    return (RASTER_SCORERS[first],) + tuple(s for n, s in RASTER_SCORERS.items() if n != first)


def _prior_method(name: str, help: str, settings, scorers, model) -> Method:
    return Method(name, help, settings, lambda s, job: train_prior(name, s, job), scorers, models=(model,),
                  prepare=take_vq_transform, tags=() if name == "masked" else ("raster-prior",))


GPT2 = _prior_method("gpt2", "a GPT-2 prior over the token grids of a trained vqvae/vqgan run (--vq RUN)",
                     PriorSettings, _raster("pixel"), (GPT2Prior, GPT2PriorConfig))
PIXELSNAIL = _prior_method("pixelsnail", "a PixelSNAIL prior over a VQ run's token grids (--vq RUN); width 64 on a "
                           "CPU (the paper: 128)", PixelSNAILSettings, _raster("pixel"), (PixelSNAIL, PixelSNAILConfig))
PERFORMER = _prior_method("performer", "a Performer (FAVOR+) prior over a VQ run's token grids (--vq RUN), trained "
                          "by ILTM in iltm_rounds rounds", PerformerSettings,
                          _raster("kde"),
                          (PerformerPrior, PerformerPriorConfig))
MASKED = _prior_method("masked", "a bidirectional masked-token prior over a VQ run's token grids (--vq RUN), "
                       "trained on random masks of random ratio, for masked-context scoring (the density paper's "
                       "eq. 20): masked-sample scores the unusual tokens given only the normal ones, masked-restore "
                       "in-paints them; the GPT-2 prior's sizes", MaskedSettings, MASKED_SCORERS,
                       (MaskedTokenPrior, MaskedPriorConfig))
