"""KDE abnormality map: vqfast's vectorised kde_abnormality against the per-pixel
reference (scipy.stats.gaussian_kde at each pixel, Silverman's bandwidth, the public
implementation's shape of loop), side by side, with the maximum difference.

    python benchmarks/bench_kde.py [--size 64 --samples 20 --batch 2]
"""

import argparse
import math

import numpy as np
import torch
from scipy import stats

from vqfast.profiling import format_table, time_callable
from vqfast.scorers import kde_abnormality


def per_pixel(images, samples, floor):
    b, n, c, h, w = samples.shape
    out = np.zeros((b, h, w))
    s, x = samples.double().numpy(), images.double().numpy()
    for i in range(b):
        for ch in range(c):
            for y in range(h):
                for v in range(w):
                    data = s[i, :, ch, y, v]
                    sigma = data.std(ddof=1)
                    bw = max(1.06 * sigma * n ** -0.2, floor)
                    if sigma > 0:
                        out[i, y, v] -= stats.gaussian_kde(data, bw_method=bw / sigma).logpdf([x[i, ch, y, v]])[0]
                    else:
                        out[i, y, v] -= -0.5 * ((x[i, ch, y, v] - data[0]) / bw) ** 2 - math.log(bw * math.sqrt(2 * math.pi))
    return torch.from_numpy(out).float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--samples", type=int, default=20)
    p.add_argument("--batch", type=int, default=2)
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(args.batch, 1, args.size, args.size, generator=gen)
    samples = images.unsqueeze(1) + 0.05 * torch.randn(args.batch, args.samples, 1, args.size, args.size, generator=gen)
    ours, ref = kde_abnormality(images, samples), per_pixel(images, samples, 0.01)
    timings = [time_callable(lambda: per_pixel(images, samples, 0.01), name="per-pixel scipy gaussian_kde", repeats=1,
                             warmup=0),
               time_callable(lambda: kde_abnormality(images, samples), name="vqfast kde_abnormality", repeats=10)]
    print(format_table(timings, baselines=["per-pixel scipy gaussian_kde"],
                       title=f"KDE map  B={args.batch} 1x{args.size}x{args.size}  N={args.samples} samples  on cpu"))
    print(f"  max |ours - reference|: {float((ours - ref).abs().max()):.2e}")


if __name__ == "__main__":
    main()
