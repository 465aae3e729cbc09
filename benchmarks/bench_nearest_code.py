"""pytest-benchmark suite for nearest_code: every provider side by side per shape (the
device's cases of vqfast.bench.nearest_code, as `vqfast bench --only nearest_code`).

    pytest benchmarks/bench_nearest_code.py --benchmark-group-by=group
    pytest benchmarks/bench_nearest_code.py --benchmark-group-by=group -k "65536 and (cdist or vqfast)"

Each group's table lists the providers with their ratios to the fastest; `vqfast bench`
prints the ratios against the plain-torch baselines directly.
"""

from vqfast.bench.case import benchmark_suite

test_nearest_code = benchmark_suite("nearest_code")
