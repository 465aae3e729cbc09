"""SGFR time per test image against the memory-bank size N, with and without subspace
sampling (the shape of the paper's Figure 4: flat with sampling, growing without).

    python benchmarks/sgfr_time_vs_bank.py [--sizes 25 50 100 200 400] [--image 64]

Procedural 64 x 64 images and a ResNet-18 (random weights unless $TORCH_HOME has
torchvision's file: timing does not depend on them). Prints a Markdown table.
"""

import argparse
import warnings

import torch

from vqfast.data import ProceduralDefects
from vqfast.models.backbones import Backbone
from vqfast.profiling import time_callable
from vqfast.scorers.sgfr import SGFRScorer


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[25, 50, 100, 200, 400])
    p.add_argument("--image", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    args = p.parse_args(argv)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        backbone = Backbone("resnet18", layers=(2, 3, 4))
    test = torch.stack([ProceduralDefects(args.batch, 0, args.image, seed=99)[i]["image"] for i in range(args.batch)])
    print("| N (bank) | with sampling (s_ref=10, s=7) | without sampling (s=7 over N) |")
    print("|---|---|---|")
    for n in args.sizes:
        bank = ProceduralDefects(n, 0, args.image, seed=1)
        row = []
        for sampling in (True, False):
            scorer = SGFRScorer(backbone, s_ref=10, s=7, sampling=sampling).fit(bank)
            t = time_callable(lambda: scorer.score(test), warmup=1, repeats=3)
            row.append(f"{1e3 * t.median_s / args.batch:.1f} ms/image")
        print(f"| {n} | {row[0]} | {row[1]} |", flush=True)


if __name__ == "__main__":
    main()
