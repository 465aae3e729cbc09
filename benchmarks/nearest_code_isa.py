"""nearest_code's CPU kernel per instruction-set variant (AVX-512, AVX2, generic),
forced through ``vqfast._C.nearest_code_cpu(..., isa=...)``, at the issue's target shape
N=65536, D=64, K=1024, k = 1 and 4. Prints a Markdown table (RESULTS.md's).

    python benchmarks/nearest_code_isa.py [--n 65536 --d 64 --codes 1024 --repeats 10]
"""

import argparse

import torch

from vqfast import _ext
from vqfast.profiling import time_callable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=65536)
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--codes", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not _ext.HAS_EXT:
        raise SystemExit(f"no C++ extension: {_ext.EXT_ERROR}")
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(args.n, args.d, generator=gen)
    codebook = torch.randn(args.codes, args.d, generator=gen)
    print(f"N={args.n} D={args.d} K={args.codes}, {torch.get_num_threads()} threads; run-time choice: "
          f"{_ext._C.cpu_isas()[0]}")
    print("| variant | k = 1 | k = 4 |")
    print("|---|---|---|")
    for isa in _ext._C.cpu_isas():
        cells = [time_callable(lambda: _ext._C.nearest_code_cpu(z, codebook, k, isa), repeats=args.repeats).median_s
                 for k in (1, 4)]
        print(f"| {isa} | " + " | ".join(f"{1e3 * t:.1f} ms" for t in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
