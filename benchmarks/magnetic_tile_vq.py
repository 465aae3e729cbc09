"""Train a VQ model on Magnetic Tile (its split.json) and score the test split with the
Regenerative scorer; reproduces the Magnetic Tile rows of benchmarks/RESULTS.md.

    python benchmarks/magnetic_tile_vq.py --data ../shared/data/magnetic_tile --out runs/mt_vqvae
    python benchmarks/magnetic_tile_vq.py --model vqgan --out runs/mt_vqgan
    python benchmarks/magnetic_tile_vq.py ... --resume     # continue an interrupted run

--model vqvae: the Performer paper's VQ-VAE at 128 x 128 (16 x 16 latents).
--model vqgan: the VQ model of tables 1-2 (table 2's decoder) scaled for a CPU budget
(64 x 64 input, channels 32-64-64-128, 8 x 8 latents of 64-d codes, 128 codes), with the
recipe that keeps its codebook: EMA codes with dead-code restarts (VQGANConfig's
defaults), Adam betas (0.5, 0.9), LPIPS + the log-loss PatchGAN from --disc-start
generator steps on (after the reconstruction has settled). Without VGG16 weights on the
machine LPIPS is uncalibrated (random VGG features; see vqfast.models.lpips).

The training set's last 10 % (seeded shuffle) is held out for the papers'
early-stopping rule; training also stops at --minutes. Results go to
<out>/results.json and are printed as a Markdown table.
"""

import argparse
import json
import time
from pathlib import Path

import torch

from vqfast.data import ImageTransform, MagneticTile
from vqfast.models import VQGAN, VQVAE, VQGANConfig, VQVAEConfig
from vqfast.scorers import RegenerativeScorer, reduce_map, score_dataset
from vqfast import metrics
from vqfast.training import TrainConfig, Trainer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"))
    p.add_argument("--model", choices=["vqvae", "vqgan"], default="vqvae")
    p.add_argument("--out", default=None, help="default runs/magnetic_tile_<model>")
    p.add_argument("--size", type=int, default=None, help="default 128 (vqvae) or 64 (vqgan)")
    p.add_argument("--disc-start", type=int, default=400, help="vqgan: generator steps before the GAN terms")
    p.add_argument("--betas", type=float, nargs=2, default=None, help="Adam betas (default: 0.5 0.9 for vqgan)")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--codes", type=int, default=256)
    p.add_argument("--code-dim", type=int, default=32)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--minutes", type=float, default=19.0)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-gamma", type=float, default=0.99)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--overwrite", action="store_true", help="replace a training run already in the output folder")
    args = p.parse_args(argv)

    args.out = args.out or f"runs/magnetic_tile_{args.model}"
    args.size = args.size or (128 if args.model == "vqvae" else 64)
    torch.manual_seed(args.seed)
    transform = ImageTransform(size=args.size, channels=1)
    full = MagneticTile(args.data, "train", transform)
    test = MagneticTile(args.data, "test", transform)
    order = torch.randperm(len(full), generator=torch.Generator().manual_seed(args.seed)).tolist()
    n_val = len(full) // 10
    train = torch.utils.data.Subset(full, order[n_val:])
    val = torch.utils.data.Subset(full, order[:n_val])

    if args.model == "vqvae":
        model = VQVAE(VQVAEConfig(in_channels=1, hidden=args.hidden, num_codes=args.codes, code_dim=args.code_dim))
        name = "VQ-VAE (Performer paper architecture)"
    else:
        model = VQGAN(VQGANConfig(in_channels=1, ch=32, ch_mult=(1, 2, 2, 4), resolution=args.size, z_channels=64,
                                  num_codes=128, disc_start=args.disc_start))
        name = "VQ-GAN (tables 1-2 architecture, CPU-sized)"
    betas = tuple(args.betas) if args.betas else ((0.5, 0.9) if args.model == "vqgan" else (0.9, 0.999))
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, lr_gamma=args.lr_gamma,
                         betas=betas, max_minutes=args.minutes, seed=args.seed)
    start = time.monotonic()
    history = Trainer(model, train, val, config, out_dir=args.out).fit(resume=args.resume, overwrite=args.overwrite)
    train_minutes = (time.monotonic() - start) / 60

    results = {"model": name, "config": model.config_dict(),
               "train_config": vars(args), "epochs": history[-1]["epoch"], "stopped": history[-1]["stopped"],
               "train_minutes_this_run": train_minutes, "final_train": history[-1]["train"],
               "per_epoch": [{"epoch": r["epoch"], "step": r["step"], **{k: r["train"][k] for k in
                              ("recon", "perplexity", "g_loss", "disc_loss") if k in r["train"]}} for r in history],
               "scores": {}}
    scores, maps, labels, masks = score_dataset(RegenerativeScorer(model), test)
    for reduction in ("mean", "topk_mean", "max"):  # one residual map, three image scores; "mean": the paper's
        results["scores"][reduction] = metrics.evaluate(labels, reduce_map(maps, reduction, 0.01), masks, maps)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(results, indent=2))
    print(f"\n{results['model']}: {results['epochs']} epochs ({results['stopped']}), {train_minutes:.1f} min; final "
          f"perplexity {history[-1]['train']['perplexity']:.1f} of {model.config.num_codes} codes")
    print("per epoch (recon MSE, perplexity):", ", ".join(f"{r['epoch']}: {r['recon']:.4f} {r['perplexity']:.0f}"
                                                        for r in results["per_epoch"]))
    print("| image score | image AUROC | best F1 | pixel AUROC | AUPRO |")
    print("|---|---|---|---|---|")
    for reduction, r in results["scores"].items():
        print(f"| {reduction} | {r['image_auroc']:.3f} | {r['image_best_f1']:.3f} | {r['pixel_auroc']:.3f} | {r['aupro']:.3f} |")



if __name__ == "__main__":
    main()
