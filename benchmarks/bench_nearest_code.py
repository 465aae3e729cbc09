"""pytest-benchmark suite for nearest_code: every provider side by side per shape.

    pytest benchmarks/bench_nearest_code.py --benchmark-group-by=group
    pytest benchmarks/bench_nearest_code.py --benchmark-group-by=group -k "65536 and (cdist or vqfast)"

Providers and shapes are vqfast.bench's (the same as `vqfast bench`); the device is
CUDA when present, else the CPU. Each group's table lists the providers with their
ratios to the fastest (pytest-benchmark's "OPS" column); `vqfast bench` prints the
ratios against the plain-torch baselines directly.
"""

import pytest
import torch

from vqfast.bench import NEAREST_CODE_CASES, nearest_code_providers
from vqfast.profiling import synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = NEAREST_CODE_CASES[DEVICE.type]
PARAMS = [
    pytest.param(case, name, id=f"{case.n}x{case.d}x{case.num_codes}-k{case.k}-{case.dtype}-{name}")
    for case in CASES
    for name in nearest_code_providers(DEVICE, case.k)
]


@pytest.mark.parametrize("case,provider", PARAMS)
def test_nearest_code(benchmark, case, provider):
    z, cb = case.inputs(DEVICE)
    fn = nearest_code_providers(DEVICE, case.k)[provider]

    def call():
        fn(z, cb)
        synchronize(DEVICE)

    benchmark.group = case.title
    benchmark.extra_info.update(device=str(DEVICE), provider=provider)
    benchmark.pedantic(call, rounds=5, warmup_rounds=1)
