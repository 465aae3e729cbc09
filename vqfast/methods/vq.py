"""The VQ autoencoders as methods, trained by the Trainer into ``model/`` and scored by
regeneration: the Performer paper's VQ-VAE, the density/restoration paper's VQ-GAN, and
that paper's own VQ-VAE, its VQ-GAN architecture trained without the GAN and the
perceptual loss ("the architecture of the two models will be kept the same")."""

from dataclasses import dataclass

from vqfast.methods.api import Method, Scorer, TrainJob, config_of, history_summary
from vqfast.methods.settings import Settings, setting
from vqfast.models import VQGAN, VQVAE, VQGANConfig, VQVAEConfig
from vqfast.scorers import RegenerativeScorer
from vqfast.training import TrainConfig


def paper_train_config(**overrides) -> TrainConfig:
    """The Performer paper's appendix A optimiser for its VQ-VAE: Adam, lr 1e-4,
    exponential decay 0.9999 per epoch, batch 16 (the paper runs 20,000 epochs; set
    ``epochs`` or ``max_minutes``)."""
    return TrainConfig(**{"optimizer": "adam", "lr": 1e-4, "lr_gamma": 0.9999, "batch_size": 16, **overrides})


@dataclass
class VQVAESettings(Settings):
    epochs: int = setting(300, "most epochs to train", paper=20000)
    minutes: float = setting(19.0, "training time budget in minutes")
    lr: float = setting(1e-3, "learning rate", paper=1e-4)
    hidden: int = setting(64, "hidden channels", paper=128)
    res_blocks: int = setting(3, "residual blocks a stage", least=0)
    downsamples: int = setting(3, "down-sampling stages (the grid is size / 2^downsamples)")
    codes: int = setting(256, "codebook entries")
    code_dim: int = setting(32, "dimensions of a code")
    lr_gamma: float = setting(0.99, "learning-rate decay per epoch", paper=0.9999, most=1)

    def size_rule(self):
        return 2 ** self.downsamples, 2 ** self.downsamples


@dataclass
class VQGANSettings(Settings):
    size: int = setting(64, "image side in pixels", paper=128)
    batch_size: int = setting(16, "images a training step", paper=10)
    lr: float = setting(1e-3, "learning rate", paper=5e-5)
    epochs: int = setting(300, "most epochs to train")
    minutes: float = setting(19.0, "training time budget in minutes")
    disc_start: int = setting(400, "steps before the GAN loss starts", least=0)
    lr_gamma: float = setting(0.99, "learning-rate decay per epoch", most=1)

    def size_rule(self):
        return 8, 8


@dataclass
class DensityVQVAESettings(VQGANSettings):
    batch_size: int = setting(16, "images a training step", paper=10)
    lr: float = setting(1e-3, "learning rate", paper=2.25e-5)
    disc_start: int = setting(0, "unused: no GAN", least=0)


def build_vqvae(settings: VQVAESettings) -> VQVAE:
    return VQVAE(VQVAEConfig(in_channels=settings.channels, hidden=settings.hidden, num_codes=settings.codes,
                             code_dim=settings.code_dim, res_blocks=settings.res_blocks,
                             downsamples=settings.downsamples))


def build_vqgan(settings: VQGANSettings, adversarial: bool = True) -> VQGAN:
    """The CPU-sized VQ-GAN; ``adversarial=False``: the density paper's VQ-VAE (no GAN, no
    perceptual loss)."""
    extra = {} if adversarial else {"adversarial": False, "perceptual_weight": 0.0}
    return VQGAN(VQGANConfig(in_channels=settings.channels, ch=32, ch_mult=(1, 2, 2, 4), resolution=settings.size,
                             z_channels=64, num_codes=128, disc_start=settings.disc_start, **extra))


def train_vq(model, settings, job: TrainJob, betas=(0.9, 0.999)) -> dict:
    """Trains a VQ autoencoder into ``job.out/model``; returns run.json's summary."""
    history = job.fit(model, config_of(settings, lr_gamma=settings.lr_gamma, betas=betas))
    last = history[-1]["train"]
    job.echo(f"trained {history[-1]['epoch']} epochs ({history[-1]['stopped'] or 'epoch budget used'}): loss "
             f"{last['loss']:.4g}, perplexity {last.get('perplexity', float('nan')):.1f} of {model.config.num_codes}")
    return history_summary(history)


def load_regenerative(run, options):
    return RegenerativeScorer(run.model("model/model.safetensors").to(options.device),
                              decode_precision=options.decode_precision)


REGENERATIVE = Scorer("regenerative", load_regenerative, decodes=True)

VQVAE_METHOD = Method(
    "vqvae", "the Performer paper's VQ-VAE (appendix A: 3 down-sampling stages of 3 residual blocks); CPU-sized: "
    "64 hidden channels, 256 codes of 32 dims (the paper: 128 hidden)", VQVAESettings,
    lambda settings, job: train_vq(build_vqvae(settings), settings, job), (REGENERATIVE,),
    models=((VQVAE, VQVAEConfig),), tags=("vq",))

VQGAN_METHOD = Method(
    "vqgan", "the density/restoration paper's VQ-GAN (tables 1-2) with the recipe that keeps its codebook (EMA "
    "codes, dead-code restarts, Adam betas 0.5/0.9, GAN after disc_start steps); CPU-sized: 64x64 input, channels "
    "32-64-64-128, 128 codes (the paper: 128x128, 256 channels)", VQGANSettings,
    lambda settings, job: train_vq(build_vqgan(settings), settings, job, betas=(0.5, 0.9)), (REGENERATIVE,),
    models=((VQGAN, VQGANConfig),), tags=("vq",))

DENSITY_VQVAE_METHOD = Method(
    "density-vqvae", "the density/restoration paper's VQ-VAE: its VQ-GAN architecture (the vqgan method's CPU "
    "sizes) trained without the GAN and the perceptual loss; its priors take the paper's VQ-VAE thresholds",
    DensityVQVAESettings, lambda settings, job: train_vq(build_vqgan(settings, adversarial=False), settings, job),
    (REGENERATIVE,), models=((VQGAN, VQGANConfig),), tags=("vq",))
