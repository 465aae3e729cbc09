"""Models: the VQ layer, the VQ autoencoders, the priors and the backbones."""

from vqfast.models.backbones import Backbone
from vqfast.models.base import VQAutoencoder
from vqfast.models.dsr import DSR, DSRConfig
from vqfast.models.feature_ae import FeatureAE, FeatureAEConfig
from vqfast.models.gpt2_prior import FastGPT2, GPT2Prior, GPT2PriorConfig
from vqfast.models.lpips import LPIPS
from vqfast.models.masked_prior import MaskedGrids, MaskedPriorConfig, MaskedTokenPrior
from vqfast.models.performer import FastPerformer, PerformerPrior, PerformerPriorConfig
from vqfast.models.pixelsnail import PixelSNAIL, PixelSNAILConfig
from vqfast.models.vq import VectorQuantizer, VQOutput
from vqfast.models.vqgan import VQGAN, PatchDiscriminator, VQGANConfig, adaptive_weight
from vqfast.models.vqvae import VQVAE, VQVAEConfig, spectral_loss

__all__ = ["Backbone", "DSR", "DSRConfig", "FastGPT2", "FastPerformer", "FeatureAE", "FeatureAEConfig", "GPT2Prior", "GPT2PriorConfig", "PixelSNAIL",
           "PixelSNAILConfig", "LPIPS", "MaskedGrids", "MaskedPriorConfig", "MaskedTokenPrior", "PatchDiscriminator", "PerformerPrior", "PerformerPriorConfig", "VQAutoencoder", "VQGAN", "VQGANConfig", "VQOutput", "VQVAE",
           "VQVAEConfig", "VectorQuantizer", "adaptive_weight", "spectral_loss"]
