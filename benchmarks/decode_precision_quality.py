"""float32 against bfloat16 decoding (``--decode-precision``) on the same runs and images:
each decoding scorer's metrics, largest map difference and time per image under both; the
decode-precision rows of benchmarks/RESULTS.md.

    python benchmarks/decode_precision_quality.py --out runs/decode_precision      # the procedural split
    python benchmarks/decode_precision_quality.py --data ../shared/data/magnetic_tile --format mtd \\
        --prior runs/mt_vqvae_psnail --out runs/decode_precision_mt

The command line's code path (`vqfast score`, `vqfast.app.report.evaluate_scores`). Without
--prior a VQ-VAE and a GPT-2 prior are trained first on the procedural split of `vqfast
demo` (64 x 64, 160 training images, 40 + 40 test images, written under <out>/data), with
masked_context_quality.py's settings. Thresholds: the paper's percentiles.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from masked_context_quality import procedural_folders, train_small_vqvae  # benchmarks/, beside this script
from vqfast.app.methods import train
from vqfast.app.report import evaluate_scores
from vqfast.app.score import load_map, score

SCORERS = (("regenerative", "Regenerative"), ("light", "Light-Pixel-wise"), ("pixel", "Pixel-wise"))
METRICS = ("image_auroc", "image_best_f1", "pixel_auroc", "aupro")


def _maps(folder: Path):
    records = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    return {r["path"]: load_map(folder, r) for r in records}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="default: the procedural split, written under <out>/data")
    p.add_argument("--format", default="folder")
    p.add_argument("--prior", default=None, help="a trained prior run (gpt2, pixelsnail, performer; default: train)")
    p.add_argument("--out", default="runs/decode_precision")
    p.add_argument("--minutes", type=float, default=2.0, help="the GPT-2 prior's training budget")
    p.add_argument("--epochs", type=int, default=15)
    p.add_argument("--restorations", type=int, default=5)
    args = p.parse_args(argv)

    out = Path(args.out)
    data, test = (args.data, args.data) if args.data else procedural_folders(out / "data")
    prior = args.prior
    if prior is None:
        train_small_vqvae(data, args.format, out / "vq")
        prior = out / "gpt2"
        train("gpt2", data, args.format, prior, {"vq": str(out / "vq"), "minutes": args.minutes,
                                                 "epochs": args.epochs})
    results = {}
    for scorer, name in SCORERS:
        row = {}
        for precision in ("float32", "bfloat16"):
            folder = out / f"scores_{scorer}_{precision}"
            start = time.perf_counter()
            summary = score(scorer, prior, test, args.format, folder, restorations=args.restorations,
                            decode_precision=precision, threshold=1e9, progress=False, echo=lambda *a: None)
            seconds = (time.perf_counter() - start) / summary["images"]
            row[precision] = {**{k: evaluate_scores(folder)["score"].get(k) for k in METRICS}, "s_per_image": seconds}
        a, b = _maps(out / f"scores_{scorer}_float32"), _maps(out / f"scores_{scorer}_bfloat16")
        row["max_map_difference"] = max(float(np.abs(a[k] - b[k]).max()) for k in a)
        row["map_range"] = max(float(np.abs(a[k]).max()) for k in a)
        results[name] = row
        (out / "results.json").write_text(json.dumps(results, indent=2))
    print("| scorer | decoding | image AUROC | best F1 | pixel AUROC | AUPRO | s / image | max map difference "
          "(largest map value) |")
    print("|---|---|---|---|---|---|---|---|")
    for name, row in results.items():
        for precision in ("float32", "bfloat16"):
            r = row[precision]
            diff = (f"{row['max_map_difference']:.1e} ({row['map_range']:.2f})" if precision == "bfloat16" else "")
            print(f"| {name} | {precision} | " + " | ".join(f"{r[k]:.3f}" for k in METRICS) +
                  f" | {r['s_per_image']:.3f} | {diff} |")


if __name__ == "__main__":
    main()
