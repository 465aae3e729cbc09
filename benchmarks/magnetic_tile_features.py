"""The feature-reconstruction methods on Magnetic Tile (its split.json); reproduces the
SGFR and feature-AE rows of benchmarks/RESULTS.md.

    python benchmarks/magnetic_tile_features.py --method sgfr --out runs/mt_sgfr
    python benchmarks/magnetic_tile_features.py --method feature_ae --out runs/mt_feature_ae
    python benchmarks/magnetic_tile_features.py ... --resume   # continue an interrupted run

--method sgfr: subspace-guided feature reconstruction as the paper runs Magnetic Tile
(256 x 256 input, WideResNet-50-2 levels 2 and 3 reconstructed, level 4 for sampling,
s_ref = 10, s = 7, sigma = 4). Nothing is trained; the memory bank is the 761 training
images.
--method feature_ae: the hierarchical feature-reconstruction autoencoder (layers 1-3 of
WideResNet-50-2, SGD lr 0.4, momentum 0.9, weight decay 1e-4) at --size (default 128
on a CPU budget), trained for --epochs or --minutes, checkpointed every epoch.

--weights: a torchvision wide_resnet50_2 file (ImageNet); without one (or
$TORCH_HOME's copy) the backbone is random and the run says so. Scores are written per
batch under <out>/scores; results go to <out>/results.json and print as Markdown.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from vqfast import metrics
from vqfast.data import ImageTransform, MagneticTile
from vqfast.models import Backbone, FeatureAE, FeatureAEConfig
from vqfast.scorers import FeatureAEScorer, SGFRScorer, reduce_map, score_dataset
from vqfast.training import TrainConfig, Trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"))
    p.add_argument("--method", choices=["sgfr", "feature_ae"], default="sgfr")
    p.add_argument("--out", default=None, help="default runs/magnetic_tile_<method>")
    p.add_argument("--weights", default=None, help="torchvision wide_resnet50_2 state-dict file")
    p.add_argument("--size", type=int, default=None, help="default 256 (sgfr) or 128 (feature_ae)")
    p.add_argument("--s-ref", type=int, default=10)
    p.add_argument("--s", type=int, default=7)
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--minutes", type=float, default=15.0, help="feature_ae training budget")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a training run already in the output folder")
    args = p.parse_args(argv)

    out = Path(args.out or f"runs/magnetic_tile_{args.method}")
    out.mkdir(parents=True, exist_ok=True)
    args.size = args.size or (256 if args.method == "sgfr" else 128)
    torch.manual_seed(args.seed)
    transform = ImageTransform(size=args.size, channels=3)
    train = MagneticTile(args.data, "train", transform)
    test = MagneticTile(args.data, "test", transform)
    start = time.monotonic()
    results = {"method": args.method, "args": vars(args)}

    if args.method == "sgfr":
        backbone = Backbone("wide_resnet50_2", layers=(2, 3, 4), weights=args.weights)
        scorer = SGFRScorer.magnetic_tile(backbone, s_ref=args.s_ref, s=args.s).fit(train, progress=True)
        results["pretrained"] = backbone.pretrained
    else:
        model = FeatureAE(FeatureAEConfig(weights=args.weights, backbone_seed=args.seed))
        config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=0.4, optimizer="sgd", momentum=0.9,
                             weight_decay=1e-4, early_stopping=False, max_minutes=args.minutes, seed=args.seed)
        history = Trainer(model, train, config=config, out_dir=out / "train").fit(resume=args.resume, overwrite=args.overwrite)
        results.update(pretrained=model.backbone.pretrained, epochs=history[-1]["epoch"],
                       stopped=history[-1]["stopped"], losses=[r["train"]["loss"] for r in history])
        scorer = FeatureAEScorer(model)
    results["fit_minutes_this_run"] = (time.monotonic() - start) / 60

    t0 = time.monotonic()
    scores, maps, labels, masks = score_dataset(scorer, test, batch_size=8, out_dir=out / "scores",
                                                resume=args.resume, progress=True)
    results["score_seconds_per_image_this_run"] = (time.monotonic() - t0) / len(test)
    results["scores"] = {}
    for reduction in ("max", "topk_mean"):
        results["scores"][reduction] = metrics.evaluate(labels, reduce_map(maps, reduction, 0.01), masks, maps)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{args.method} ({'ImageNet' if results['pretrained'] else 'random'} WideResNet-50-2, {args.size}px)")
    print("| image score | image AUROC | best F1 | pixel AUROC | pixel AP | AUPRO |")
    print("|---|---|---|---|---|---|")
    for reduction, r in results["scores"].items():
        print(f"| {reduction} | {r['image_auroc']:.3f} | {r['image_best_f1']:.3f} | {r['pixel_auroc']:.3f} | "
              f"{r['pixel_ap']:.3f} | {r['aupro']:.3f} |")


if __name__ == "__main__":
    main()
