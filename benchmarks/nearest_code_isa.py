"""nearest_code's CPU kernel per instruction-set variant (AMX-BF16, AVX512-BF16,
AVX-512, AVX2, generic: those this CPU has), forced through ``vqfast._C.nearest_code_cpu(..., isa=...)``, by default at the
issue's target shape N=65536, D=64, K=1024, k = 1 and 4. Prints one Markdown table per
shape (RESULTS.md's).

    python benchmarks/nearest_code_isa.py [--shapes 65536,64,1024 4096,256,128 --repeats 10]
"""

import argparse

import torch

from vqfast import _ext
from vqfast.profiling import time_callable


def _shape(text):
    try:
        n, d, k = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"a shape is N,D,K (three integers), got {text!r}") from None
    return n, d, k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", type=_shape, nargs="+", default=[(65536, 64, 1024)], metavar="N,D,K")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    if not _ext.HAS_EXT:
        raise SystemExit(f"no C++ extension: {_ext.EXT_ERROR}")
    for n, d, num_codes in args.shapes:
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(n, d, generator=gen)
        codebook = torch.randn(num_codes, d, generator=gen)
        print(f"\nN={n} D={d} K={num_codes}, {torch.get_num_threads()} threads; run-time choice: "
              f"{_ext._C.nearest_code_cpu_isa(d, 1)} (k = 1), {_ext._C.nearest_code_cpu_isa(d, 4)} (k = 4)")
        print("| variant | k = 1 | k = 4 |")
        print("|---|---|---|")
        for isa in _ext._C.cpu_isas():
            cells = [time_callable(lambda: _ext._C.nearest_code_cpu(z, codebook, k, isa), repeats=args.repeats).median_s
                     for k in (1, 4)]
            print(f"| {isa} | " + " | ".join(f"{1e3 * t:.2f} ms" for t in cells) + " |", flush=True)


if __name__ == "__main__":
    main()
