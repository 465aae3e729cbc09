"""pytest-benchmark suite for decode_attention: every provider side by side per shape.

    pytest benchmarks/bench_decode_attention.py --benchmark-group-by=group

Cases and providers are vqfast.bench.decode_attention's (the same as `vqfast bench --only decode_attention`);
the device is CUDA when present, else the CPU. Each group's table lists the providers
with their ratios to the fastest; `vqfast bench` prints the ratios to the baselines.
"""

import pytest
import torch

from vqfast.bench.case import benchmark_case, benchmark_params
from vqfast.bench.decode_attention import CASES

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("case,provider", benchmark_params(CASES["full"], DEVICE))
def test_decode_attention(benchmark, case, provider):
    benchmark_case(benchmark, case, provider, DEVICE)
