"""pytest-benchmark suite for omp: sklearn, the reference loop and vqfast's kernels per shape.

    pytest benchmarks/bench_omp.py --benchmark-group-by=group

Providers and shapes are vqfast.bench's (the same as `vqfast bench`). The reference
loop is slow by design (a from-scratch least-squares solve per atom per target).
"""

import warnings

import pytest
import torch

from vqfast.bench import OMP_CASES, omp_providers
from vqfast.profiling import synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
PARAMS = [
    pytest.param(case, name, id=f"B{case.b}-N{case.n}-s{case.s}-{case.dtype}-{name}")
    for case in OMP_CASES["full"]
    for name in omp_providers(DEVICE, case)
]


@pytest.mark.parametrize("case,provider", PARAMS)
def test_omp(benchmark, case, provider):
    G, XY, yn = case.inputs(DEVICE)
    fn = omp_providers(DEVICE, case)[provider]

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(G, XY, yn)
        synchronize(DEVICE)

    benchmark.group = case.title
    benchmark.extra_info.update(device=str(DEVICE), provider=provider)
    rounds = 1 if provider == "reference" else 3
    benchmark.pedantic(call, rounds=rounds, warmup_rounds=0 if provider == "reference" else 1)
