"""pytest-benchmark suite for omp: sklearn, the reference loop and vqfast's kernels per
shape (vqfast.bench.omp's cases).

    pytest benchmarks/bench_omp.py --benchmark-group-by=group

The reference loop is slow by design (a least-squares solve per atom per target): one round.
"""

from vqfast.bench.case import benchmark_suite

test_omp = benchmark_suite("omp")
