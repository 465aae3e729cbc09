"""Tiny calls of every CUDA-extension kernel (and, with --triton, every Triton kernel),
for compute-sanitizer: benchmarks/gpu_check.sh runs this under memcheck and racecheck.

    compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py [--triton]

Odd sizes on purpose (tails of every tile); each op once per dtype. Exit status 0 when
every call returned; the sanitizer's own exit status reports what it found.
"""

import sys

import torch

from vqfast.ops import decode_attention, nearest_code, omp, restore_step


def main() -> int:
    backends = ["cuda"] + (["triton"] if "--triton" in sys.argv else [])
    dev = torch.device("cuda")
    g = torch.Generator().manual_seed(0)
    for b in backends:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            z = torch.randn(37, 19, generator=g).to(dev, dtype)
            cb = torch.randn(45, 19, generator=g).to(dev, dtype)
            for k in (1, 3):
                nearest_code(z, cb, k, backend=b)
        for dtype in (torch.float32, torch.float64):
            X = torch.randn(13, 21, generator=g, dtype=torch.float64)
            Y = torch.randn(9, 13, generator=g, dtype=torch.float64)
            omp((X.T @ X).to(dev, dtype), (Y @ X).to(dev, dtype), 5, backend=b)
        for dtype in (torch.float32, torch.float64, torch.bfloat16):
            logits = torch.randn(7, 133, generator=g).to(dev, dtype)
            cur = torch.randint(0, 133, (7,), generator=g).to(dev)
            restore_step(logits, cur, 0.5, torch.arange(7, device=dev), 1, 1.0, backend=b)
            q = torch.randn(3, 2, 40, generator=g).to(dev, dtype)
            kv = torch.randn(2, 3, 2, 23, 40, generator=g).to(dev, dtype)
            decode_attention(q, kv[0], kv[1], 17, backend=b)
    torch.cuda.synchronize()
    print("all calls returned:", ", ".join(backends))
    return 0


if __name__ == "__main__":
    sys.exit(main())
