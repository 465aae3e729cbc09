"""Stage timings of the models and the feature-reconstruction scorers (their profile()
tables): the VQ autoencoders with Regenerative scoring, the feature AE, SGFR and DSR."""

import warnings
from typing import Callable

import torch

from vqfast.data import ProceduralDefects
from vqfast.models import DSR, VQGAN, VQVAE, Backbone, DSRConfig, FeatureAE, FeatureAEConfig, VQGANConfig, VQVAEConfig
from vqfast.profiling import format_table
from vqfast.scorers import DSRScorer, FeatureAEScorer, RegenerativeScorer, SGFRScorer


def model_cases(quick: bool):
    """(title, model factory, input shape) for every model and scorer timing."""
    def vqgan(cfg):
        with warnings.catch_warnings():  # LPIPS weights are irrelevant to inference timing
            warnings.simplefilter("ignore")
            return VQGAN(cfg)

    if quick:
        return [
            ("VQ-VAE (small)", lambda: VQVAE(VQVAEConfig(hidden=16, res_blocks=1, num_codes=32, code_dim=8)), (2, 3, 32, 32)),
            ("VQ-GAN (small)", lambda: vqgan(VQGANConfig(ch=8, ch_mult=(1, 2), resolution=32, z_channels=8, num_codes=16,
                                                          perceptual_weight=0.0, adversarial=False)), (2, 3, 32, 32)),
        ]
    return [
        ("VQ-VAE, Performer paper defaults (256 x 32 codebook)", lambda: VQVAE(), (16, 3, 128, 128)),
        ("VQ-GAN, tables 1-2 defaults (8 x 8 x 256 latents, 128 codes)",
         lambda: vqgan(VQGANConfig(perceptual_weight=0.0, adversarial=False)), (16, 3, 128, 128)),
    ]


def feature_scorer_cases(quick: bool):
    """(title, scorer factory (device) -> fitted scorer, input shape) for the
    feature-reconstruction scorers, on random backbones (timing does not need weights)."""
    name, size, n_bank = ("resnet18", 64, 16) if quick else ("wide_resnet50_2", 256, 64)

    def quiet(fn):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # random backbone: no weights here
            return fn()

    def feature_ae(device):
        return FeatureAEScorer(quiet(lambda: FeatureAE(FeatureAEConfig(backbone=name))).to(device))

    def sgfr(device):
        backbone = quiet(lambda: Backbone(name, layers=(2, 3, 4))).to(device)
        return SGFRScorer(backbone).fit(ProceduralDefects(n_bank, 0, size=size))

    def dsr(device):
        cfg = DSRConfig(num_codes=64, code_dim=16, hidden=16, res_hidden=8, unet_width=8) if quick else DSRConfig()
        return DSRScorer(DSR(cfg).to(device).eval())

    return [(f"Feature AE ({name})", feature_ae, (4, 3, size, size)),
            (f"SGFR ({name}, bank of {n_bank}, s_ref 10, s 7)", sgfr, (4, 3, size, size)),
            ("DSR (CPU-sized DSRConfig, untrained)", dsr, (4, 3, size, size))]


def run(device: torch.device, quick: bool = False, repeats: int = 5, echo: Callable[[str], None] = print):
    """Stage timings per model and scorer: encode / quantise / decode / Regenerative
    score for the VQ models, then the feature-reconstruction scorers."""
    for title, make, shape in model_cases(quick):
        torch.manual_seed(0)
        model = make().to(device).eval()
        x = torch.rand(shape, device=device)
        timings = RegenerativeScorer(model).profile(x, repeats=repeats)
        echo(format_table(timings, title=f"{title}: batch {shape[0]} of {shape[2]}x{shape[3]} on {device}") + "\n")
    for title, make, shape in feature_scorer_cases(quick):
        torch.manual_seed(0)
        x = torch.rand(shape, device=device)
        timings = make(device).profile(x, repeats=repeats)
        echo(format_table(timings, title=f"{title}: batch {shape[0]} of {shape[2]}x{shape[3]} on {device}") + "\n")
