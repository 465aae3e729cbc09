"""Models: the VQ layer, the VQ autoencoders, the priors and the backbones, and MODELS,
the classes a checkpoint may name (``register_model`` adds one)."""

from vqfast.models.backbones import Backbone
from vqfast.models.base import VQAutoencoder
from vqfast.models.dsr import DSR, DSRConfig
from vqfast.models.feature_ae import FeatureAE, FeatureAEConfig
from vqfast.models.gpt2_prior import FastGPT2, GPT2Prior, GPT2PriorConfig
from vqfast.models.lpips import LPIPS
from vqfast.models.masked_prior import MaskedPriorConfig, MaskedTokenPrior
from vqfast.models.performer import FastPerformer, PerformerPrior, PerformerPriorConfig
from vqfast.models.pixelsnail import PixelSNAIL, PixelSNAILConfig
from vqfast.models.vq import VectorQuantizer, VQOutput
from vqfast.models.vqgan import VQGAN, PatchDiscriminator, VQGANConfig, adaptive_weight
from vqfast.models.vqvae import VQVAE, VQVAEConfig, spectral_loss

__all__ = ["Backbone", "DSR", "DSRConfig", "FastGPT2", "FastPerformer", "FeatureAE", "FeatureAEConfig", "GPT2Prior", "GPT2PriorConfig", "PixelSNAIL",
           "PixelSNAILConfig", "LPIPS", "MaskedPriorConfig", "MaskedTokenPrior", "PatchDiscriminator", "PerformerPrior", "PerformerPriorConfig", "VQAutoencoder", "VQGAN", "VQGANConfig", "VQOutput", "VQVAE",
           "VQVAEConfig", "VectorQuantizer", "adaptive_weight", "spectral_loss",
           "MODELS", "register_model", "unregister_model"]

# checkpoint.load_model rebuilds these by the "model" name in a checkpoint's config.
MODELS = {cls.__name__: (cls, config) for cls, config in (
    (VQVAE, VQVAEConfig), (VQGAN, VQGANConfig), (FeatureAE, FeatureAEConfig), (GPT2Prior, GPT2PriorConfig),
    (PixelSNAIL, PixelSNAILConfig), (PerformerPrior, PerformerPriorConfig), (DSR, DSRConfig),
    (MaskedTokenPrior, MaskedPriorConfig))}


def register_model(cls: type, config_cls: type) -> None:
    """Lets checkpoint.load_model rebuild ``cls(config_cls(**config))`` from a checkpoint
    whose config names ``cls.__name__`` (its ``config_dict()`` gives that name as "model")."""
    known = MODELS.get(cls.__name__)
    if known is not None and known != (cls, config_cls):
        raise ValueError(f"another model class is registered as {cls.__name__!r}")
    MODELS[cls.__name__] = (cls, config_cls)


def unregister_model(cls: type) -> None:
    if MODELS.get(cls.__name__, (None,))[0] is cls:
        del MODELS[cls.__name__]
