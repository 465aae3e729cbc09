"""code_at_rank: the CPU kernel against the reference; argument errors; opcheck."""

import pytest
import torch

from vqfast import reference
from vqfast.ops import code_at_rank, nearest_code

BACKENDS = [pytest.param(("cpu", "cpu"), id="cpu-cpu"), pytest.param(("cpu", "reference"), id="cpu-reference"),
            pytest.param(("cuda", "auto"), id="cuda-auto", marks=pytest.mark.cuda)]


@pytest.fixture(params=BACKENDS)
def backend(request):
    device, name = request.param
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    return device, name


@pytest.mark.parametrize("n,k,d", [(1, 1, 1), (97, 513, 7), (300, 4096, 16), (5, 2, 3)])
def test_float64_equals_reference(backend, gen, n, k, d):
    device, name = backend
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    cb = torch.randn(k, d, generator=gen, dtype=torch.float64)
    rank = torch.randint(0, k, (n,), generator=gen)
    got = code_at_rank(z.to(device), cb.to(device), rank.to(device), backend=name).cpu()
    assert got.dtype == torch.int64
    assert torch.equal(got, reference.code_at_rank(z, cb, rank))


def test_float32_picks_a_code_at_that_distance(backend, gen):
    """float32's expanded distances may swap codes within rounding: the chosen code's
    exact distance must equal the reference's rank-r distance within it."""
    device, name = backend
    z, cb = torch.randn(257, 32, generator=gen), torch.randn(1024, 32, generator=gen)
    rank = torch.randint(0, 1024, (257,), generator=gen)
    got = code_at_rank(z.to(device), cb.to(device), rank.to(device), backend=name).cpu()
    exact = torch.cdist(z.double(), cb.double())
    ref = reference.code_at_rank(z, cb, rank)
    torch.testing.assert_close(exact.gather(1, got[:, None]), exact.gather(1, ref[:, None]), rtol=1e-5, atol=1e-5)


def test_rank_zero_is_the_nearest_code_and_ties_go_to_the_lower_index(gen):
    z = torch.randn(64, 8, generator=gen, dtype=torch.float64)
    cb = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    assert torch.equal(code_at_rank(z, cb, torch.zeros(64, dtype=torch.int64), backend="cpu"),
                       nearest_code(z.float(), cb.float())[0][:, 0])
    dup = torch.cat([cb, cb])  # every code twice: ranks 2j and 2j+1 hold the same vector
    order = torch.cdist(z, cb).argsort(1)
    for r in (0, 2):
        pair = order[:, r // 2]
        ranks = [torch.full((64,), r + i, dtype=torch.int64) for i in (0, 1)]
        # the reference ranks exact ties by lower index
        assert torch.equal(code_at_rank(z, dup, ranks[0], backend="reference"), pair)
        assert torch.equal(code_at_rank(z, dup, ranks[1], backend="reference"), pair + 50)
        # the GEMM may round two copies' keys apart: the kernel returns both copies, in some order
        got = torch.stack([code_at_rank(z, dup, rk, backend="cpu") for rk in ranks], 1).sort(1).values
        assert torch.equal(got, torch.stack([pair, pair + 50], 1))


def test_every_rank_of_a_row_is_a_permutation(gen):
    z = torch.randn(1, 4, generator=gen, dtype=torch.float64)
    cb = torch.randn(33, 4, generator=gen, dtype=torch.float64)
    got = code_at_rank(z.expand(33, 4).contiguous(), cb, torch.arange(33), backend="cpu")
    assert torch.equal(got, torch.cdist(z, cb)[0].argsort())


@pytest.mark.parametrize("bad,match", [
    (lambda z, cb, r: (z, cb, r + 100), r"rank holds values outside \[0, K=16\)"),
    (lambda z, cb, r: (z, cb, r - 1 - r), r"outside"),
    (lambda z, cb, r: (z, cb[:, :3], r), "D=3 but z has D=4"),
    (lambda z, cb, r: (z, cb, r[:2]), r"rank must be \(5,\)"),
    (lambda z, cb, r: (z.half(), cb.half(), r), "z must be float32 or float64"),
    (lambda z, cb, r: (z.double(), cb, r), "share a dtype"),
    (lambda z, cb, r: (z * float("nan"), cb, r), "NaN"),
    (lambda z, cb, r: (z, cb, r.int()), "int64"),
])
def test_bad_arguments_name_the_problem(gen, bad, match):
    z, cb = torch.randn(5, 4, generator=gen), torch.randn(16, 4, generator=gen)
    r = torch.randint(0, 16, (5,), generator=gen)
    with pytest.raises((ValueError, TypeError), match=match):
        code_at_rank(*bad(z, cb, r), backend="cpu")


def test_empty_and_named_backends(gen):
    cb = torch.randn(16, 4, generator=gen)
    assert code_at_rank(torch.empty(0, 4), cb, torch.empty(0, dtype=torch.int64)).shape == (0,)
    with pytest.raises(RuntimeError, match="no cuda kernel"):
        code_at_rank(torch.randn(2, 4), cb, torch.zeros(2, dtype=torch.int64), backend="cuda")


@pytest.mark.parametrize("name", ["cpu", "reference"])
def test_opcheck(gen, name):
    z, cb = torch.randn(9, 4, generator=gen), torch.randn(16, 4, generator=gen)
    r = torch.randint(0, 16, (9,), generator=gen)
    torch.library.opcheck(torch.ops.vqfast.code_at_rank.default, (z, cb, r, name))
