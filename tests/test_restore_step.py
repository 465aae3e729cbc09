"""restore_step: every backend against the reference; the counter-based uniform."""

import numpy as np
import pytest
import torch
from scipy import stats

from vqfast import reference
from vqfast.ops import restore_step
from conftest import DEVICE_BACKENDS, require_backend

TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(params=DEVICE_BACKENDS)
def backend(request):
    require_backend("restore_step", *request.param)
    return request.param


def _case(gen, m, v, dtype, scale=3.0):
    logits = torch.randn(m, v, generator=gen, dtype=torch.float64) * scale
    current = torch.randint(0, v, (m,), generator=gen)
    seeds = torch.randint(-2**62, 2**62, (m,), generator=gen)
    return logits.to(dtype), current, seeds


@pytest.mark.parametrize("m,v", [(1, 1), (97, 513), (33, 4099), (7, 3)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("threshold", [-1.0, 5.0, float("inf")])
def test_equals_reference(backend, gen, m, v, dtype, threshold):
    device, name = backend
    logits, current, seeds = _case(gen, m, v, dtype)
    position = int(torch.randint(0, 10_000, (1,), generator=gen))
    temperature = float(torch.rand(1, generator=gen)) + 0.5
    ref_tok, ref_nll = reference.restore_step(logits, current, threshold, seeds, position, temperature)
    tok, nll = restore_step(logits.to(device), current.to(device), threshold, seeds.to(device), position, temperature,
                            backend=name)
    assert nll.dtype == ref_nll.dtype and tok.dtype == torch.int64
    torch.testing.assert_close(nll.cpu(), ref_nll, rtol=TOL[dtype], atol=TOL[dtype])
    keep = ref_nll <= threshold
    assert torch.equal(tok.cpu()[keep], current[keep])  # under the threshold: untouched
    if dtype == torch.float64:
        assert torch.equal(tok.cpu(), ref_tok)  # exact: the same uniform, the same inverse CDF
    else:
        _assert_differ_only_at_cdf_boundaries(logits, seeds, position, temperature, tok.cpu(), ref_tok, keep)


@pytest.mark.parametrize("position", [0, 1, 2, 16, 2**31 - 1])
@pytest.mark.parametrize("m", [1, 5])
def test_edge_positions(backend, gen, position, m):
    """The positions a pass starts with and the last one the op accepts: Triton turns an
    int argument equal to 1 into a constexpr (position 1 did not compile for a GPU), and
    M = 1 is one such argument too. float64, so the tokens must be exactly the reference's."""
    device, name = backend
    logits, current, seeds = _case(gen, m, 37, torch.float64)
    ref_tok, ref_nll = reference.restore_step(logits, current, -1.0, seeds, position, 1.0)
    tok, nll = restore_step(logits.to(device), current.to(device), -1.0, seeds.to(device), position, 1.0, backend=name)
    assert torch.equal(tok.cpu(), ref_tok)
    torch.testing.assert_close(nll.cpu(), ref_nll, rtol=1e-12, atol=1e-12)


def _assert_differ_only_at_cdf_boundaries(logits, seeds, position, temperature, tok, ref_tok, keep):
    """float32 prefix sums in another order may move a sample across a CDF boundary, and
    nowhere else: where two samples differ, the uniform must lie within float32 rounding of
    a V-term sum (V 2^-24, relative) of every exact (float64) CDF value between them."""
    x = logits.double()
    e = ((x - x.amax(1, keepdim=True)) / temperature).exp()
    cdf = e.cumsum(1) / e.sum(1, keepdim=True)
    u = reference.counter_uniform(seeds, position)
    tol = 2 * x.shape[1] * 2.0**-24
    for m in (tok != ref_tok).nonzero().flatten().tolist():
        assert not keep[m]
        lo, hi = sorted((int(tok[m]), int(ref_tok[m])))
        gap = (cdf[m, lo:hi] - u[m]).abs().amax()
        assert gap <= tol, f"row {m}: tokens {int(tok[m])} vs {int(ref_tok[m])}, u={float(u[m])} is {float(gap)} from a boundary"


def test_reference_samples_the_tempered_softmax(gen):
    """Inverse-CDF sampling with the counter uniforms follows softmax(logits / T)."""
    v, n, temperature = 6, 60_000, 0.8
    logits = torch.randn(1, v, generator=gen, dtype=torch.float64).expand(n, v)
    current = torch.zeros(n, dtype=torch.int64)
    seeds = torch.arange(n, dtype=torch.int64) + int(torch.randint(0, 2**40, (1,), generator=gen))
    tok, _ = reference.restore_step(logits, current, -1.0, seeds, 3, temperature)
    counts = np.bincount(tok.numpy(), minlength=v)
    expected = (logits[0] / temperature).softmax(0).numpy() * n
    assert stats.chisquare(counts, expected).pvalue > 1e-4


def test_nll_is_cross_entropy(gen):
    logits, current, seeds = _case(gen, 50, 40, torch.float64)
    _, nll = reference.restore_step(logits, current, 0.0, seeds, 0)
    torch.testing.assert_close(nll, torch.nn.functional.cross_entropy(logits, current, reduction="none"))


def test_counter_uniform_is_a_pure_function_of_the_counter(gen):
    seeds = torch.randint(-2**62, 2**62, (1000,), generator=gen)
    u = reference.counter_uniform(seeds, 5)
    assert torch.equal(u, reference.counter_uniform(seeds.flip(0), 5).flip(0))  # no hidden state
    assert (u >= 0).all() and (u < 1).all() and torch.equal(u * 2**24, (u * 2**24).round())
    assert not torch.equal(u, reference.counter_uniform(seeds, 6))
    rows = reference.stream_seeds(torch.tensor([3, 4]), 5)
    assert rows.shape == (2, 5) and len(set(rows.flatten().tolist())) == 10
    big = reference.counter_uniform(torch.arange(200_000), 7).numpy()
    assert stats.kstest(big, "uniform").pvalue > 1e-4


def test_bad_input():
    logits = torch.zeros(3, 5)
    cur, seeds = torch.zeros(3, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    cases = [
        (lambda: restore_step(logits, cur.int(), 1.0, seeds, 0), TypeError, "current must be int64"),
        (lambda: restore_step(logits, cur[:2], 1.0, seeds, 0), ValueError, r"current and seeds must be \(3,\)"),
        (lambda: restore_step(logits, cur + 5, 1.0, seeds, 0), ValueError, r"outside \[0, V=5\)"),
        (lambda: restore_step(logits * float("nan"), cur, 1.0, seeds, 0), ValueError, "logits contains NaN"),
        (lambda: restore_step(logits, cur, 1.0, seeds, -1), ValueError, "position must be an int"),
        (lambda: restore_step(logits, cur, 1.0, seeds, 0, temperature=0.0), ValueError, "temperature must be > 0"),
        (lambda: restore_step(logits[0], cur, 1.0, seeds, 0), ValueError, r"logits must be 2-D \(M, V\)"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


def test_opcheck_and_empty(backend, gen):
    device, name = backend
    tok, nll = restore_step(torch.zeros(0, 4, device=device), torch.zeros(0, dtype=torch.int64, device=device), 1.0,
                            torch.zeros(0, dtype=torch.int64, device=device), 0, backend=name)
    assert tok.shape == (0,) and nll.shape == (0,)
    logits, current, seeds = _case(gen, 9, 17, torch.float32)
    args = (logits.to(device), current.to(device), 1.0, seeds.to(device), 4, 1.0, name)
    torch.library.opcheck(torch.ops.vqfast.restore_step.default, args)
