"""vqfast.ops.omp: every backend against sklearn's orthogonal_mp_gram and the reference loop."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp_gram

from vqfast import reference
from vqfast.ops import omp, omp_dictionary
from vqfast.ops import lowered
from conftest import DEVICE_BACKENDS, require_backend


@pytest.fixture(params=DEVICE_BACKENDS)
def backend(request):
    """(device, backend); the inputs are built on the CPU and moved."""
    require_backend("omp", *request.param)
    return request.param


def _omp(backend, G, XY, n_nonzero, tol=None, yn=None):
    device, name = backend
    move = (lambda t: None if t is None else t.to(device))
    out = omp(move(G), move(XY), n_nonzero, tol, move(yn), backend=name)
    return tuple(t.cpu() for t in out)


def _problem(gen, d, n, b, dtype=torch.float64):
    X = torch.randn(d, n, generator=gen, dtype=torch.float64)
    X = X / X.norm(dim=0)  # well conditioned, unit atoms (sklearn's setting)
    Y = torch.randn(b, d, generator=gen, dtype=torch.float64)
    return X.to(dtype), Y.to(dtype)


def _sklearn(G, XY, yn, n_nonzero=None, tol=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # premature-stop warnings on dependent dictionaries
        kw = dict(tol=tol, norms_squared=yn.numpy()) if tol is not None else dict(n_nonzero_coefs=n_nonzero)
        out = orthogonal_mp_gram(G.numpy(), XY.numpy().T, **kw)
    return out.T.reshape(XY.shape[0], -1)


@pytest.mark.parametrize("d,n,b,s", [(64, 40, 7, 7), (97, 513, 33, 17), (16, 1, 3, 1), (20, 30, 5, 20)])
def test_matches_sklearn_without_tol(backend, gen, d, n, b, s):
    X, Y = _problem(gen, d, n, b)
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    coef, support, residual = _omp(backend, G, XY, s, yn=yn)
    expected = _sklearn(G, XY, yn, n_nonzero=s)
    assert np.array_equal(coef.numpy() != 0, expected != 0)  # identical supports
    np.testing.assert_allclose(coef.numpy(), expected, rtol=1e-6, atol=1e-12)
    for t in range(b):  # support in selection order, -1 padded; coef lives on it
        chosen = support[t][support[t] >= 0]
        assert set(chosen.tolist()) == set(np.flatnonzero(expected[t]).tolist())
        assert (support[t][len(chosen):] == -1).all()
    torch.testing.assert_close(residual, (Y - coef @ X.T).square().sum(1), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.9])
def test_matches_sklearn_with_tol(backend, gen, fraction):
    X, Y = _problem(gen, 48, 200, 20)
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    tol = float(yn.min()) * (1 - fraction)  # stop once `fraction` of the energy is explained
    coef, support, residual = _omp(backend, G, XY, 200, tol, yn)
    expected = _sklearn(G, XY, yn, tol=tol)
    assert np.array_equal(coef.numpy() != 0, expected != 0)
    np.testing.assert_allclose(coef.numpy(), expected, rtol=1e-6, atol=1e-12)
    assert (residual <= tol + 1e-9).all()
    counts = (support >= 0).sum(1)
    assert (counts < 200).all() and (counts >= 1).all()


def test_n_nonzero_and_tol_together(backend, gen):
    X, Y = _problem(gen, 48, 100, 6)
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    _, support, _ = _omp(backend, G, XY, 3, 1e-12, yn)
    assert ((support >= 0).sum(1) == 3).all()  # the atom budget ends first


def test_equals_reference_float32(backend, gen):
    X, Y = _problem(gen, 97, 513, 64, torch.float32)
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    fast = _omp(backend, G, XY, 9, yn=yn)
    ref = reference.omp(G.double(), XY.double(), 9, None, yn.double())
    # float32 accumulation: supports equal where the choice is not a near tie
    assert (fast[1] == ref[1]).all(1).float().mean() > 0.95
    same = (fast[1] == ref[1]).all(1)
    torch.testing.assert_close(fast[0][same].double(), ref[0][same], rtol=1e-3, atol=1e-4)


def test_degenerate_atoms_stop_early(backend, gen):
    """Zero and duplicate columns: a target stops when the next atom depends linearly on
    its support, or when its residual is orthogonal to every atom left."""
    X, Y = _problem(gen, 8, 6, 4)
    X = torch.cat([X, torch.zeros(8, 1), X[:, :2]], 1)  # atom 6 zero, atoms 7-8 copies of 0-1
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    coef, support, residual = _omp(backend, G, XY, 9, yn=yn)
    for t in range(4):
        chosen = support[t][support[t] >= 0].tolist()
        assert 6 not in chosen and not ({0, 7} <= set(chosen)) and not ({1, 8} <= set(chosen))
        assert len(chosen) <= 6
    torch.testing.assert_close(residual, (Y - coef @ X.T).square().sum(1), rtol=1e-8, atol=1e-10)


def test_exact_sparse_recovery(backend, gen):
    X, _ = _problem(gen, 128, 128, 1)  # incoherent enough that greedy selection finds all 4
    truth = torch.zeros(5, 128, dtype=torch.float64)
    for t in range(5):
        idx = torch.randperm(128, generator=gen)[:4]
        truth[t, idx] = torch.randn(4, generator=gen, dtype=torch.float64).sign() * (1 + torch.rand(4, generator=gen))
    Y = truth @ X.T
    coef, support, residual = (t.cpu() for t in omp_dictionary(X.to(backend[0]), Y.to(backend[0]), 10, tol=1e-10,
                                                               backend=backend[1]))
    torch.testing.assert_close(coef, truth, rtol=1e-8, atol=1e-10)
    assert ((support >= 0).sum(1) == 4).all()  # stops as soon as the 4 true atoms explain y
    assert (residual.abs() < 1e-12 * Y.square().sum(1)).all()


def test_omp_dictionary_equals_gram_form(backend, gen):
    X, Y = _problem(gen, 30, 50, 8)
    X, Y = X.to(backend[0]), Y.to(backend[0])
    a = omp_dictionary(X, Y, 6, backend=backend[1])
    b = omp(X.T @ X, Y @ X, 6, y_norm_sq=Y.square().sum(1), backend=backend[1])
    assert torch.equal(a[1], b[1])
    torch.testing.assert_close(a[0], b[0], rtol=1e-12, atol=1e-14)


def test_bad_input():
    G, XY = torch.eye(4, dtype=torch.float64), torch.ones(2, 4, dtype=torch.float64)
    cases = [
        (lambda: omp(G, XY, 5), ValueError, r"n_nonzero must be an int in \[1, N=4\]"),
        (lambda: omp(G, XY, 0), ValueError, "n_nonzero"),
        (lambda: omp(G[:3], XY, 2), ValueError, "gram must be square"),
        (lambda: omp(G, XY[:, :3], 2), ValueError, "xty has 3 columns but gram has N=4"),
        (lambda: omp(G, XY.float(), 2), TypeError, "gram is torch.float64 but xty is torch.float32"),
        (lambda: omp(G.long(), XY, 2), TypeError, "gram must be float32 or float64"),
        (lambda: omp(G, XY, 2, tol=0.1), ValueError, "tol needs y_norm_sq"),
        (lambda: omp(G, XY, 2, tol=-1.0, y_norm_sq=XY.sum(1)), ValueError, "tol must be >= 0"),
        (lambda: omp(G, XY * float("nan"), 2), ValueError, r"xty contains NaN or Inf \(first at row 0\)"),
        (lambda: omp(G, XY, 2, y_norm_sq=torch.ones(3, dtype=torch.float64)), ValueError, r"y_norm_sq must be \(2,\)"),
        (lambda: omp_dictionary(torch.eye(3, dtype=torch.float64), XY, 2), ValueError, "Y has D=4 but X has D=3"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


def test_empty_batch_and_opcheck(backend, gen):
    G = torch.eye(5, dtype=torch.float64)
    coef, support, residual = _omp(backend, G, torch.zeros(0, 5, dtype=torch.float64), 2)
    assert coef.shape == (0, 5) and support.shape == (0, 2) and residual.shape == (0,)
    X, Y = _problem(gen, 12, 9, 4)
    X, Y = X.to(backend[0]), Y.to(backend[0])
    args = (X.T @ X, Y @ X, 3, -1.0, Y.square().sum(1), backend[1])
    torch.library.opcheck(torch.ops.vqfast.omp.default, args)


@pytest.mark.cuda
def test_cuda_routes_large_n_nonzero(gen):
    require_backend("omp", "cuda", "cuda")
    from vqfast import _ext

    limit = _ext._C.omp_cuda_max_nonzero
    X, Y = _problem(gen, limit + 40, limit + 8, 2)
    G, XY = (X.T @ X).cuda(), (Y @ X).cuda()
    with pytest.raises(ValueError, match=f"supports n_nonzero <= {limit}"):
        omp(G, XY, limit + 1, backend="cuda")
    coef, support, _ = omp(G, XY, limit + 1, backend="auto")  # Triton takes it
    ref = reference.omp(G.cpu(), XY.cpu(), limit + 1)
    assert torch.equal(support.cpu(), ref[1])


# --- The cases of scikit-learn's own OMP test suite (sklearn/linear_model/tests/test_omp.py),
# written anew for every backend: 25 dimensions, 35 atoms (rank 25), 5-sparse targets, and
# X and y scaled by 10 so that nothing relies on unit norms.

def _sparse_coded(gen, d=25, n=35, nnz=5, b=3, dtype=torch.float64):
    X = torch.randn(d, n, generator=gen, dtype=torch.float64)
    X = 10 * X / X.norm(dim=0)
    truth = torch.zeros(b, n, dtype=torch.float64)
    for t in range(b):
        idx = torch.randperm(n, generator=gen)[:nnz]
        # magnitudes in [1, 2): a float32 code ~1e-4 of the others sits at the noise stop
        signs = torch.randn(nnz, generator=gen, dtype=torch.float64).sign()
        truth[t, idx] = signs * (1 + torch.rand(nnz, generator=gen, dtype=torch.float64))
    return X.to(dtype), (truth @ X.T).to(dtype), truth


def _dict(backend, X, Y, n_nonzero, tol=None):
    device, name = backend
    return tuple(t.cpu() for t in omp_dictionary(X.to(device), Y.to(device), n_nonzero, tol, backend=name))


def test_sklearn_shapes_gram_and_dictionary(backend, gen):
    X, Y, _ = _sparse_coded(gen)
    for rows in (Y[:1], Y):
        coef, support, residual = _dict(backend, X, rows, 5)
        assert coef.shape == (len(rows), 35) and support.shape == (len(rows), 5) and residual.shape == (len(rows),)
        coef_g, support_g, _ = _omp(backend, X.T @ X, rows @ X, 5, yn=rows.square().sum(1))
        assert torch.equal(support, support_g)
        torch.testing.assert_close(coef, coef_g, rtol=1e-10, atol=1e-12)
        assert ((coef != 0).sum(1) <= 5).all()


def test_sklearn_tol_paths(backend, gen):
    X, Y, _ = _sparse_coded(gen)
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    for tol in (0.5, 1.0):
        coef, _, residual = _dict(backend, X, Y, 35, tol)
        assert ((Y - coef @ X.T).square().sum(1) <= tol + 1e-9).all()
        coef_g, _, _ = _omp(backend, G, XY, 35, tol, yn)
        torch.testing.assert_close(coef, coef_g, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(coef.numpy(), _sklearn(G, XY, yn, tol=tol), rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_unreachable_accuracy_stops_once_explained(backend, gen, dtype):
    """n_nonzero past the rank, or tol=0: sklearn stops as soon as y is explained (at
    the 5 true atoms where greedy selection finds them); so must every backend, whatever
    n_nonzero allows (5..35), with sklearn's supports and coefficients."""
    X, Y, truth = _sparse_coded(gen, b=6)
    G64, XY64, yn64 = X.T @ X, Y @ X, Y.square().sum(1)
    G, XY, yn = G64.to(dtype), XY64.to(dtype), yn64.to(dtype)
    # The case is sklearn's: greedy selection finds some targets exactly, in its first 5
    # steps. A path that takes a wrong atom first and only later explains y exactly (its
    # extra coefficient cancelling to 0 or to 1e-17, by rounding) is no such case.
    true = truth.numpy() != 0
    found = ((_sklearn(G64, XY64, yn64, n_nonzero=35) != 0) == true).all(1)
    found &= ((_sklearn(G64, XY64, yn64, n_nonzero=5) != 0) == true).all(1)
    assert found.any()
    # The targets found exactly: on the others the path goes on past 5 atoms through
    # near-ties of random data, where rounding may pick either atom; in float32 also
    # those whose first 5 choices already met such a tie.
    if dtype == torch.float32:
        first5 = _omp(backend, G, XY, 5, yn=yn)[0].numpy() != 0
        found &= (first5 == true).all(1)
    rows = found
    assert rows.any()
    rtol, atol = (1e-9, 1e-9) if dtype == torch.float64 else (1e-4, 1e-4)
    for s in (5, 6, 12, 25, 26, 35):
        expected = _sklearn(G64, XY64, yn64, n_nonzero=s)[rows]
        coef, support, _ = _omp(backend, G, XY, s, yn=yn)
        coef, support = coef[rows], support[rows]
        assert np.array_equal(coef.numpy() != 0, expected != 0), s
        assert np.array_equal((support >= 0).sum(1).numpy(), (expected != 0).sum(1))
        np.testing.assert_allclose(coef.double().numpy(), expected, rtol=rtol, atol=atol)
    coef_tol, support_tol, _ = _omp(backend, G, XY, 35, 0.0, yn)
    assert torch.equal(support_tol[rows], support)
    np.testing.assert_allclose(coef_tol[rows].double().numpy(), expected, rtol=rtol, atol=atol)


