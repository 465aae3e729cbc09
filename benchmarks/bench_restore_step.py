"""pytest-benchmark suite for restore_step: every provider side by side per shape.

    pytest benchmarks/bench_restore_step.py --benchmark-group-by=group

Cases and providers are vqfast.bench.restore_step's (the same as `vqfast bench --only restore_step`);
the device is CUDA when present, else the CPU. Each group's table lists the providers
with their ratios to the fastest; `vqfast bench` prints the ratios to the baselines.
"""

import pytest
import torch

from vqfast.bench.case import benchmark_case, benchmark_params
from vqfast.bench.restore_step import CASES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("case,provider", benchmark_params(CASES["full"], DEVICE))
def test_restore_step(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
