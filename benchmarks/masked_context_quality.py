"""Masked-context scoring against the GPT-2 prior's scorers, same VQ model and codebook:
image AUROC, best F1, pixel AUROC and AUPRO of masked-context Sample-wise and restoration
against Sample-wise, Light-Pixel-wise and Pixel-wise; reproduces the masked-context rows
of benchmarks/RESULTS.md.

    python benchmarks/masked_context_quality.py --out runs/masked_procedural     # the procedural split
    python benchmarks/masked_context_quality.py --data ../shared/data/magnetic_tile --format mtd \\
        --vq runs/mt_vqvae --out runs/masked_mt --minutes 8

The command line's code path: without --vq a VQ-VAE is trained first (`vqfast train vqvae`),
then `vqfast train gpt2` (or --gpt2 RUN) and `vqfast train masked` on its token grids with
the same budget (--minutes, --epochs), then `vqfast score` with each scorer over the test split
(--variants: also with `--passes 1` and / or `--marker` the GPT-2 run; --prior-precision:
every row's priors in that precision, `vqfast score --prior-precision`); the
thresholds are the default percentiles (the paper's for GPT-2; the masked prior uses the
GPT-2 prior's). Without --data the procedural split of `vqfast demo` (64 x 64, 160 training
images, 40 + 40 test images) is written as image folders under <out>/data.
"""

import argparse
import json
import time
from pathlib import Path

from vqfast.app.methods import read_run, train
from vqfast.app.report import evaluate_scores
from vqfast.app.score import score
from vqfast.data import procedural_splits, write_image_folder

SCORERS = (("gpt2", "sample", "Sample-wise (GPT-2)", {}), ("gpt2", "light", "Light-Pixel-wise (GPT-2)", {}),
           ("gpt2", "pixel", "Pixel-wise (GPT-2)", {}), ("masked", "masked-sample", "masked Sample-wise", {}),
           ("masked", "masked-restore", "masked restoration", {}))
# --variants: the faster settings of the masked scorers (vqfast score --passes, --marker)
VARIANTS = (("masked", "masked-restore", "masked restoration, 1 pass", {"passes": 1}),
            ("masked", "masked-sample", "masked Sample-wise, u by GPT-2", {"marker": "gpt2"}),
            ("masked", "masked-restore", "masked restoration, u by GPT-2", {"marker": "gpt2"}),
            ("masked", "masked-restore", "masked restoration, u by GPT-2, 1 pass", {"marker": "gpt2", "passes": 1}))


def procedural_folders(root: Path):
    """(train folder, test folder): `vqfast demo`'s procedural split (64 x 64, 160 training
    images, 40 + 40 test images) written under ``root``."""
    train_set, test_set = procedural_splits(size=64, seed=0, n_train=160, n_test_normal=40, n_test_anomalous=40)
    return str(write_image_folder(train_set, root / "train")), str(write_image_folder(test_set, root / "test"))


def train_small_vqvae(data, fmt: str, out, epochs: int = 20, resume: bool = False):
    """The procedural tables' VQ-VAE: hidden 32, 2 residual blocks, 64 x 16 codes, 16 x 16 tokens."""
    return train("vqvae", data, fmt, out, {"size": 64, "channels": 3, "epochs": epochs, "hidden": 32, "res_blocks": 2,
                                           "codes": 64, "code_dim": 16, "downsamples": 2}, resume=resume)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="default: the procedural split, written under <out>/data")
    p.add_argument("--format", default="folder")
    p.add_argument("--vq", default=None, help="a trained vqvae / vqgan run (default: train one here)")
    p.add_argument("--gpt2", default=None, help="a trained gpt2 (or pixelsnail, performer) run on --vq's grids, the "
                                                "raster prior of the other rows and --variants' marker (default: "
                                                "train a gpt2 here)")
    p.add_argument("--out", default="runs/masked_procedural")
    p.add_argument("--minutes", type=float, default=3.0, help="each prior's training budget")
    p.add_argument("--epochs", type=int, default=30, help="each prior's epoch budget")
    p.add_argument("--vq-epochs", type=int, default=20)
    p.add_argument("--restorations", type=int, default=5)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--prior-precision", choices=["float32", "bfloat16"], default="float32",
                   help="every scorer's priors (thresholds included) in this precision")
    p.add_argument("--variants", action="store_true",
                   help="also the masked scorers with one in-painting pass and/or u marked by the GPT-2 prior")
    args = p.parse_args(argv)

    out = Path(args.out)
    data, test = (args.data, args.data) if args.data else procedural_folders(out / "data")
    vq = args.vq
    if vq is None:
        vq = str(out / "vq")
        train_small_vqvae(data, args.format, vq, args.vq_epochs, resume=args.resume)
    budget = {"vq": vq, "minutes": args.minutes, "epochs": args.epochs}
    dirs = {"gpt2": Path(args.gpt2) if args.gpt2 else out / "gpt2", "masked": out / "masked"}
    runs = {m: read_run(d) if m == "gpt2" and args.gpt2 else train(m, data, args.format, d, budget, resume=args.resume)
            for m, d in dirs.items()}
    results = {"vq": vq, "priors": {m: r["summary"] for m, r in runs.items()}, "scores": {}}
    ar = {"gpt2": "GPT-2", "pixelsnail": "PixelSNAIL", "performer": "Performer"}[runs["gpt2"]["method"]]
    for method, scorer, name, extra in SCORERS + (VARIANTS if args.variants else ()):
        name = name.replace("GPT-2", ar)
        tags = [scorer] + [f"{k}{v}" for k, v in extra.items()]
        if args.prior_precision != "float32":
            name, tags = f"{name}, {args.prior_precision}", tags + [args.prior_precision]
        folder = out / ("scores_" + "_".join(tags))
        options = {**extra, "marker": dirs["gpt2"]} if "marker" in extra else extra
        start = time.perf_counter()
        summary = score(scorer, dirs[method], test, args.format, folder, restorations=args.restorations,
                        prior_precision=args.prior_precision, resume=args.resume, **options)
        results["scores"][name] = evaluate_scores(folder)["score"]
        results["scores"][name]["nll_percentile"] = summary.get("nll_percentile")
        results["scores"][name]["s_per_image"] = (time.perf_counter() - start) / summary["images"]
        (out / "results.json").write_text(json.dumps(results, indent=2))

    for m, s in results["priors"].items():
        val = (s.get("final_val") or {}).get("loss")
        print(f"{m}: {s['epochs']} epochs ({s['stopped'] or 'epoch budget used'}), final training loss "
              f"{s['final_train']['loss']:.3f} nats" + ("" if val is None else f", validation {val:.3f}"))
    print("| scorer | percentile | image AUROC | best F1 | pixel AUROC | AUPRO | s / image (with the threshold's "
          "validation scoring) |")
    print("|---|---|---|---|---|---|---|")
    for name, r in results["scores"].items():
        print(f"| {name} | {r['nll_percentile']} | {r['image_auroc']:.3f} | {r['image_best_f1']:.3f} | "
              f"{r.get('pixel_auroc', float('nan')):.3f} | {r.get('aupro', float('nan')):.3f} | "
              f"{r['s_per_image']:.3f} |")


if __name__ == "__main__":
    main()
