"""pytest-benchmark suite for restore_step, one restoration step of M sequences, against
the reference (vqfast.bench.restore_step's cases).

    pytest benchmarks/bench_restore_step.py --benchmark-group-by=group
"""

from vqfast.bench.case import benchmark_suite

test_restore_step = benchmark_suite("restore_step")
