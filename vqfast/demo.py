"""``vqfast demo``: the whole pipeline on the embedded procedural dataset.

Trains a small VQ-VAE (Performer-paper architecture, scaled down for a CPU) on
defect-free procedural textures, scores a test split with the Regenerative scorer,
and prints the detection metrics and a per-stage timing table; then trains a small
GPT-2 prior on the VQ-VAE's token grids, scores the test split Sample-wise and
Pixel-wise, and times the fast Pixel-wise pass against the published loop on two
images (the same restored tokens); then a small Performer (FAVOR+) prior on the same
grids, scored Pixel-wise by its recurrent pass and by KDE abnormality maps; then a small
DSR trained in its three stages on the same images; last, the VQ-VAE's Regenerative
scores through ``vqfast score`` and ``vqfast report`` on the test images written as
files (``<out>/report/scores/index.html``). Everything lands in
``out_dir`` as it is produced: checkpoints and metrics.jsonl during training (so
``--resume`` continues), then model.safetensors and results.json.
"""

import functools
import json
import math
from pathlib import Path

import torch

from vqfast.app.methods import export_run
from vqfast.app.report import report
from vqfast.app.score import score
from vqfast.data import ProceduralDefects, TokenGrids, encode_dataset, procedural_splits, write_image_folder
from vqfast.models import DSR, VQVAE, DSRConfig, GPT2Prior, GPT2PriorConfig, PerformerPrior, PerformerPriorConfig, VQVAEConfig
from vqfast.methods.dsr import train_dsr
from vqfast.profiling import format_table, time_callable
from vqfast.scorers import DSRScorer, KDEScorer, RegenerativeScorer, evaluate_scorer
from vqfast.scorers.restoration import PixelWiseScorer, SampleWiseScorer, nll_threshold
from vqfast.training import TrainConfig, Trainer

DEMO_SIZE = 64
DEMO_MODEL = VQVAEConfig(hidden=32, res_blocks=2, num_codes=64, code_dim=16, downsamples=2)
DEMO_DSR = DSRConfig(num_codes=64, code_dim=16, hidden=32, res_hidden=16, object_mid=16, unet_width=8)


def run_demo(out_dir="vqfast-demo", epochs: int = 20, seed: int = 0, resume: bool = False, echo=print,
             prior_epochs: int = 15, overwrite: bool = False) -> dict:
    if epochs < 1 or prior_epochs < 1:
        raise ValueError(f"epochs and prior_epochs must be >= 1, got {epochs} and {prior_epochs}")
    torch.manual_seed(seed)
    train, test = procedural_splits(size=DEMO_SIZE, seed=seed, n_train=160, n_test_normal=40, n_test_anomalous=40)
    echo(f"procedural data: {len(train)} defect-free training images, {len(test)} test images "
         f"({int(test.labels.sum())} with blobs, scratches or patches), 64x64")
    model = VQVAE(DEMO_MODEL)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, seed=seed)
    history = Trainer(model, train, None, config, out_dir=out_dir).fit(resume=resume, overwrite=overwrite)
    last = history[-1]["train"]
    echo(f"trained {history[-1]['epoch']} epochs: loss {last['loss']:.4g}, codebook perplexity "
         f"{last['perplexity']:.1f} of {DEMO_MODEL.num_codes}")

    scorer = RegenerativeScorer(model)
    result = evaluate_scorer(scorer, test)
    echo("\nRegenerative scorer on the procedural test split:")
    for name, value in result.items():
        echo(f"  {name:<24} {value:.4f}")
    batch = torch.stack([test[i]["image"] for i in range(32)])
    echo("\n" + format_table(scorer.profile(batch), title=f"stage timings, batch of 32 on {batch.device}"))
    out = Path(out_dir)
    results = {"regenerative": result, "epochs": history[-1]["epoch"]}
    tokens = encode_dataset(model, train)  # both priors learn these grids
    fit = functools.partial(_fit_prior, tokens=tokens, epochs=prior_epochs, seed=seed, resume=resume,
                            overwrite=overwrite)
    results.update(_prior_stage(model, tokens, test, lambda prior: fit(prior, out / "prior"), echo))
    results.update(_performer_stage(model, tokens, test, lambda prior: fit(prior, out / "performer"), echo))
    results.update(_dsr_stage(train, test, out / "dsr", epochs, seed, resume, overwrite, echo))
    results["report"] = str(_report_stage(model, test, out / "report", seed, echo))
    (out / "results.json").write_text(json.dumps(results, indent=2))
    echo(f"\nwrote {out / 'model.safetensors'}, {out / 'prior'}, {out / 'performer'}, {out / 'dsr'}, "
         f"{out / 'metrics.jsonl'}, {out / 'results.json'} and the report {results['report']}")
    return result


def _report_stage(vq_model, test, out: Path, seed: int, echo) -> Path:
    """What a user runs on their own folders, on the demo's: the test split and 16 unseen
    defect-free images (for the auto threshold) written as PNGs, the VQ-VAE exported as a
    run folder, then ``vqfast score regenerative`` and ``vqfast report`` (the same functions)."""
    write_image_folder(test, out / "data" / "test")
    val = write_image_folder(ProceduralDefects(16, 0, DEMO_SIZE, seed=seed + 7), out / "data" / "val")
    export_run(vq_model, out / "run", "vqvae", size=DEMO_SIZE, channels=3, val_images=sorted(val.glob("*.png")),
               settings={"note": "the demo's VQ-VAE"})
    echo("")
    score("regenerative", out / "run", out / "data" / "test", "folder", out / "scores", progress=False, echo=echo)
    report(out / "scores", max_overlays=12, progress=False, echo=echo)
    return out / "scores" / "index.html"


