"""The backbone setting of the feature methods (SGFR, the feature AE): a name, or "auto"
settled once, before the run is recorded, so scoring rebuilds the same network."""

from vqfast.methods.settings import SettingError
from vqfast.models.backbones import NAMES, choose_backbone

BACKBONE_HELP = ("auto (the papers' wide_resnet50_2 when its weights are at hand, else efficientnet_lite0 when "
                 "vqfast[weights] is installed), or one of " + ", ".join(NAMES))


def check_backbone(name: str) -> None:
    if name != "auto" and name not in NAMES:
        raise SettingError(f"setting backbone: takes auto or one of {', '.join(NAMES)}, got {name!r}")


def take_backbone(settings):
    """Settles "auto" before the run is recorded, so scoring rebuilds the same network."""
    settings.backbone = choose_backbone(settings.backbone, settings.weights)
    return settings
