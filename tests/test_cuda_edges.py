"""The CUDA kernels at the edges of their domain (run by benchmarks/gpu_check.sh on a GPU;
skipped elsewhere): every case here was found by reading the kernels before any ran."""

import pytest
import torch

from conftest import require_backend

pytestmark = pytest.mark.cuda


@pytest.fixture(autouse=True)
def _cuda():
    require_backend("nearest_code", "cuda", "cuda")


def test_nearest_code_raw_op_with_non_finite_rows_reads_no_placeholder_code():
    from vqfast import _ext

    z = torch.randn(64, 16, device="cuda")
    z[3] = float("nan")
    z[7, 2] = float("inf")
    cb = torch.randn(40, 16, device="cuda")
    for k in (1, 4, 16):
        idx, _ = _ext._C.nearest_code_cuda(z, cb, k)
        torch.cuda.synchronize()
        assert ((idx >= 0) & (idx < 40)).all()


def test_nearest_code_rejects_overflowing_values_on_cuda():
    import vqfast

    z = torch.randn(8, 256, device="cuda")
    z[1, 0] = 1e19
    with pytest.raises(ValueError, match="overflow float32"):
        vqfast.nearest_code(z, torch.randn(32, 256, device="cuda"), backend="cuda")


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_restore_step_out_of_range_token_gives_nan_not_a_read(backend):
    from vqfast.ops import restore_step

    require_backend("restore_step", "cuda", backend)
    logits = torch.randn(4, 16, device="cuda")
    current = torch.tensor([0, 10**9, -5, 16], device="cuda")
    tokens, nll = restore_step(logits, current, 0.0, torch.arange(4, device="cuda"), 0, backend=backend,
                               validate=False)
    torch.cuda.synchronize()
    assert torch.isfinite(nll[0]) and torch.isnan(nll[1:]).all()
    assert torch.equal(tokens[1:].cpu(), current[1:].cpu())
    with pytest.raises(ValueError, match="outside"):
        restore_step(logits, current, 0.0, torch.arange(4, device="cuda"), 0, backend=backend)


def test_decode_attention_lengths_near_and_past_the_shared_memory_limit():
    from vqfast import _ext
    from vqfast.ops import decode_attention
    from vqfast.reference.decode_attention import decode_attention as reference

    d = 64
    q = torch.randn(1, 1, d, device="cuda")
    limit = _ext._C.decode_attention_cuda_max_length(q)
    assert limit > 12288  # the lengths that failed when the static bytes were ignored
    for length in (12288, limit):
        k, v = torch.randn(1, 1, length, d, device="cuda"), torch.randn(1, 1, length, d, device="cuda")
        out = decode_attention(q, k, v, length, backend="cuda")
        torch.testing.assert_close(out, reference(q, k, v, length, d ** -0.5), rtol=1e-4, atol=1e-5)
    length = limit + 1
    k, v = torch.randn(1, 1, length, d, device="cuda"), torch.randn(1, 1, length, d, device="cuda")
    with pytest.raises(ValueError, match="use 'auto' or 'triton'"):
        decode_attention(q, k, v, length, backend="cuda")
    out = decode_attention(q, k, v, length, backend="auto")  # Triton streams the cache
    torch.testing.assert_close(out, reference(q, k, v, length, d ** -0.5), rtol=1e-4, atol=1e-5)
    # no stale CUDA error left for the next op
    torch.cuda.synchronize()
    assert torch.ones(2, device="cuda").sum().item() == 2


def test_omp_large_batch_runs_in_capped_launches():
    from vqfast import reference
    from vqfast.ops import omp

    g = torch.Generator().manual_seed(0)
    X = torch.randn(32, 600, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=0)
    Y = torch.randn(1200, 32, generator=g, dtype=torch.float64)
    # s=200 in float64: 320 KB of Cholesky scratch per target, 256 MiB per launch -> 838 a launch
    G, XY = (X.T @ X).cuda(), (Y @ X).cuda()
    coef, support, _ = omp(G, XY, 200, backend="cuda")
    ref = reference.omp(X.T @ X, Y[-3:] @ X, 200)
    assert torch.equal(support[-3:].cpu(), ref[1])
    torch.testing.assert_close(coef[-3:].cpu(), ref[0], rtol=1e-6, atol=1e-8)