def _fit_prior(prior, out_dir: Path, tokens, epochs: int, seed: int, resume: bool, overwrite: bool):
    """Trains a prior on the token grids (checkpoints in out_dir); returns its history, prior in eval mode."""
    config = TrainConfig(epochs=epochs, batch_size=32, lr=3e-3, seed=seed, early_stopping=False)
    history = Trainer(prior, TokenGrids(tokens), None, config, out_dir=out_dir,
                      input_key="tokens").fit(resume=resume, overwrite=overwrite)
    prior.eval()
    return history


def _prior_stage(vq_model, tokens, test, fit, echo) -> dict:
    _, h, w = tokens.shape
    prior = GPT2Prior(GPT2PriorConfig(num_codes=DEMO_MODEL.num_codes, height=h, width=w, n_layer=2, n_embd=64,
                                      n_head=4))
    history = fit(prior)
    echo(f"\nGPT-2 prior on the {h}x{w} token grids: {history[-1]['epoch']} epochs, "
         f"{history[-1]['train']['bits_per_token']:.3f} bits per token")
    results = {}
    scorers = {"sample_wise": SampleWiseScorer(vq_model, prior, nll_threshold(prior, tokens, 60)),
               "pixel_wise": PixelWiseScorer(vq_model, prior, nll_threshold(prior, tokens, 90), restorations=5)}
    for name, scorer in scorers.items():
        results[name] = evaluate_scorer(scorer, test)
        r = results[name]
        pixel = f", pixel AUROC {r['pixel_auroc']:.4f}, AUPRO {r['aupro']:.4f}" if "pixel_auroc" in r else ""
        echo(f"  {name:<12} image AUROC {r['image_auroc']:.4f}{pixel}")
    pixel = scorers["pixel_wise"]
    images = torch.stack([test[i]["image"] for i in (len(test) - 2, len(test) - 1)])
    grids = vq_model.encode_indices(images)
    seeds = torch.tensor([1, 2])
    reference = PixelWiseScorer(vq_model, prior, pixel.threshold, restorations=5, fast=False)
    same = torch.equal(pixel.restore(grids, seeds), reference.restore(grids, seeds))
    timings = [time_callable(lambda: reference.restore(grids, seeds), name="reference loop", repeats=1, warmup=0),
               time_callable(lambda: pixel.restore(grids, seeds), name="vqfast fast pass", repeats=3, warmup=1)]
    echo("\n" + format_table(timings, baselines=["reference loop"],
                              title="Pixel-wise restoration of 2 anomalous test images, 5 restorations each") +
         f"\n  identical restored tokens: {same}")
    results["pixel_wise_restoration"] = {"identical_tokens": same, "reference_s": timings[0].median_s,
                                         "fast_s": timings[1].median_s}
    return results


def _performer_stage(vq_model, tokens, test, fit, echo) -> dict:
    """The Performer paper's family: a small FAVOR+ prior on the same token grids, its
    recurrent Pixel-wise pass and the KDE abnormality maps."""
    _, h, w = tokens.shape
    prior = PerformerPrior(PerformerPriorConfig(num_codes=DEMO_MODEL.num_codes, height=h, width=w, n_layer=2,
                                                n_embd=64, n_head=4, nb_features=32))
    history = fit(prior)
    echo(f"\nPerformer prior (FAVOR+) on the same grids: {history[-1]['epoch']} epochs, "
         f"{history[-1]['train']['bits_per_token']:.3f} bits per token")
    lam = nll_threshold(prior, tokens, 90)
    results = {}
    for name, scorer in (("performer_pixel_wise", PixelWiseScorer(vq_model, prior, lam, restorations=5)),
                         ("kde", KDEScorer(vq_model, prior, math.exp(-lam), restorations=5))):
        results[name] = r = evaluate_scorer(scorer, test)
        echo(f"  {name:<20} image AUROC {r['image_auroc']:.4f}, pixel AUROC {r['pixel_auroc']:.4f}, "
             f"AUPRO {r['aupro']:.4f}")
    return results


def _dsr_stage(train, test, out: Path, epochs: int, seed: int, resume: bool, overwrite: bool, echo) -> dict:
    """DSR (the dual subspace re-projection network) in its three stages on the training
    images: the discrete model, then feature-space anomalies, then the upsampling module."""
    model = DSR(DEMO_DSR)
    configs = {stage: TrainConfig(epochs=max(1, epochs // 2) if stage == 1 else max(1, epochs // 10), batch_size=16,
                                  lr=2e-3 if stage == 1 else 5e-4, seed=seed + stage, early_stopping=False)
               for stage in (1, 2, 3)}
    stages = train_dsr(model, train, configs, out, resume=resume, overwrite=overwrite, seed=seed, echo=lambda *a: None)
    for stage, summary in stages.items():
        echo(f"\nDSR stage {stage}: {summary['epochs']} epochs, loss {summary['final_train']['loss']:.4g}")
    model.eval()
    r = evaluate_scorer(DSRScorer(model), test)
    echo(f"  dsr                  image AUROC {r['image_auroc']:.4f}, pixel AUROC {r['pixel_auroc']:.4f}, "
         f"AUPRO {r['aupro']:.4f}")
    if min(r["image_auroc"], r["pixel_auroc"]) < 0.6:
        echo("  (DSR is not expected to detect here: its discrete model, which the authors pretrain for 200k "
             "steps on ImageNet, had a few epochs on 160 small textures, and its anomaly module a few hundred "
             "synthetic anomalies; train it with vqfast train dsr, or --set general=FILE for their weights)")
    return {"dsr": r}