def test_sklearn_fixture_unreachable_accuracy(backend):
    """sklearn's own data (make_sparse_coded_signal, random_state=0, scaled by 10)."""
    from sklearn.datasets import make_sparse_coded_signal

    y, X, gamma = make_sparse_coded_signal(n_samples=3, n_components=35, n_features=25, n_nonzero_coefs=5,
                                           random_state=0)
    X, Y, truth = (torch.from_numpy(a) for a in (10 * X.T, 10 * y, gamma))
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 1e-4)):
        G, XY, yn = (X.T @ X).to(dtype), (Y @ X).to(dtype), Y.square().sum(1).to(dtype)
        for s in (5, 6, 25, 35):
            coef, support, _ = _omp(backend, G, XY, s, yn=yn)
            assert ((support >= 0).sum(1) == 5).all(), (dtype, s, support)
            torch.testing.assert_close(coef.double(), truth, rtol=tol, atol=tol)


def test_perfect_signal_recovery_like_sklearn(backend, gen):
    X, Y, truth = _sparse_coded(gen, d=128, n=128)  # a dictionary where greedy recovery holds
    coef, _, residual = _dict(backend, X, Y, 5)
    assert np.array_equal(coef.numpy() != 0, truth.numpy() != 0)
    torch.testing.assert_close(coef, truth, rtol=1e-9, atol=1e-10)
    assert (residual.abs() <= 1e-12 * Y.square().sum(1)).all()


