"""Autoregressive priors on Magnetic Tile and the four token/restoration scorers; reproduces
the prior rows of benchmarks/RESULTS.md.

    python benchmarks/magnetic_tile_vq.py --model vqvae --out runs/mt_vqvae        # the VQ model first
    python benchmarks/magnetic_tile_priors.py --vq runs/mt_vqvae --prior gpt2 --out runs/mt_vqvae_gpt2
    python benchmarks/magnetic_tile_priors.py --vq runs/mt_vqvae --prior pixelsnail --out runs/mt_vqvae_snail
    python benchmarks/magnetic_tile_priors.py --vq runs/mt_vqvae --prior performer --iltm-rounds 2 --out runs/mt_perf
    ... --resume    # continue an interrupted run (training and scoring)

--prior performer trains the Performer (FAVOR+) prior and adds the KDE scorer (tokens
with p < exp(-lambda_P) resampled, S restorations, one decode each); --iltm-rounds R
trains it (GPT-2 or Performer) by ILTM in R rounds sharing the --minutes budget, masking
the tokens over --iltm-percentile of the training NLLs after each round.

The VQ model's token grids are computed once (training and validation) and cached in
<out>/tokens.safetensors; the prior trains on them with the shared engine (early
stopping on the validation grids, --minutes budget). Validation, as the paper
sets it up: the held-out tenth of the defect-free training images (also the early-stopping
split) and a seeded tenth of each defect class carved from the test split
(vqfast.data.carve_defective); the test metrics are on the rest of the test split.
Thresholds are percentiles of the prior's NLLs on the normal validation grids: lambda_S,
lambda_P and lambda_LP are each searched over --search (the grid of the paper's tables
13-24) on the validation split only (vqfast.scorers.search_percentile: highest image
AUROC); --sample-pct / --pixel-pct / --light-pct fix one instead. Then the scorers in
--scorers score the whole test split, each written per batch under <out>/scores_<scorer>_p<percentile>
(per-image results, so they serve any split of it; validation scores under
<out>/search_<scorer>), and are evaluated on the test images not carved for validation;
results go to <out>/results.json and
print as Markdown, with the percentile the paper's tables 6-8 chose for the same VQ
model and prior (PAPER_PERCENTILES) beside the one searched here.
"""

import argparse
import json
import math
import time
from pathlib import Path

import torch

from vqfast import checkpoint, metrics
from vqfast.data import balanced_subset, carve_defective, ImageTransform, MagneticTile, TokenGrids, encode_dataset
from vqfast.iltm import iltm_fit
from vqfast.models import GPT2Prior, GPT2PriorConfig, PerformerPrior, PerformerPriorConfig, PixelSNAIL, PixelSNAILConfig
from vqfast.scorers import PAPER_GRID, PAPER_PERCENTILES, KDEScorer, RegenerativeScorer, reduce_map, score_dataset, search_percentile
from vqfast.scorers.restoration import LightPixelWiseScorer, PixelWiseScorer, SampleWiseScorer, nll_threshold
from vqfast.training import TrainConfig, Trainer


def _tokens(out: Path, vq_model, splits, resume: bool):
    path = out / "tokens.safetensors"
    if resume and path.is_file():
        tensors, _ = checkpoint.read(path)
        return tensors
    tokens = {name: encode_dataset(vq_model, data, progress=True) for name, data in splits.items()}
    checkpoint.write_atomic(path, tokens, {"what": "token grids"})
    return tokens


SCORERS = ("Sample-wise", "Light-Pixel-wise", "Regenerative", "Pixel-wise", "KDE")


