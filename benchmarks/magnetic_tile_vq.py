"""Train a VQ model on Magnetic Tile (its split.json) and score the test split with the
Regenerative scorer; reproduces the Magnetic Tile rows of benchmarks/RESULTS.md.

    python benchmarks/magnetic_tile_vq.py --out runs/mt_vqvae
    python benchmarks/magnetic_tile_vq.py --model vqgan --set lr=5e-4 --out runs/mt_vqgan
    python benchmarks/magnetic_tile_vq.py ... --resume     # continue an interrupted run

It is the command line's code path, the same as

    vqfast train vqvae --data ../shared/data/magnetic_tile --format mtd --channels 1 --out runs/mt_vqvae
    vqfast score regenerative --run runs/mt_vqvae --data ../shared/data/magnetic_tile --format mtd \\
        --out runs/mt_vqvae/scores
    vqfast report --scores runs/mt_vqvae/scores

plus the table: one residual map, three image scores of it ("mean", the paper's; "topk_mean";
"max").

vqvae: the Performer paper's VQ-VAE at 128 x 128 (16 x 16 latents); vqgan: the VQ model
of tables 1-2 (table 2's decoder) scaled for a CPU budget (64 x 64 input, channels
32-64-64-128, 8 x 8 latents of 64-d codes, 128 codes), with the recipe that keeps its
codebook: EMA codes with dead-code restarts, Adam betas (0.5, 0.9), LPIPS + the log-loss
PatchGAN from disc_start generator steps on. Without VGG16 weights on the machine LPIPS
is uncalibrated (random VGG features; see vqfast.models.lpips). `vqfast train --help`
lists the settings (--set KEY=VALUE). The training set's seeded tenth is held out for
the papers' early-stopping rule; training also stops at --minutes.
"""

import argparse
import json
from pathlib import Path

from vqfast.app.methods import train
from vqfast.app.report import evaluate_scores, report
from vqfast.app.score import score

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile")


def setting(text: str):
    key, _, value = text.partition("=")
    return key, value


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DATA)
    p.add_argument("--model", choices=["vqvae", "vqgan"], default="vqvae")
    p.add_argument("--out", default=None, help="default runs/magnetic_tile_<model>")
    p.add_argument("--minutes", type=float, default=19.0)
    p.add_argument("--set", dest="settings", type=setting, action="append", default=[], metavar="KEY=VALUE",
                   help="a method setting, as vqfast train --set")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a training run already in the output folder")
    args = p.parse_args(argv)

    out = Path(args.out or f"runs/magnetic_tile_{args.model}")
    run = train(args.model, args.data, "mtd", out, {"channels": 1, "minutes": args.minutes, **dict(args.settings)},
                resume=args.resume, overwrite=args.overwrite)
    scores = out / "scores"
    score("regenerative", out, args.data, "mtd", scores, resume=args.resume)
    report(scores)
    results = {"run": run, "scores": evaluate_scores(scores, reductions=("topk_mean", "max"))}
    results["scores"]["mean"] = results["scores"].pop("score")  # the Regenerative scorer's own: the mean L1
    (out / "results.json").write_text(json.dumps(results, indent=2))

    history = [json.loads(line) for line in (out / "model" / "metrics.jsonl").read_text().splitlines()]
    s = run["summary"]
    print(f"\n{args.model}: {s['epochs']} epochs ({s['stopped'] or 'epoch budget used'}), {run['minutes_this_run']:.1f} min; final "
          f"perplexity {s['final_train'].get('perplexity', float('nan')):.1f} of {run['settings'].get('codes', 128)} codes")
    print("per epoch (recon MSE, perplexity):", ", ".join(
        f"{r['epoch']}: {r['train'].get('recon', float('nan')):.4f} {r['train'].get('perplexity', float('nan')):.0f}"
        for r in history))
    print("| image score | image AUROC | best F1 | pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|")
    for reduction in ("mean", "topk_mean", "max"):
        r = results["scores"][reduction]
        print(f"| {reduction} | {r['image_auroc']:.3f} | {r['image_best_f1']:.3f} | {r['pixel_auroc']:.3f} | "
              f"{r['aupro']:.3f} |")


if __name__ == "__main__":
    main()
