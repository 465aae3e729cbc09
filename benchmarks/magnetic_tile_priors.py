"""Autoregressive priors on Magnetic Tile and the four token/restoration scorers; reproduces
the prior rows of benchmarks/RESULTS.md.

    python benchmarks/magnetic_tile_vq.py --out runs/mt_vqvae                       # the VQ run first
    python benchmarks/magnetic_tile_priors.py --vq runs/mt_vqvae --prior gpt2 --out runs/mt_vqvae_gpt2
    python benchmarks/magnetic_tile_priors.py --vq runs/mt_vqvae --prior pixelsnail --out runs/mt_vqvae_snail
    python benchmarks/magnetic_tile_priors.py --vq runs/mt_vqvae --prior performer --out runs/mt_perf
    ... --resume    # continue an interrupted run (training, searches and scoring)

It runs the command line's code path: the prior is `vqfast train <prior> --vq <run>
--data <MT> --format mtd` (token grids of the VQ run's training split and of its held-out
tenth, cached in <out>/tokens.safetensors; early stopping on the held-out grids;
--minutes); each scorer then scores the whole test split as

    vqfast score <scorer> --run <out> --data <MT> --format mtd --percentile <p> --out <out>/scores_<scorer>_p<p>

--prior performer trains the Performer (FAVOR+) prior by ILTM in --iltm-rounds rounds
sharing the --minutes budget, and adds the KDE scorer (tokens with p < exp(-lambda_P)
resampled, S restorations, one decode each).

Validation, as the paper sets it up: the held-out tenth of the defect-free training images
and a seeded tenth of each defect class carved from the test split
(vqfast.data.carve_defective); the test metrics are on the rest of the test split.
Thresholds are percentiles of the prior's NLLs on the normal validation grids: lambda_S,
lambda_P and lambda_LP are each searched over --search (the grid of the paper's tables
13-24) on the validation split only (vqfast.scorers.search_percentile: highest image
AUROC; its scores under <out>/search_<scorer>); --sample-pct / --pixel-pct / --light-pct fix
one instead. Results go to <out>/results.json and print as Markdown, with the percentile
the paper's tables 6-8 chose for the same VQ model and prior (PAPER_PERCENTILES) beside
the one searched here.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from vqfast import checkpoint
from vqfast.app.methods import train
from vqfast.app.report import evaluate_scores
from vqfast.app.score import load_scorer, score
from vqfast.data import ImageTransform, MagneticTile, carve_defective
from vqfast.scorers import PAPER_GRID, PAPER_PERCENTILES, search_percentile

DATA = str(Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile")
# scorer -> its threshold's kind (None: none), in scoring order: the slow one last, so an
# interrupted run has the others
SCORERS = {"sample": "sample", "light": "light", "regenerative": None, "pixel": "pixel", "kde": "pixel"}
NAMES = {"sample": "Sample-wise", "light": "Light-Pixel-wise", "regenerative": "Regenerative",
         "pixel": "Pixel-wise", "kde": "KDE"}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DATA)
    p.add_argument("--vq", required=True, help="a vqvae / vqgan run folder (magnetic_tile_vq.py or vqfast train)")
    p.add_argument("--prior", choices=["gpt2", "pixelsnail", "performer"], default="gpt2")
    p.add_argument("--iltm-rounds", type=int, default=2, help="performer: ILTM rounds sharing --minutes")
    p.add_argument("--out", default=None, help="default runs/magnetic_tile_<prior>")
    p.add_argument("--minutes", type=float, default=8.0, help="prior training budget")
    p.add_argument("--width", type=int, default=64, help="pixelsnail channels (the paper's 128 on a GPU)")
    p.add_argument("--search", default=",".join(map(str, PAPER_GRID)), help="percentiles to search each threshold over")
    p.add_argument("--sample-pct", type=float, default=None, help="fix lambda_S's percentile instead of searching it")
    p.add_argument("--pixel-pct", type=float, default=None, help="fix lambda_P's percentile (also the KDE scorer's)")
    p.add_argument("--light-pct", type=float, default=None, help="fix lambda_LP's percentile")
    p.add_argument("--scorers", default="sample,light,regenerative,pixel",
                   help="comma-separated subset of " + ",".join(SCORERS) + " (kde added for --prior performer)")
    p.add_argument("--restorations", type=int, default=5)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a training run already in the output folder")
    args = p.parse_args(argv)

    out = Path(args.out or f"runs/magnetic_tile_{args.prior}")
    settings = {"vq": args.vq, "minutes": args.minutes}
    settings.update({"pixelsnail": {"width": args.width}, "performer": {"iltm_rounds": args.iltm_rounds}}.get(
        args.prior, {}))
    start = time.monotonic()
    run = train(args.prior, args.data, "mtd", out, settings, resume=args.resume, overwrite=args.overwrite)
    results = {"vq": args.vq, "run": run, "train_minutes_this_run": (time.monotonic() - start) / 60,
               "thresholds": {}, "scores": {}, "seconds_per_image": {}}

    base, _ = load_scorer(out, "sample")  # the run's VQ model, prior and validation grids
    vq_name = type(base.vq_model).__name__
    transform = ImageTransform(size=int(run["transform"]["size"]), channels=int(run["transform"]["channels"]))
    test = MagneticTile(args.data, "test", transform)
    val_defective, _ = carve_defective(test, 0.1, seed=int(run["settings"]["seed"]))
    carved = [str(test.records[i].image) for i in val_defective.indices]
    normal_val = MagneticTile(args.data, "train", transform)
    by_path = {str(r.image.resolve()): i for i, r in enumerate(normal_val.records)}
    normal_val = torch.utils.data.Subset(normal_val, [by_path[str(Path(q).resolve())] for q in run["val_images"]])
    val = torch.utils.data.ConcatDataset([normal_val, val_defective])
    val_tokens = checkpoint.read(out / "tokens.safetensors")[0]["val"]

    paper = dict(zip(("sample", "pixel", "light"), PAPER_PERCENTILES[(vq_name, args.prior)]))
    fixed = {"sample": args.sample_pct, "pixel": args.pixel_pct, "light": args.light_pct}
    chosen = args.scorers.split(",") + (["kde"] if args.prior == "performer" else [])
    unknown = set(chosen) - set(SCORERS)
    if unknown:
        p.error(f"--scorers takes {','.join(SCORERS)}, got {','.join(sorted(unknown))}")
    grid = [float(v) for v in args.search.split(",")]
    for name in chosen:  # each threshold searched on validation, then the test split scored
        kind = SCORERS[name]
        pct = None
        if kind is not None:
            pct = fixed[kind]
            entry = {"percentile": pct, "paper": paper[kind], "searched": None}
            if pct is None:
                found = search_percentile(
                    lambda t: load_scorer(out, name, token_threshold=t, restorations=args.restorations)[0],
                    base.prior, val_tokens, val, grid, batch_size=8, out_dir=out / f"search_{name}",
                    resume=args.resume, progress=True)
                pct = found["percentile"]
                entry.update(percentile=pct, searched=found["grid"], rule=found["rule"])
            results["thresholds"][NAMES[name]] = entry
            (out / "results.json").write_text(json.dumps(results, indent=2))
        folder = out / (f"scores_{name}" if pct is None else f"scores_{name}_p{pct:g}")
        t0 = time.monotonic()
        summary = score(name, out, args.data, "mtd", folder, percentile=pct, restorations=args.restorations,
                        resume=args.resume)
        results["seconds_per_image"][NAMES[name]] = (time.monotonic() - t0) / summary["images"]  # a resume: the rest
        # the paper scores Sample-wise at the image level only
        found = evaluate_scores(folder, exclude=carved, pixel=name != "sample",
                                reductions=() if name == "sample" else ("topk_mean",))
        results["scores"][NAMES[name]] = found["score"]
        if "topk_mean" in found:
            results["scores"][NAMES[name] + " (topk_mean)"] = found["topk_mean"]
        (out / "results.json").write_text(json.dumps(results, indent=2))

    s = run["summary"]
    print(f"\n{args.prior} prior on {args.vq}: " + (f"{s['epochs']} epochs ({s['stopped'] or 'epoch budget used'})"
                                                   if "epochs" in s else f"{s}"))
    for key, t in results["thresholds"].items():
        found = "" if t["searched"] is None else " searched: " + ", ".join(
            f"{r['percentile']:g} -> {r['image_auroc']:.3f}" for r in t["searched"])
        print(f"{key}: percentile {t['percentile']:g} (paper {t['paper']:g}){found}")
    print("| scorer | image AUROC | best F1 | pixel AUROC | AUPRO | s / image |")
    print("|---|---|---|---|---|---|")
    for name, r in results["scores"].items():
        secs = results["seconds_per_image"].get(name)
        pix = f"{r['pixel_auroc']:.3f} | {r['aupro']:.3f}" if "pixel_auroc" in r else "- | -"
        print(f"| {name} | {r['image_auroc']:.3f} | {r['image_best_f1']:.3f} | {pix} | "
              f"{'' if secs is None else f'{secs:.3f}'} |")


if __name__ == "__main__":
    main()
