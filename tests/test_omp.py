"""vqfast.ops.omp: every backend against sklearn's orthogonal_mp_gram and the reference loop."""

import warnings

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp_gram

from vqfast import reference
from vqfast.ops import omp, omp_dictionary
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
    X, _ = _problem(gen, 64, 128, 1)
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
