"""Train a CPU-sized DSR on Magnetic Tile (its split.json) in three stages and score the
test split; reproduces the DSR rows of benchmarks/RESULTS.md.

    python benchmarks/magnetic_tile_dsr.py --out runs/mt_dsr                  # about 27 min on 2 cores
    python benchmarks/magnetic_tile_dsr.py --out runs/mt_dsr --resume         # continue an interrupted run
    python benchmarks/magnetic_tile_dsr.py --general vq_model_pretrained_128_4096.pckl --channels 3 ...

Stage 1 (the discrete model and general decoder) trains on the training images unless
--general names the authors' ImageNet file (then --channels 3 and the paper's sizes);
stage 2 (object-specific decoder, anomaly module; feature-space anomalies, lr x0.1 at
80 % of its steps) and stage 3 (upsampling module on image-level anomalies) follow, each
with a --minutes share of the budget (--split, default 30/55/15 %) and its own folder
under --out. The training set's last 10 % (seeded shuffle) is held out; training stops
at each stage's time or step budget. Results go to <out>/results.json and print as
Markdown; the test split is scored with DSRScorer (resumable under <out>/scores).
"""

import argparse
import json
import time
from pathlib import Path

import torch

from vqfast import metrics
from vqfast.data import balanced_subset, DSRAnomalies, ImageTransform, MagneticTile
from vqfast.models import DSR, DSRConfig
from vqfast.models.dsr import paper_config
from vqfast.scorers import DSRScorer, score_dataset
from vqfast.training import TrainConfig, Trainer

def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"))
    p.add_argument("--out", default="runs/magnetic_tile_dsr")
    p.add_argument("--size", type=int, default=128, help="image side, a multiple of 32")
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--general", default=None, help="the authors' pretrained discrete model (skips stage 1)")
    p.add_argument("--minutes", type=float, default=25.0, help="training budget over the three stages")
    p.add_argument("--split", type=float, nargs=3, default=(0.3, 0.55, 0.15), help="budget share per stage")
    p.add_argument("--steps", type=int, nargs=3, default=(3000, 450, 120),
                   help="step budget per stage (stage 2's lr drops x0.1 at 80 %% of it); the defaults fit the "
                        "budget on 2 cores (measured 0.15 / 1.8 / 1.8 s per step)")
    p.add_argument("--lr", type=float, default=2e-4, help="stages 2 and 3 (the authors')")
    p.add_argument("--lr-general", type=float, default=1e-3, help="stage 1 (a short run on the training images)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=None, help="score only N test images (a smoke test)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace training runs already in the output folders")
    args = p.parse_args(argv)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    transform = ImageTransform(size=args.size, channels=args.channels)
    full = MagneticTile(args.data, "train", transform)
    test = MagneticTile(args.data, "test", transform)
    if args.test_limit is not None:  # half defect-free, half defective
        test = balanced_subset(test, args.test_limit)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(args.seed)).tolist()
    n_val = len(full) // 10
    train, val = torch.utils.data.Subset(full, order[n_val:]), torch.utils.data.Subset(full, order[:n_val])

    model = DSR(paper_config(args.channels) if args.general else DSRConfig(in_channels=args.channels))
    if args.general:
        model.load_general(args.general)
    results = {"config": model.config_dict(), "args": vars(args), "stages": {}, "scores": {}}
    for stage in (1, 2, 3):
        if stage == 1 and args.general:
            results["stages"]["1"] = {"source": f"the authors' pretrained file {args.general}"}
            continue
        model.set_stage(stage)
        steps = args.steps[stage - 1]
        cfg = TrainConfig(epochs=10_000, batch_size=args.batch_size, lr=args.lr_general if stage == 1 else args.lr,
                          max_steps=steps,
                          lr_milestones=(int(0.8 * steps),) if stage == 2 else (), early_stopping=stage == 1,
                          max_minutes=args.minutes * args.split[stage - 1], seed=args.seed + stage)
        data = train if stage == 1 else DSRAnomalies(train, stage, seed=args.seed + stage)
        check = val if stage == 1 else None  # stages 2 and 3 draw their anomalies: no clean validation loss
        t0 = time.monotonic()
        history = Trainer(model, data, check, cfg, out_dir=out / f"stage{stage}", input_key=DSR.STAGE_INPUTS[stage]).fit(
            resume=args.resume, overwrite=args.overwrite)
        results["stages"][str(stage)] = {"epochs": history[-1]["epoch"], "steps": history[-1]["step"],
                                         "stopped": history[-1]["stopped"], "final_train": history[-1]["train"],
                                         "minutes_this_run": (time.monotonic() - t0) / 60}
        (out / "results.json").write_text(json.dumps(results, indent=2))
    model.eval()
    t0 = time.monotonic()
    scores, maps, labels, masks = score_dataset(DSRScorer(model), test, batch_size=8, out_dir=out / "scores",
                                                resume=args.resume, progress=True)
    results["seconds_per_image"] = (time.monotonic() - t0) / len(test)
    results["general_model"] = model.general_origin
    results["scores"] = metrics.evaluate(labels, scores, masks, maps)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\nDSR on Magnetic Tile, {args.size}x{args.size}; general model: {model.general_origin}")
    for stage, r in results["stages"].items():
        print(f"  stage {stage}: {r}")
    r = results["scores"]
    print("| image AUROC | best F1 | pixel AUROC | AUPRO | pixel AP | s / image |")
    print("|---|---|---|---|---|---|")
    print(f"| {r['image_auroc']:.3f} | {r['image_best_f1']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} | "
          f"{r['pixel_ap']:.3f} | {results['seconds_per_image']:.3f} |")


if __name__ == "__main__":
    main()
