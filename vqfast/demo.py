"""``vqfast demo``: the whole pipeline on the embedded procedural dataset.

Trains a small VQ-VAE (Performer-paper architecture, scaled down for a CPU) on
defect-free procedural textures, scores a test split with the Regenerative scorer,
and prints the detection metrics and a per-stage timing table. Everything lands in
``out_dir`` as it is produced: checkpoints and metrics.jsonl during training (so
``--resume`` continues), then model.safetensors and results.json.
"""

import json
from pathlib import Path

import torch

from vqfast.data import procedural_splits
from vqfast.models import VQVAE, VQVAEConfig
from vqfast.profiling import format_table
from vqfast.scorers import RegenerativeScorer, evaluate_scorer
from vqfast.training import TrainConfig, Trainer

DEMO_MODEL = VQVAEConfig(hidden=32, res_blocks=2, num_codes=64, code_dim=16, downsamples=2)


def run_demo(out_dir="vqfast-demo", epochs: int = 20, seed: int = 0, resume: bool = False, echo=print) -> dict:
    torch.manual_seed(seed)
    train, test = procedural_splits(size=64, seed=seed, n_train=160, n_test_normal=40, n_test_anomalous=40)
    echo(f"procedural data: {len(train)} defect-free training images, {len(test)} test images "
         f"({int(test.labels.sum())} with blobs, scratches or patches), 64x64")
    model = VQVAE(DEMO_MODEL)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=2e-3, seed=seed)
    history = Trainer(model, train, None, config, out_dir=out_dir).fit(resume=resume)
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
    (out / "results.json").write_text(json.dumps({"metrics": result, "epochs": history[-1]["epoch"]}, indent=2))
    echo(f"\nwrote {out / 'model.safetensors'}, {out / 'metrics.jsonl'} and {out / 'results.json'}")
    return result
