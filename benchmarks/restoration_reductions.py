"""The restoration scorers' image score, the papers' mean of the weighted residuals against
the map's max (and top-1 % mean), from the same maps; reproduces the reduction rows of
benchmarks/RESULTS.md.

    python benchmarks/restoration_reductions.py --out runs/reductions_procedural
    python benchmarks/restoration_reductions.py --data ../shared/data/magnetic_tile --format mtd \\
        --prior runs/mt_vqvae_psnail --out runs/reductions_mt

The command line's code path: without --prior a small VQ-VAE and a GPT-2 prior are trained
on `vqfast demo`'s procedural split (benchmarks/masked_context_quality.py's), then each
restoration scorer of the prior run (`vqfast score pixel|light|kde`, and `masked-restore`
with --masked RUN) scores the test split once with its maps saved; every reduction of
those maps is evaluated (`vqfast.app.report.evaluate_scores`), so the rows differ in the
image score only. Pixel metrics do not depend on the reduction.
"""

import argparse
import json
from pathlib import Path

from masked_context_quality import procedural_folders, train_small_vqvae

from vqfast.app.methods import train
from vqfast.app.report import evaluate_scores
from vqfast.app.score import score

REDUCTIONS = ("max", "mean", "topk_mean")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="default: the procedural split, written under <out>/data")
    p.add_argument("--format", default="folder")
    p.add_argument("--prior", default=None, help="a trained gpt2 / pixelsnail / performer run (default: train a "
                                                 "VQ-VAE and a GPT-2 here)")
    p.add_argument("--masked", default=None, help="a trained masked run on the same VQ model, for masked-restore")
    p.add_argument("--out", default="runs/reductions_procedural")
    p.add_argument("--minutes", type=float, default=2.0, help="the GPT-2 prior's budget when trained here")
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)

    out = Path(args.out)
    data, test = (args.data, args.data) if args.data else procedural_folders(out / "data")
    prior = args.prior
    if prior is None:
        train_small_vqvae(data, args.format, out / "vq", resume=args.resume)
        prior = str(out / "gpt2")
        train("gpt2", data, args.format, prior, {"vq": str(out / "vq"), "minutes": args.minutes, "epochs": 30},
              resume=args.resume)
    jobs = [(prior, name) for name in ("pixel", "light", "kde")] + ([(args.masked, "masked-restore")]
                                                                   if args.masked else [])
    results = {}
    for run, name in jobs:
        folder = out / f"scores_{name}"
        score(name, run, test, args.format, folder, threshold=0.0, resume=args.resume)
        results[name] = evaluate_scores(folder, reductions=REDUCTIONS)
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print("| scorer | image AUROC: max | mean (the paper's, default) | topk_mean | pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | " + " | ".join(f"{r[red]['image_auroc']:.3f}" for red in REDUCTIONS)
              + f" | {r['max'].get('pixel_auroc', float('nan')):.3f} | {r['max'].get('aupro', float('nan')):.3f} |")


if __name__ == "__main__":
    main()
