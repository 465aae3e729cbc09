"""decode_attention: every backend against the reference and against full causal attention."""

import pytest
import torch
import torch.nn.functional as F

from vqfast import reference
from vqfast.ops import decode_attention
from conftest import DEVICE_BACKENDS, require_backend

TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}


@pytest.fixture(params=DEVICE_BACKENDS)
def backend(request):
    require_backend("decode_attention", *request.param)
    return request.param


@pytest.mark.parametrize("m,h,t,d,length", [(1, 1, 1, 1, 1), (5, 3, 97, 33, 97), (2, 8, 513, 64, 300), (3, 2, 40, 7, 1),
                                            # the CPU kernel's 16-row blocks (head sizes 32, 64, 128) and its tails
                                            (4, 8, 256, 32, 256), (2, 3, 64, 32, 15), (2, 3, 64, 32, 16),
                                            (2, 3, 64, 32, 17), (1, 2, 300, 128, 255), (3, 1, 50, 64, 33)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_equals_reference(backend, gen, m, h, t, d, length, dtype):
    device, name = backend
    q, k, v = (torch.randn(*s, generator=gen, dtype=torch.float64).to(dtype)
               for s in ((m, h, d), (m, h, t, d), (m, h, t, d)))
    expected = reference.decode_attention(q, k, v, length)
    out = decode_attention(q.to(device), k.to(device), v.to(device), length, backend=name)
    assert out.dtype == dtype and out.shape == (m, h, d)
    torch.testing.assert_close(out.cpu().double(), expected.double(), rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("d", [32, 64, 128])
def test_one_dominant_score_anywhere(backend, gen, d):
    """A key far more aligned with the query than the rest, at a block's first, inner and
    last row, in the tail, and at the end: the softmax must shift by the true maximum
    (by any other, exp overflows at these scores) and put nearly all weight there."""
    device, name = backend
    length = 53
    for pos in (0, 5, 15, 16, 31, 47, 48, 52):
        q = torch.randn(2, 2, d, generator=gen)
        k = torch.randn(2, 2, 64, d, generator=gen) * 0.1
        v = torch.randn(2, 2, 64, d, generator=gen)
        k[:, :, pos] = q * 40  # scores ~ 40 |q|^2 / sqrt(d): far beyond exp's float range
        out = decode_attention(q.to(device), k.to(device), v.to(device), length, backend=name).cpu()
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out, v[:, :, pos], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(out, reference.decode_attention(q, k, v, length), rtol=2e-5, atol=2e-5)


def test_reference_is_the_last_row_of_causal_attention(gen):
    q, k, v = (torch.randn(4, 3, 20, 16, generator=gen, dtype=torch.float64) for _ in range(3))
    full = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    for length in (1, 7, 20):
        torch.testing.assert_close(reference.decode_attention(q[:, :, length - 1], k, v, length), full[:, :, length - 1])


def test_cache_views_of_a_preallocated_buffer(backend, gen):
    """A slice of a (layers, M, H, T, d) cache works without a copy of the layout."""
    device, name = backend
    cache = torch.randn(2, 2, 4, 3, 50, 8, generator=gen).to(device)  # (kv, layer, M, H, T, d)
    q = torch.randn(4, 3, 8, generator=gen).to(device)
    out = decode_attention(q, cache[0, 1], cache[1, 1], 21, backend=name)
    torch.testing.assert_close(out.cpu(), reference.decode_attention(q.cpu(), cache[0, 1].cpu(), cache[1, 1].cpu(), 21),
                               rtol=2e-5, atol=2e-5)


def test_bad_input():
    q, k = torch.zeros(2, 3, 4), torch.zeros(2, 3, 10, 4)
    cases = [
        (lambda: decode_attention(q, k, k, 11), ValueError, r"length must be an int in \[1, T=10\]"),
        (lambda: decode_attention(q, k, k, 0), ValueError, "length"),
        (lambda: decode_attention(q[:, :2], k, k, 3), ValueError, r"k_cache must be \(2, 2, T, 4\)"),
        (lambda: decode_attention(q, k, k[:, :, :5], 3), ValueError, "differ"),
        (lambda: decode_attention(q.double(), k, k, 3), TypeError, "must share a dtype"),
        (lambda: decode_attention(q[0], k, k, 3), ValueError, r"q must be 3-D \(M, H, d\)"),
    ]
    for call, exc, match in cases:
        with pytest.raises(exc, match=match):
            call()


def test_opcheck(backend, gen):
    device, name = backend
    q, k, v = (torch.randn(*s, generator=gen).to(device) for s in ((2, 2, 8), (2, 2, 9, 8), (2, 2, 9, 8)))
    torch.library.opcheck(torch.ops.vqfast.decode_attention.default, (q, k, v, 5, 0.3, name))
