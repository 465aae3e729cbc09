"""pytest-benchmark suite for Pixel-wise restoration: the reference loop (the full prior
after every restored token, per image, per restoration) against vqfast's fast pass.

    pytest benchmarks/bench_restoration.py --benchmark-group-by=group

Cases and providers are vqfast.bench.restoration's (the same as `vqfast bench`); every provider's
token grids are checked equal to the reference's before timing.
"""

import pytest
import torch

from vqfast.bench.restoration import CASES as RESTORATION_CASES, restoration_providers
from vqfast.profiling import synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CASES = RESTORATION_CASES[DEVICE.type]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: c.label)
def built(request):
    case = request.param
    prior, tokens, threshold, seeds = case.build(DEVICE)
    providers = restoration_providers(case, prior, threshold)
    expected = next(iter(providers.values()))(tokens, seeds)
    return case, providers, tokens, seeds, expected


@pytest.mark.parametrize("provider", ["reference loop", "vqfast fast pass (cpu)", "vqfast fast pass (cuda)",
                                      "vqfast fast pass (triton)"])
def test_pixelwise_restoration(benchmark, built, provider):
    case, providers, tokens, seeds, expected = built
    if provider not in providers:
        pytest.skip(f"{provider} is unavailable on {DEVICE}")
    fn = providers[provider]
    assert torch.equal(fn(tokens, seeds), expected)  # identical tokens

    def call():
        fn(tokens, seeds)
        synchronize(DEVICE)

    benchmark.group = case.title
    benchmark.extra_info.update(device=str(DEVICE), provider=provider)
    slow = provider == "reference loop"
    benchmark.pedantic(call, rounds=1 if slow else 3, warmup_rounds=0 if slow else 1)
