"""pytest-benchmark suite for decode_attention: one query a sequence against its KV cache,
beside torch's scaled_dot_product_attention (vqfast.bench.decode_attention's cases).

    pytest benchmarks/bench_decode_attention.py --benchmark-group-by=group
"""

from vqfast.bench.case import benchmark_suite

test_decode_attention = benchmark_suite("decode_attention")