def test_identical_regressors_stop_on_dependence(backend, gen):
    X, _, _ = _sparse_coded(gen)
    X[:, 1] = X[:, 0]
    y = (X[:, 0] + X[:, 1]).unsqueeze(0)
    coef, support, _ = _dict(backend, X, y, 2)
    assert support[0].tolist() == [0, -1]  # x_1 = x_0 lies in the span of the support
    np.testing.assert_allclose(coef.numpy(), _sklearn(X.T @ X, y @ X, y.square().sum(1), n_nonzero=2), atol=1e-10)


def test_swapped_regressors(backend, gen):
    """sklearn swaps Gram columns as atoms are chosen; the support must still name the
    original atoms (x_21 first, then x_0)."""
    X, _, _ = _sparse_coded(gen)
    truth = torch.zeros(1, 35, dtype=torch.float64)
    truth[0, 21], truth[0, 0] = 1.0, 0.5
    y = truth @ X.T
    coef, support, _ = _dict(backend, X, y, 2)
    assert sorted(support[0].tolist()) == [0, 21]
    assert np.flatnonzero(coef[0].numpy()).tolist() == [0, 21]
    torch.testing.assert_close(coef, truth, rtol=1e-9, atol=1e-10)


def test_no_atoms_for_a_zero_target(backend, gen):
    X, _, _ = _sparse_coded(gen)
    Y = torch.zeros(3, 25, dtype=torch.float64)
    coef, support, residual = _dict(backend, X, Y, 1)
    assert (coef == 0).all() and (support == -1).all() and (residual == 0).all()


