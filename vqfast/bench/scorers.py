"""Stage timings of the token scorers on one batch (their profile() tables), and the
whole scorers per image against the published Pixel-wise pipeline."""

import math
import time
from typing import Callable

import torch

from vqfast.models import VQVAE, GPT2Prior, GPT2PriorConfig, MaskedPriorConfig, MaskedTokenPrior, VQVAEConfig
from vqfast.models.gpt2_prior import gpt2_medium_config
from vqfast.profiling import format_table
from vqfast.scorers import (KDEScorer, LightPixelWiseScorer, MaskedContextScorer, MaskedRestorationScorer,
                            PixelWiseScorer, RegenerativeScorer, SampleWiseScorer, nll_threshold)


def run(device: torch.device, quick: bool = False, echo: Callable[[str], None] = print):
    """Stage timings of the Sample-, Pixel- (fast), Light-Pixel-wise, KDE-map,
    Regenerative and masked-context (Sample-wise, restoration) scorers on one batch: a Performer-paper VQ-VAE (128 x 128 images, 16 x 16 tokens,
    256 codes) and the CPU-target GPT-2 prior (4 layers, 256 wide, 8 heads), batch 8; on
    CUDA the GPU target instead: 64 x 64 images (8 x 8 tokens), a gpt2-medium-size prior,
    batch 32. Random weights (the codebook drawn from the batch's encodings), thresholds
    at the 80th NLL percentile of the batch, so about 20 % of the tokens are restored. The
    decoding scorers run twice, with float32 and bfloat16 decoding; last, per-image
    totals with Light-Pixel-wise / Regenerative and (not on CUDA) the fast Pixel-wise
    scorer against the published pipeline (the reference loop per image, the same
    decode and map), timed once in the same run."""
    torch.manual_seed(0)
    if quick:
        vq_cfg, size, prior_cfg, batch = VQVAEConfig(hidden=16, res_blocks=1, num_codes=32, code_dim=8), 32, \
            GPT2PriorConfig(32, 4, 4, 1, 32, 2), 2
    elif device.type == "cuda":  # the GPU target: a gpt2-medium-size prior on 8x8 grids, batch 32
        vq_cfg, size, prior_cfg, batch = VQVAEConfig(), 64, gpt2_medium_config(256, 8, 8), 32
    else:
        vq_cfg, size, prior_cfg, batch = VQVAEConfig(), 128, GPT2PriorConfig(256, 16, 16, 4, 256, 8), 8
    vq_model = VQVAE(vq_cfg).to(device)
    prior = GPT2Prior(prior_cfg).to(device).eval()
    images = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():  # the codebook from these images' encodings, as a first training batch sets it: a
        vq_model(images)  # random one puts them on 3 codes, and Pixel-wise then restores 78 % of the tokens
    vq_model.eval()
    tokens = vq_model.encode_indices(images)
    lam = nll_threshold(prior, tokens, 80)
    masked = MaskedTokenPrior(MaskedPriorConfig(prior_cfg.num_codes, prior_cfg.height, prior_cfg.width,
                                                prior_cfg.n_layer, prior_cfg.n_embd, prior_cfg.n_head)).to(device).eval()
    lam_masked = nll_threshold(masked, tokens, 80)
    bf16 = {"decode_precision": "bfloat16"}
    scorers = {"Sample-wise": SampleWiseScorer(vq_model, prior, lam),
               "Pixel-wise (fast, S=5)": PixelWiseScorer(vq_model, prior, lam),
               "Pixel-wise (fast, S=5, bfloat16 decode)": PixelWiseScorer(vq_model, prior, lam, **bf16),
               "Light-Pixel-wise (fast, S=5)": LightPixelWiseScorer(vq_model, prior, lam),
               "Light-Pixel-wise (fast, S=5, bfloat16 decode)": LightPixelWiseScorer(vq_model, prior, lam, **bf16),
               "KDE map (p < exp(-lambda), S=5, one decode each)": KDEScorer(vq_model, prior, math.exp(-lam)),
               "Regenerative": RegenerativeScorer(vq_model),
               "Regenerative (bfloat16 decode)": RegenerativeScorer(vq_model, **bf16),
               "masked Sample-wise (eq. 20, the masked prior's sizes = GPT-2's)":
                   MaskedContextScorer(vq_model, masked, lam_masked),
               "masked restoration (S=5, 4 passes)": MaskedRestorationScorer(vq_model, masked, lam_masked)}
    per_image = {}
    for name, scorer in scorers.items():
        timings = scorer.profile(images, repeats=3)
        per_image[name] = total = timings[-1].median_s / batch
        echo(format_table(timings, title=f"{name}: batch {batch} of {size}x{size} on {device} "
                                         f"({total * 1e3:.1f} ms per image)") + "\n")
    echo(f"Whole scorers per image on {device} (batch {batch}, {size}x{size}), from the tables above:")
    for light in ("Light-Pixel-wise (fast, S=5)", "Light-Pixel-wise (fast, S=5, bfloat16 decode)"):
        for regen in ("Regenerative", "Regenerative (bfloat16 decode)"):
            echo(f"  {light} / {regen}: {per_image[light] / per_image[regen]:.2f} (target <= 2)")
    if device.type == "cuda":
        return  # the published loop at the GPU shapes would take most of a GPU check's budget
    # The published pipeline: the reference loop (the full prior after every restored
    # token) per image and restoration, then the same decode and map; timed once (a minute).
    published = PixelWiseScorer(vq_model, prior, lam, fast=False)
    start = time.perf_counter()
    expected = published.score(images)
    per_image["published Pixel-wise"] = (time.perf_counter() - start) / batch
    fast = scorers["Pixel-wise (fast, S=5)"]
    restored = fast.restore(tokens, fast.image_seeds(images))
    got = fast.score(images)
    gap = float((got.anomaly_map - expected.anomaly_map).abs().amax())
    echo(f"  published Pixel-wise pipeline (reference loop per image + decode + map, timed once): "
         f"{per_image['published Pixel-wise'] * 1e3:.0f} ms; tokens restored {float((restored != tokens[:, None]).float().mean()):.1%}; "
         f"the fast scorer's maps differ from it by at most {gap:.1e}")
    for name in ("Pixel-wise (fast, S=5)", "Pixel-wise (fast, S=5, bfloat16 decode)"):
        echo(f"  {name}: {per_image[name] * 1e3:.1f} ms, {per_image['published Pixel-wise'] / per_image[name]:.1f}x "
             "the published pipeline (target >= 50x)")
