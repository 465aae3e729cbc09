"""One training loop for every vqfast model.

Adam/AdamW/SGD with momentum, exponential learning-rate decay per epoch and step
milestones (x milestone_gamma after given optimiser steps: the iteration schedules of DSR),
bf16 autocast on CUDA, gradient clipping, the papers' early-stopping rule or a time or step
budget, tqdm progress, a JSON-lines log and an atomic checkpoint after every epoch; ``fit(resume=True)`` continues
from the last checkpoint exactly (same step, optimiser state, RNG state and data
order).

The model provides ``training_loss(images) -> {"loss": scalar, ...}`` (or of a dict of
item fields, with a tuple ``input_key``) and
``config_dict()``. A model with ``discriminator_parameters()`` (a GAN) gets a second
optimiser for them, stepped on the ``"disc_loss"`` term after the generator step.
"""

import functools
import json
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from tqdm import tqdm

from vqfast import checkpoint


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 16
    lr: float = 1e-4
    optimizer: str = "adam"  # or "adamw", or "sgd" (with momentum)
    momentum: float = 0.9  # sgd only
    betas: Tuple[float, float] = (0.9, 0.999)  # adam/adamw; taming's VQ-GAN recipe: (0.5, 0.9)
    weight_decay: float = 0.0
    lr_gamma: float = 1.0  # multiplies the learning rate after every epoch
    grad_clip: Optional[float] = None  # max global gradient norm
    amp: bool = True  # bf16 autocast, on CUDA only
    early_stopping: bool = True
    patience: int = 5  # stop once validation loss exceeded training loss more than this often
    check_every: int = 2  # epochs between validation checks
    max_minutes: Optional[float] = None  # wall-clock budget, checked after every step
    max_steps: Optional[int] = None  # iteration budget: training ends after this many optimiser steps
    lr_milestones: Tuple[int, ...] = ()  # steps after which the learning rate is multiplied by milestone_gamma
    milestone_gamma: float = 0.1
    seed: int = 0


def cuda_rng_states(tensors: Dict[str, torch.Tensor]) -> List[torch.Tensor]:
    """A checkpoint's rng.cuda.<i> states in device order (by number: as text, "rng.cuda.10"
    would come before "rng.cuda.2" and restore to the wrong device)."""
    keys = [k for k in tensors if k.startswith("rng.cuda.")]
    return [tensors[k] for k in sorted(keys, key=lambda k: int(k.rsplit(".", 1)[1]))]


class RunExistsError(FileExistsError):
    """fit() without resume or overwrite into a folder that holds a run; names the folder."""


class EarlyStopping:
    """The papers' rule: count the checks at which validation loss exceeds training
    loss; stop once that happened more than ``patience`` times."""

    def __init__(self, patience: int = 5, exceeded: int = 0):
        self.patience, self.exceeded = patience, exceeded

    def update(self, train_loss: float, val_loss: float) -> bool:
        if val_loss > train_loss:
            self.exceeded += 1
        return self.exceeded > self.patience


