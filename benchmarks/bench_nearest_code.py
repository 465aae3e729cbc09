"""pytest-benchmark suite for nearest_code: every provider side by side per shape.

    pytest benchmarks/bench_nearest_code.py --benchmark-group-by=group

Cases and providers are vqfast.bench.nearest_code's (the same as `vqfast bench --only nearest_code`);
the device is CUDA when present, else the CPU. Each group's table lists the providers
with their ratios to the fastest; `vqfast bench` prints the ratios to the baselines.
"""

import pytest
import torch

from vqfast.bench.case import benchmark_case, benchmark_params
from vqfast.bench.nearest_code import CASES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("case,provider", benchmark_params(CASES[DEVICE.type], DEVICE))
def test_nearest_code(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