def test_reaches_least_squares(backend, gen):
    X = torch.randn(10, 8, generator=gen, dtype=torch.float64)
    Y = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    coef, support, _ = _dict(backend, X, Y, 8)
    assert ((support >= 0).sum(1) == 8).all()
    lstsq = torch.linalg.lstsq(X, Y.T).solution.T
    torch.testing.assert_close(coef, lstsq, rtol=1e-8, atol=1e-10)


def test_float32_agrees_with_float64(backend, gen):
    X, Y, _ = _sparse_coded(gen)
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    c32, s32, _ = _omp(backend, G.float(), XY.float(), 5, yn=yn.float())
    c64, s64, _ = _omp(backend, G, XY, 5, yn=yn)
    assert torch.equal(s32, s64)
    torch.testing.assert_close(c32.double(), c64, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_dense_targets_past_the_rank_reach_least_squares(backend, gen, dtype):
    """y anywhere in R^25, 35 atoms, n_nonzero=35: once 25 atoms span the space the
    residual is rounding noise and OMP must stop there, exactly as sklearn does."""
    X, _, _ = _sparse_coded(gen)
    Y = torch.randn(4, 25, generator=gen, dtype=torch.float64)
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    coef, support, residual = _omp(backend, G.to(dtype), XY.to(dtype), 35, yn=yn.to(dtype))
    assert ((support >= 0).sum(1) <= 25).all()
    recon = coef.double() @ X.T
    scale = 1e-9 if dtype == torch.float64 else 1e-3
    assert ((recon - Y).square().sum(1) <= scale * yn).all()
    if dtype == torch.float64:
        expected = _sklearn(G, XY, yn, n_nonzero=35)
        assert np.array_equal(coef.numpy() != 0, expected != 0)
        np.testing.assert_allclose(coef.numpy(), expected, rtol=1e-6, atol=1e-8)


def test_ill_conditioned_rank_deficient_dictionary(backend, gen):
    """Atoms in a 12-dimensional subspace of R^40, with singular values from 1 to 1e-5:
    no target may use more than 12 atoms, however many n_nonzero allows, and the codes
    must reconstruct the target's projection."""
    U, _ = torch.linalg.qr(torch.randn(40, 12, generator=gen, dtype=torch.float64))
    sv = torch.logspace(0, -5, 12, dtype=torch.float64)
    V = torch.randn(12, 60, generator=gen, dtype=torch.float64)
    X = U @ (sv[:, None] * V)
    X = X / X.norm(dim=0)
    Y = torch.randn(6, 40, generator=gen, dtype=torch.float64)
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    coef, support, residual = _omp(backend, G, XY, 60, yn=yn)
    assert ((support >= 0).sum(1) <= 12).all(), (support >= 0).sum(1)
    projected = (Y @ U) @ U.T
    torch.testing.assert_close(coef @ X.T, projected, rtol=1e-4, atol=1e-4)
    assert coef.abs().max() < 1e8  # no coefficient blown up on a dependent atom


def test_identical_calls_give_identical_supports(backend, gen):
    X, Y, _ = _sparse_coded(gen)
    Y = torch.cat([Y, torch.randn(3, 25, generator=gen, dtype=torch.float64)])
    G, XY, yn = X.T @ X, Y @ X, Y.square().sum(1)
    first = _omp(backend, G, XY, 35, yn=yn)
    for _ in range(3):
        again = _omp(backend, G, XY, 35, yn=yn)
        assert torch.equal(again[1], first[1])
        assert torch.equal(again[0], first[0])


def test_non_symmetric_gram_is_rejected():
    G = torch.eye(4, dtype=torch.float64)
    G[0, 1] = 0.5
    with pytest.raises(ValueError, match=r"gram must be symmetric \(X\^T X\)"):
        omp(G, torch.ones(2, 4, dtype=torch.float64), 2)
    X = torch.randn(300, 50)
    omp(X.T @ X, torch.randn(3, 300) @ X, 4)  # a float32 GEMM's X^T X passes


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_lowered_omp_of_exported_graphs_equals_the_reference(dtype):
    """vqfast.ops.lowered.omp (unrolled, standard operators): the reference's supports
    and codes, the early stops included (a duplicate atom, a target in a support's span,
    tol), on fresh random problems; per-target grams with unavailable atoms equal
    solving each target's available sub-problem."""
    gen = torch.Generator().manual_seed(int(torch.randint(1 << 30, ())))
    for trial in range(12):
        n, d, b = 12, 30, 9
        X = torch.randn(d, n, dtype=dtype, generator=gen)
        X[:, 3] = 2 * X[:, 1]
        Y = torch.randn(b, d, dtype=dtype, generator=gen)
        Y[0] = 0.5 * X[:, 2] + X[:, 5]
        G, xty, yn = X.T @ X, Y @ X, Y.square().sum(1)
        for k, tol in ((1, None), (4, None), (12, None), (12, 1.0)):
            want = reference.omp(G, xty, k, tol, yn)
            got = lowered.omp(G, xty, k, tol, yn)
            assert torch.equal(got[1], want[1]), (trial, k, tol)
            rtol = 1e-6 if dtype == torch.float64 else 1e-3
            torch.testing.assert_close(got[0], want[0], rtol=rtol, atol=rtol)
            torch.testing.assert_close(got[2], want[2], rtol=rtol, atol=rtol * float(yn.max()))
    keep = torch.rand(b, n, generator=gen) < 0.6
    keep[:, 0] = True
    coef, support, _ = lowered.omp(G.expand(b, n, n).clone(), xty, 4, None, yn, available=keep)
    for t in range(b):
        idx = keep[t].nonzero()[:, 0]
        want = reference.omp(G[idx][:, idx], xty[t:t + 1, idx], min(4, len(idx)), None, yn[t:t + 1])
        assert torch.equal(torch.where(support[t] >= 0, support[t], -1)[:len(idx)].sort().values,
                           torch.where(want[1][0] >= 0, idx[want[1][0].clamp_min(0)], -1).sort().values)
        torch.testing.assert_close(coef[t, idx], want[0][0], rtol=1e-3, atol=1e-6)