class Trainer:
    """Args:
    model: an nn.Module with training_loss and config_dict.
    train_set, val_set: datasets of items with an "image" (see vqfast.data).
    config: TrainConfig.
    out_dir: where ``checkpoint.safetensors``, ``model.safetensors`` (the weights
        alone) and ``metrics.jsonl`` go; None keeps nothing on disk (no resume).
    device: defaults to CUDA when available.
    loss_fn: (model, images) -> dict with "loss"; default model.training_loss.
    input_key: the item field fed to the model ("image"; "tokens" for priors over
        vqfast.data.TokenGrids), or a tuple of fields, fed as a dict (DSR's stages).

    Under torchrun (a torch.distributed process group of W ranks) training is data
    parallel: every epoch's seeded permutation is the same on all ranks, rank r takes
    its items r, r + W, ... (the permutation cut to a multiple of W, so every rank runs
    the same number of steps), so global batch k is the single-process batch k of
    ``batch_size * W`` items; after each backward the gradients are summed across ranks
    weighted by each rank's item count, which makes them that global batch's gradient.
    Floating-point buffers (BatchNorm statistics, EMA codebooks) are averaged after each
    step, what a first forward initialises from its batch (the VQ codebook) is rank 0's
    after the first step, loss terms reduced over ranks, the stopping decision taken on rank 0, and only
    rank 0 writes checkpoints and logs. This is DistributedDataParallel's arithmetic
    without its module wrapper: the wrapper's reducer expects one backward per forward
    over every parameter, and the VQ-GAN's generator and discriminator losses are two
    backwards from one forward.
    """

    def __init__(self, model: torch.nn.Module, train_set, val_set=None, config: Optional[TrainConfig] = None, *,
                 out_dir=None, device=None, loss_fn: Optional[Callable] = None, progress: bool = True,
                 input_key: str = "image"):
        config = config or TrainConfig()
        if config.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd', got {config.optimizer!r}")
        if len(train_set) == 0:
            raise ValueError("train_set is empty")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device)
        self.train_set, self.val_set, self.config = train_set, val_set, config
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.loss_fn = loss_fn or (lambda m, x: m.training_loss(x))
        self.input_key = input_key
        if config.optimizer == "sgd":
            opt_cls = functools.partial(torch.optim.SGD, momentum=config.momentum)
        else:
            opt_cls = functools.partial(torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW,
                                        betas=tuple(config.betas))
        disc = list(model.discriminator_parameters()) if hasattr(model, "discriminator_parameters") else []
        disc_ids = {id(p) for p in disc}
        self.params = {"gen": [p for p in self.model.parameters() if p.requires_grad and id(p) not in disc_ids]}
        if disc:
            self.params["disc"] = disc
        self.optimizers = {k: opt_cls(v, lr=config.lr, weight_decay=config.weight_decay) for k, v in self.params.items()}
        self.schedulers = {k: torch.optim.lr_scheduler.ExponentialLR(o, gamma=config.lr_gamma)
                           for k, o in self.optimizers.items()}
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if dist.is_available() and \
            dist.is_initialized() else (0, 1)
        self.progress = progress and self.rank == 0
        self.epoch = self.step = 0
        self._deadline = None  # monotonic time at which fit()'s time budget ends
        self._out_of_time = False  # the last epoch ended early on the budget
        self._stepped = set()  # the optimisers stepped in the current epoch
        self.stopping = EarlyStopping(config.patience)
        self.history: List[dict] = []

    # -- one epoch -------------------------------------------------------------
    def _loader(self, dataset, shuffle: bool):
        # Seeded per epoch: the data order after a resume is the one it would have been,
        # and every rank draws the same permutation.
        g = torch.Generator().manual_seed(self.config.seed * 100_003 + self.epoch)
        order = torch.randperm(len(dataset), generator=g).tolist() if shuffle else list(range(len(dataset)))
        if shuffle and self.world > 1:
            order = order[: len(order) - len(order) % self.world]
        return torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, order[self.rank::self.world]),
                                           batch_size=self.config.batch_size, shuffle=False)

    def _all_sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            dist.all_reduce(values)
        return values

    def _autocast(self):
        enabled = self.config.amp and self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=enabled)

    def _run(self, dataset, train: bool) -> Dict[str, float]:
        self.model.train(train)
        sums: Dict[str, float] = {}
        counts: Dict[str, int] = {}  # per term: the GAN terms appear from disc_start on
        if train and hasattr(dataset, "set_epoch"):  # e.g. AugmentedDataset: draws keyed by (epoch, item)
            dataset.set_epoch(self.epoch)
        bar = tqdm(self._loader(dataset, shuffle=train), desc=f"epoch {self.epoch + 1} {'train' if train else 'val'}",
                   disable=not self.progress, leave=False)
        for batch in bar:
            if isinstance(self.input_key, (tuple, list)):
                x = {k: batch[k].to(self.device, non_blocking=True) for k in self.input_key}
                n = x[self.input_key[0]].shape[0]
            else:
                x = batch[self.input_key].to(self.device, non_blocking=True)
                n = x.shape[0]
            with torch.set_grad_enabled(train), self._autocast():
                terms = self.loss_fn(self.model, x)
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss {float(loss.detach())} at epoch {self.epoch + 1}, step {self.step}")
            if train:
                self._step("gen", loss, n)
                if "disc" in self.optimizers and "disc_loss" in terms:
                    self._step("disc", terms["disc_loss"], n)  # its graph starts at detached images
                self._sync_buffers()
                if self.step == 0:  # initialisations from a first batch (the VQ codebook's): rank 0's
                    self._sync_parameters()
                self.step += 1
                if self.step in self.config.lr_milestones:
                    for opt in self.optimizers.values():
                        for group in opt.param_groups:
                            group["lr"] *= self.config.milestone_gamma
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * n
                counts[k] = counts.get(k, 0) + n
            bar.set_postfix(loss=f"{sums['loss'] / counts['loss']:.4g}")
            if train and self.config.max_steps is not None and self.step >= self.config.max_steps:
                break
            if train and self._deadline is not None:
                late = float(self._all_sum(torch.tensor([float(time.monotonic() > self._deadline)],
                                                        dtype=torch.float64)))
                if late > 0:  # every rank sees the same sum: all stop at this step
                    self._out_of_time = True
                    break  # the epoch ends here; fit() records the budget as the reason
        if self.world > 1:  # every rank sees every term (the GAN terms start on all ranks at once)
            keys = sorted(sums)
            totals = self._all_sum(torch.tensor([[sums[k], counts[k]] for k in keys], dtype=torch.float64))
            sums, counts = {k: float(t[0]) for k, t in zip(keys, totals)}, {k: float(t[1]) for k, t in zip(keys, totals)}
        return {k: v / counts[k] for k, v in sums.items()}

    def _step(self, name: str, loss: torch.Tensor, n: int = 1) -> None:
        for opt in self.optimizers.values():  # the generator loss also reaches the discriminator
            opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.world > 1:
            total = float(self._all_sum(torch.tensor([float(n)], dtype=torch.float64)))
            for p in self.params[name]:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                p.grad.mul_(n / total)
                self._all_sum(p.grad)
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.params[name], self.config.grad_clip)
        self.optimizers[name].step()
        self._stepped.add(name)

    @torch.no_grad()
    def _sync_buffers(self) -> None:
        if self.world > 1:
            for b in self.model.buffers():
                if b.is_floating_point():
                    self._all_sum(b).div_(self.world)

    @torch.no_grad()
    def _sync_parameters(self) -> None:
        if self.world > 1:  # every rank starts from rank 0's weights
            for t in [*self.model.parameters(), *self.model.buffers()]:
                dist.broadcast(t.data, src=0)

    @torch.no_grad()
    def evaluate(self, dataset) -> Dict[str, float]:
        """Mean loss terms over ``dataset`` in eval mode."""
        return self._run(dataset, train=False)

    # -- the loop --------------------------------------------------------------
    RUN_FILES = ("checkpoint.safetensors", "model.safetensors", "metrics.jsonl")

    def fit(self, resume: bool = False, overwrite: bool = False) -> List[dict]:
        """Trains until the epoch budget, the early-stopping rule or the time budget
        ends it; returns the per-epoch records (also in metrics.jsonl).

        resume: continue the run in out_dir (on a finished one: return its records);
            with no checkpoint there yet, start a fresh run and say so (a warning).
        overwrite: start afresh in an out_dir that holds a run, deleting its
            checkpoint, weights and log. Without resume or overwrite such a folder is
            refused (RunExistsError), so two runs never mix in one log.
        """
        if resume and overwrite:
            raise ValueError("resume and overwrite exclude each other")
        existing = [n for n in self.RUN_FILES if self.out_dir is not None and (self.out_dir / n).exists()]
        if resume and self.out_dir is None:
            raise ValueError("resume needs out_dir")
        if resume and (self.out_dir / "checkpoint.safetensors").is_file():
            self._load()
        elif resume:
            warnings.warn(f"{self.out_dir}: no checkpoint.safetensors to resume from; starting a fresh run",
                          UserWarning, stacklevel=2)
        elif existing and not overwrite:
            raise RunExistsError(f"{self.out_dir} already holds a training run ({', '.join(existing)}): "
                                 "pass resume=True to continue it, overwrite=True to replace it, or another out_dir")
        elif existing and self.rank == 0:
            for name in existing:
                (self.out_dir / name).unlink()
        if self.world > 1:  # every rank checked the folder before rank 0 changed it
            dist.barrier()
        self._sync_parameters()
        start = time.monotonic()
        # Checked after every step, so the budget holds to within one step; with several ranks
        # they agree through one all-reduce per step (beside the gradients' own).
        self._deadline = start + 60 * self.config.max_minutes if self.config.max_minutes is not None else None
        self._out_of_time = False
        # A run that early stopping or its time budget ended is finished: resuming it is a no-op.
        stop_reason = self.history[-1].get("stopped") if self.history else None
        with tqdm(total=self.config.epochs, initial=self.epoch, desc="training", disable=not self.progress) as bar:
            while self.epoch < self.config.epochs and stop_reason is None:
                t0 = time.monotonic()
                train_terms = self._run(self.train_set, train=True)
                self.epoch += 1
                # an optimiser that took no step this epoch (the discriminator before disc_start)
                # keeps its learning rate: its decay starts when its training does
                for name in sorted(self._stepped):
                    self.schedulers[name].step()
                self._stepped.clear()
                record = {"epoch": self.epoch, "step": self.step, "lr": self.schedulers["gen"].get_last_lr()[0],
                          "seconds": time.monotonic() - t0, "train": train_terms, "val": None}
                checked = self.val_set is not None and (self.epoch % self.config.check_every == 0)
                if checked:
                    record["val"] = self.evaluate(self.val_set)
                    stop = self.stopping.update(train_terms["loss"], record["val"]["loss"])
                    record["val_exceeded_train"] = self.stopping.exceeded
                    if stop and self.config.early_stopping:
                        stop_reason = f"validation loss exceeded training loss {self.stopping.exceeded} times"
                if self.config.max_steps is not None and self.step >= self.config.max_steps:
                    stop_reason = stop_reason or f"step budget of {self.config.max_steps} used"
                if self.config.max_minutes is not None and (self._out_of_time or
                                                            time.monotonic() - start > 60 * self.config.max_minutes):
                    stop_reason = stop_reason or f"time budget of {self.config.max_minutes} min used"
                if self.world > 1:  # clocks differ: rank 0 decides, so all ranks run the same epochs
                    box = [stop_reason]
                    dist.broadcast_object_list(box, src=0)
                    stop_reason = box[0]
                record["stopped"] = stop_reason
                self.history.append(record)
                self._save(record)
                bar.update(1)
                bar.set_postfix(loss=f"{train_terms['loss']:.4g}", val=record["val"] and f"{record['val']['loss']:.4g}")
        return self.history

    # -- checkpoints -----------------------------------------------------------
    def _save(self, record: dict) -> None:
        if self.out_dir is None or self.rank != 0:
            return
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        optims = {k: o.state_dict() for k, o in self.optimizers.items()}
        for opt_name, optim in optims.items():
            for pid, state in optim["state"].items():
                for name, value in state.items():
                    tensors[f"optim.{opt_name}.{pid}.{name}"] = value if torch.is_tensor(value) else torch.tensor(value)
        tensors["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            for i, s in enumerate(torch.cuda.get_rng_state_all()):
                tensors[f"rng.cuda.{i}"] = s
        state = {"epoch": self.epoch, "step": self.step, "exceeded": self.stopping.exceeded, "history": self.history,
                 "param_groups": {k: o["param_groups"] for k, o in optims.items()},
                 "schedulers": {k: sch.state_dict() for k, sch in self.schedulers.items()},
                 "train_config": asdict(self.config)}
        meta = {"config": json.dumps(self.model.config_dict()), "trainer": json.dumps(state)}
        checkpoint.write_atomic(self.out_dir / "checkpoint.safetensors", tensors, meta)
        checkpoint.save_model(self.model, self.out_dir / "model.safetensors")
        # After the checkpoint: a crash in between loses a log line that resume rewrites.
        with open(self.out_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def _load(self) -> None:
        path = self.out_dir / "checkpoint.safetensors"
        tensors, meta = checkpoint.read(path)
        try:
            state = json.loads(meta["trainer"])
        except (KeyError, json.JSONDecodeError) as exc:
            raise checkpoint.CheckpointError(f"{path}: no trainer state ({exc})") from exc
        if json.loads(meta["config"]) != json.loads(json.dumps(self.model.config_dict())):
            raise checkpoint.CheckpointError(f"{path}: was written for another model config")
        model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
        try:
            self.model.load_state_dict(model_state, strict=True)
        except RuntimeError as exc:
            raise checkpoint.CheckpointError(f"{path}: weights do not fit this model ({exc})") from exc
        optim_state: Dict[str, Dict[int, dict]] = {k: {} for k in self.optimizers}
        for k, v in tensors.items():
            if k.startswith("optim."):
                _, opt_name, pid, name = k.split(".", 3)
                optim_state[opt_name].setdefault(int(pid), {})[name] = v.to(self.device)
        for k, opt in self.optimizers.items():
            opt.load_state_dict({"state": optim_state[k], "param_groups": state["param_groups"][k]})
            self.schedulers[k].load_state_dict(state["schedulers"][k])
        torch.set_rng_state(tensors["rng.cpu"])
        cuda_states = cuda_rng_states(tensors)
        if cuda_states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_states)
        self.epoch, self.step = state["epoch"], state["step"]
        self.stopping.exceeded = state["exceeded"]
        self.history = state["history"]
        if self.rank == 0:
            with open(self.out_dir / "metrics.jsonl", "w") as f:  # the checkpoint's history is authoritative
                f.writelines(json.dumps(r) + "\n" for r in self.history)