def _folder(scorer: str) -> str:
    return scorer.lower().replace("-", "_")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"))
    p.add_argument("--vq", required=True, help="out folder of magnetic_tile_vq.py (holds model.safetensors)")
    p.add_argument("--prior", choices=["gpt2", "pixelsnail", "performer"], default="gpt2")
    p.add_argument("--iltm-rounds", type=int, default=1, help="ILTM rounds (1: plain training); --minutes is shared")
    p.add_argument("--iltm-percentile", type=float, default=95.0, help="ILTM: tokens over this NLL percentile masked")
    p.add_argument("--kde", action="store_true", help="also score with KDE maps (default with --prior performer)")
    p.add_argument("--out", default=None, help="default runs/magnetic_tile_<prior>")
    p.add_argument("--minutes", type=float, default=8.0, help="prior training budget")
    p.add_argument("--epochs", type=int, default=200)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--channels", type=int, default=64, help="pixelsnail width (the paper's 128 on a GPU)")
    p.add_argument("--search", default=",".join(map(str, PAPER_GRID)), help="percentiles to search each threshold over")
    p.add_argument("--sample-pct", type=float, default=None, help="fix lambda_S's percentile instead of searching it")
    p.add_argument("--pixel-pct", type=float, default=None, help="fix lambda_P's percentile (also the KDE scorer's)")
    p.add_argument("--light-pct", type=float, default=None, help="fix lambda_LP's percentile")
    p.add_argument("--scorers", default=",".join(SCORERS), help="comma-separated subset of " + ",".join(SCORERS))
    p.add_argument("--restorations", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-limit", type=int, default=None, help="score only the first N test images (a smoke test)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a training run already in the output folder")
    args = p.parse_args(argv)

    out = Path(args.out or f"runs/magnetic_tile_{args.prior}")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    vq_model = checkpoint.load_model(Path(args.vq) / "model.safetensors").eval()
    size = vq_model.config.resolution if hasattr(vq_model.config, "resolution") else 128
    transform = ImageTransform(size=size, channels=vq_model.config.in_channels)
    full = MagneticTile(args.data, "train", transform)
    test = MagneticTile(args.data, "test", transform)
    val_defective, _ = carve_defective(test, 0.1, seed=args.seed)
    if args.test_limit is not None:  # half defect-free, half defective
        test = balanced_subset(test, args.test_limit)
    held_out = set(val_defective.indices)
    keep = torch.tensor([i not in held_out for i in (test.indices if args.test_limit is not None else range(len(test)))])
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(args.seed)).tolist()
    n_val = len(full) // 10  # the same held-out tenth as magnetic_tile_vq.py
    splits = {"train": torch.utils.data.Subset(full, order[n_val:]), "val": torch.utils.data.Subset(full, order[:n_val])}
    tokens = _tokens(out, vq_model, splits, args.resume)
    val = torch.utils.data.ConcatDataset([splits["val"], val_defective])
    _, h, w = tokens["train"].shape
    k = vq_model.config.num_codes
    if args.prior == "gpt2":
        prior = GPT2Prior(GPT2PriorConfig(num_codes=k, height=h, width=w))
    elif args.prior == "performer":
        prior = PerformerPrior(PerformerPriorConfig(num_codes=k, height=h, width=w))
    else:
        prior = PixelSNAIL(PixelSNAILConfig(num_codes=k, height=h, width=w, channels=args.channels))

    start = time.monotonic()
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                         max_minutes=args.minutes / args.iltm_rounds, seed=args.seed)
    if args.iltm_rounds > 1:
        iltm_fit(prior, tokens["train"], args.iltm_rounds, config, out_dir=out / "prior_iltm",
                 percentile=args.iltm_percentile, val_tokens=tokens["val"], resume=args.resume)
        history = json.loads(checkpoint.read(out / "prior_iltm" / f"round_{args.iltm_rounds - 1}" /
                                             "checkpoint.safetensors")[1]["trainer"])["history"]
    else:
        history = Trainer(prior, TokenGrids(tokens["train"]), TokenGrids(tokens["val"]), config, out_dir=out / "prior",
                          input_key="tokens").fit(resume=args.resume, overwrite=args.overwrite)
    prior.eval()
    results = {"vq": str(args.vq), "prior": prior.config_dict(), "args": vars(args), "epochs": history[-1]["epoch"],
               "stopped": history[-1]["stopped"], "train_minutes_this_run": (time.monotonic() - start) / 60,
               "final_train": history[-1]["train"], "final_val": history[-1]["val"], "thresholds": {}, "scores": {},
               "seconds_per_image": {}}
    paper = dict(zip(("sample", "pixel", "light"), PAPER_PERCENTILES[(type(vq_model).__name__, args.prior)]))
    fixed = {"sample": args.sample_pct, "pixel": args.pixel_pct, "light": args.light_pct}
    builders = {  # threshold -> scorer; the slow one last, so an interrupted run has the others
        "Sample-wise": ("sample", lambda t: SampleWiseScorer(vq_model, prior, t)),
        "Light-Pixel-wise": ("light", lambda t: LightPixelWiseScorer(vq_model, prior, t, restorations=args.restorations,
                                                                     seed=args.seed)),
        "Regenerative": (None, lambda t: RegenerativeScorer(vq_model)),  # the paper's mean L1
        "Pixel-wise": ("pixel", lambda t: PixelWiseScorer(vq_model, prior, t, restorations=args.restorations,
                                                          seed=args.seed)),
        # tokens with p < exp(-lambda_P) resampled, S restorations, one decode each
        "KDE": ("pixel", lambda t: KDEScorer(vq_model, prior, math.exp(-t), restorations=args.restorations,
                                             seed=args.seed)),
    }
    chosen = [n for n in args.scorers.split(",") if n != "KDE" or args.kde or args.prior == "performer"]
    unknown = set(chosen) - set(builders)
    if unknown:
        p.error(f"--scorers takes {','.join(SCORERS)}, got {','.join(sorted(unknown))}")
    grid = [float(v) for v in args.search.split(",")]
    for name in chosen:  # each searched on validation, then scored on test
        kind, build = builders[name]
        key = f"{kind} ({name})"
        if kind is None:
            pass
        elif fixed[kind] is not None:
            results["thresholds"][key] = {"percentile": fixed[kind], "paper": paper[kind], "searched": None,
                                          "value": nll_threshold(prior, tokens["val"], fixed[kind])}
        else:
            found = search_percentile(build, prior, tokens["val"], val, grid, batch_size=8,
                                      out_dir=out / f"search_{_folder(name)}", resume=args.resume, progress=True)
            results["thresholds"][key] = {"percentile": found["percentile"], "paper": paper[kind],
                                          "value": found["threshold"], "searched": found["grid"], "rule": found["rule"]}
            (out / "results.json").write_text(json.dumps(results, indent=2))
        scorer = build(None if kind is None else results["thresholds"][key]["value"])
        t0 = time.monotonic()
        folder = out / f"scores_{_folder(name)}" if kind is None else \
            out / f"scores_{_folder(name)}_p{results['thresholds'][key]['percentile']:g}"
        scores, maps, labels, masks = (t[keep] for t in score_dataset(scorer, test, batch_size=8, out_dir=folder,
                                                                      resume=args.resume, progress=True))
        results["seconds_per_image"][name] = (time.monotonic() - t0) / len(test)  # of a resumed run: the rest only
        pixel = name != "Sample-wise"  # the paper scores Sample-wise at the image level only
        results["scores"][name] = metrics.evaluate(labels, scores, masks if pixel else None, maps if pixel else None)
        if name != "Sample-wise":
            results["scores"][name + " (topk_mean)"] = metrics.evaluate(labels, reduce_map(maps, "topk_mean", 0.01))
        (out / "results.json").write_text(json.dumps(results, indent=2))

    print(f"\n{args.prior} prior on {args.vq}: {results['epochs']} epochs ({results['stopped']})")
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
