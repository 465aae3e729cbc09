"""What a method is: its settings, how it trains into a run folder and the scorers a run
of it offers. A method defined outside vqfast is one ``Method`` given to
``vqfast.methods.register`` (or named by a ``vqfast.methods`` entry point); the CLI then
trains, scores and reports it like the built-in ones (README: "Adding a model or scorer").
"""

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Type

import torch

from vqfast import checkpoint
from vqfast.methods.settings import Settings
from vqfast.training import TrainConfig, Trainer


class RunError(ValueError):
    """A run folder that is missing, of another method, or changed since, or a request a
    run cannot serve; the message says what and how to fix it."""


@dataclass
class TrainJob:
    """Where and how a method trains: the run folder ``out``, the split images (Datasets
    of {"image": (C, H, W) float32, ...}; ``val_set`` None when every image trains), and
    the run's flags. ``main``: this process writes the run's shared files (rank 0)."""

    out: Path
    train_set: torch.utils.data.Dataset
    val_set: Optional[torch.utils.data.Dataset]
    resume: bool = False
    overwrite: bool = False
    device: Optional[str] = None
    progress: bool = True
    echo: Callable = print
    main: bool = True

    def fit(self, model: torch.nn.Module, config: TrainConfig, folder: str = "model", *, train_set=None,
            val_set="same", input_key: str = "image"):
        """Trains ``model`` with the Trainer into ``out/folder`` (resuming when the job
        does); returns the Trainer's history. ``train_set``/``val_set``: other data than
        the job's (``val_set=None``: no validation)."""
        trainer = Trainer(model, self.train_set if train_set is None else train_set,
                          self.val_set if isinstance(val_set, str) else val_set, config, out_dir=self.out / folder,
                          device=self.device, progress=self.progress, input_key=input_key)
        return trainer.fit(resume=self.resume, overwrite=self.overwrite)


def config_of(settings: Settings, **over) -> TrainConfig:
    """The TrainConfig of the common settings (epochs, batch, lr, minutes, seed), ``over`` applied."""
    base = dict(epochs=settings.epochs, batch_size=settings.batch_size, lr=settings.lr,
                max_minutes=settings.minutes, seed=settings.seed)
    return TrainConfig(**{**base, **over})


def history_summary(history) -> Dict:
    """What run.json keeps of a Trainer history."""
    last = history[-1]
    return {"epochs": last["epoch"], "steps": last["step"], "stopped": last["stopped"], "final_train": last["train"],
            "final_val": last["val"]}


@dataclass(frozen=True)
class ScoreOptions:
    """``vqfast score``'s scorer flags (see load_scorer). The fields a scorer does not
    declare (Scorer.decodes, .prior, .marks, .in_paints) are refused before it loads."""

    percentile: Optional[float] = None
    token_threshold: Optional[float] = None
    restorations: Optional[int] = None  # None: the scorer's default (5; KDE on a paper-preset run 20)
    decode_precision: str = "float32"
    prior_precision: str = "float32"
    marker: Optional[Path] = None
    passes: Optional[int] = None
    dropout_decodes: Optional[int] = None  # None: 1 (KDE on a paper-preset run: 20)
    device: torch.device = torch.device("cpu")


@dataclass
class Run:
    """A trained run folder as a scorer loader sees it."""

    dir: Path
    record: Dict
    settings: Settings

    def model(self, name: str, expected: Optional[str] = None) -> torch.nn.Module:
        """The save_model file ``name`` (relative to the run) in eval mode."""
        return checkpoint.load_model(self.dir / name, expected=expected).eval()


@dataclass(frozen=True)
class Scorer:
    """A scorer a run offers: ``load(run, options) -> object with .score(images)``. The
    flags: ``decodes`` (--decode-precision: it decodes VQ tokens), ``prior`` (--prior-precision,
    --percentile: it runs a token prior), ``marks`` (--marker), ``in_paints`` (--passes),
    ``dropout`` (--dropout-decodes: it decodes each restoration with decoder dropout)."""

    name: str
    load: Callable[[Run, ScoreOptions], object]
    decodes: bool = False
    prior: bool = False
    marks: bool = False
    in_paints: bool = False
    dropout: bool = False


@dataclass(frozen=True)
class Method:
    """A trainable method. ``train(settings, job) -> summary`` (a JSON-able dict for
    run.json); ``scorers``: the first is the default; ``models``: (module class, config
    class) pairs its checkpoints hold, so ``checkpoint.load_model`` rebuilds them;
    ``prepare(settings) -> settings``: fills settings from elsewhere before the images are
    read (a prior takes its VQ run's size); ``val_optional``: val_fraction 0 is allowed
    (the method needs no validation images to train); ``tags``: what other methods look
    for in it: "vq" (a VQ model a prior's --vq names), "raster-prior" (a causal prior a
    --marker names)."""

    name: str
    help: str
    settings: Type[Settings]
    train: Callable[[Settings, TrainJob], Dict]
    scorers: Tuple[Scorer, ...]
    models: Tuple[Tuple[type, type], ...] = ()
    prepare: Optional[Callable[[Settings], Settings]] = None
    val_optional: bool = False
    tags: Tuple[str, ...] = field(default=())

    def scorer(self, name: str) -> Scorer:
        for s in self.scorers:
            if s.name == name:
                return s
        raise RunError(f"a {self.name} run scores with {', '.join(s.name for s in self.scorers)}, not {name}")
