"""pytest-benchmark suite for code_at_rank: every provider side by side per shape.

    pytest benchmarks/bench_code_at_rank.py --benchmark-group-by=group

Cases and providers are vqfast.bench.code_at_rank's (the same as `vqfast bench --only code_at_rank`);
the device is CUDA when present, else the CPU. Each group's table lists the providers
with their ratios to the fastest; `vqfast bench` prints the ratios to the baselines.
"""

import pytest
import torch

from vqfast.bench.case import benchmark_case, benchmark_params
from vqfast.bench.code_at_rank import CASES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("case,provider", benchmark_params(CASES["full"], DEVICE))
def test_code_at_rank(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
