"""pytest-benchmark suite for code_at_rank, DSR's code at a drawn distance rank, beside
a full cdist + sort (vqfast.bench.code_at_rank's cases).

    pytest benchmarks/bench_code_at_rank.py --benchmark-group-by=group
"""

from vqfast.bench.case import benchmark_suite

test_code_at_rank = benchmark_suite("code_at_rank")
