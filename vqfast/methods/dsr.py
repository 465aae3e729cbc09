"""DSR as a method: its three stages (discrete model, object-specific decoder, upsampling
module) trained in turn by ``train_dsr`` into ``stage1..3/``, the model in
``model.safetensors``."""

from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from vqfast import checkpoint
from vqfast.data import DSRAnomalies
from vqfast.methods.api import Method, Run, Scorer, ScoreOptions, TrainJob, config_of, history_summary
from vqfast.methods.settings import Settings, setting
from vqfast.models import DSR, DSRConfig
from vqfast.models.dsr import paper_config
from vqfast.scorers import DSRScorer
from vqfast.training import TrainConfig, Trainer


@dataclass
class DSRSettings(Settings):
    size: int = setting(128, "image side in pixels", paper=256)
    channels: int = setting(3, "3 (the authors' RGB: colour data stays colour, grey is replicated) or 1 "
                            "(grey, slightly faster)")
    batch_size: int = setting(8, "images a training step")
    minutes: float = setting(25.0, "training time budget in minutes, shared by the stages as split says")
    lr: float = setting(2e-4, "learning rate of stages 2 and 3")
    general: Optional[str] = setting(None, "the authors' pretrained general-object model (stage 1 then skipped)",
                                     file=True)
    steps: List[int] = setting([3000, 450, 120], "steps of stages 1, 2, 3 (the authors': scaled to the budget)")
    split: List[float] = setting([0.3, 0.55, 0.15], "share of the minutes each stage may take")
    lr_general: float = setting(1e-3, "learning rate of stage 1")

    def size_rule(self):
        return 32, 64  # 1/8 latents pooled twice more


def train_dsr(model: DSR, train_set, configs: Dict[int, TrainConfig], out, *, val_set=None, device=None,
              resume: bool = False, overwrite: bool = False, progress: bool = True, seed: int = 0,
              echo=print) -> Dict[str, dict]:
    """Trains ``model``'s stages ``configs`` names (1, 2, 3, in order) into
    ``out/stage<N>``: stage 1 on the images (validated on ``val_set``), stages 2 and 3 on
    DSRAnomalies of them drawn with seed ``seed + stage``. Returns each stage's summary."""
    summaries = {}
    for stage in sorted(configs):
        model.set_stage(stage)
        data = train_set if stage == 1 else DSRAnomalies(train_set, stage, seed=seed + stage)
        history = Trainer(model, data, val_set if stage == 1 else None, configs[stage], out_dir=Path(out) / f"stage{stage}",
                          device=device, progress=progress, input_key=DSR.STAGE_INPUTS[stage]).fit(
            resume=resume, overwrite=overwrite)
        summaries[str(stage)] = history_summary(history)
        echo(f"DSR stage {stage}: {history[-1]['step']} steps ({history[-1]['stopped'] or 'epoch budget used'})")
    return summaries


def stage_configs(settings: DSRSettings, stages: Sequence[int] = (1, 2, 3)) -> Dict[int, TrainConfig]:
    """Each stage's TrainConfig: its steps and share of the minutes, stage 2's lr step at
    80 %, early stopping in stage 1 only."""
    configs = {}
    for stage in stages:
        steps = settings.steps[stage - 1]
        configs[stage] = config_of(settings, epochs=10_000, lr=settings.lr_general if stage == 1 else settings.lr,
                                   max_steps=steps, lr_milestones=(int(0.8 * steps),) if stage == 2 else (),
                                   early_stopping=stage == 1, max_minutes=settings.minutes * settings.split[stage - 1],
                                   seed=settings.seed + stage)
    return configs


def train_dsr_method(settings: DSRSettings, job: TrainJob) -> dict:
    model = DSR(paper_config(settings.channels) if settings.general else DSRConfig(in_channels=settings.channels))
    stages = {}
    if settings.general:
        model.load_general(settings.general)
        stages["1"] = {"source": f"the authors' pretrained file {settings.general}"}
    configs = stage_configs(settings, (2, 3) if settings.general else (1, 2, 3))
    stages.update(train_dsr(model, job.train_set, configs, job.out, val_set=job.val_set, device=job.device,
                            resume=job.resume, overwrite=job.overwrite, progress=job.progress, seed=settings.seed,
                            echo=job.echo))
    if job.main:
        checkpoint.save_model(model, job.out / "model.safetensors")
    return {"stages": stages, "general_model": model.general_origin}


def load_dsr(run: Run, options: ScoreOptions) -> DSRScorer:
    return DSRScorer(run.model("model.safetensors", "DSR").to(options.device))


DSR_METHOD = Method("dsr", "DSR in its three stages (discrete model, object-specific decoder, upsampling module) "
                    "with the authors' step counts scaled to the budget (--set general=FILE loads their pretrained "
                    "stage 1)", DSRSettings, train_dsr_method, (Scorer("dsr", load_dsr),), models=((DSR, DSRConfig),))
