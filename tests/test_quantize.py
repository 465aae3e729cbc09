"""vqfast.ops.quantize: the VQ layer's forward values, indices, losses and gradients."""

import pytest
import torch
import torch.nn.functional as F

from vqfast.ops import nearest_code, quantize


def _quantize_reference(z, codebook):
    """VQ-VAE eqs. 1-5 written out: argmin over codes, straight-through, two MSEs."""
    flat = z.permute(0, 2, 3, 1).reshape(-1, z.shape[1])
    idx = torch.cdist(flat.double(), codebook.double()).argmin(1)
    z_q = codebook[idx].view(z.shape[0], z.shape[2], z.shape[3], -1).permute(0, 3, 1, 2)
    return idx.view(z.shape[0], z.shape[2], z.shape[3]), z_q


def test_values_indices_and_losses(device_backend, gen):
    device, backend = device_backend
    z = torch.randn(3, 8, 5, 7, generator=gen).to(device)
    cb = torch.randn(33, 8, generator=gen).to(device)
    out = quantize(z, cb, backend=backend)
    ref_idx, ref_zq = _quantize_reference(z, cb)
    assert out.indices.shape == (3, 5, 7) and out.indices.dtype == torch.int64
    assert torch.equal(out.indices, ref_idx)
    torch.testing.assert_close(out.quantized, ref_zq, rtol=1e-6, atol=1e-6)  # z + (z_q - z): one rounding
    torch.testing.assert_close(out.codebook_loss, F.mse_loss(ref_zq, z))
    torch.testing.assert_close(out.commitment_loss, F.mse_loss(z, ref_zq))


def test_gradients_straight_through_and_stop_gradient(device_backend, gen):
    device, backend = device_backend
    z = torch.randn(2, 4, 3, 3, generator=gen).to(device).requires_grad_()
    cb = torch.randn(10, 4, generator=gen).to(device).requires_grad_()
    out = quantize(z, cb, backend=backend)
    upstream = torch.randn(out.quantized.shape, generator=gen).to(device)

    (g_z,) = torch.autograd.grad(out.quantized, z, upstream, retain_graph=True)
    assert torch.equal(g_z, upstream)  # straight-through: copied unchanged

    g_z_cb, g_cb_cb = torch.autograd.grad(out.codebook_loss, (z, cb), retain_graph=True, allow_unused=True)
    assert g_z_cb is None  # sg[z]: the codebook loss trains only the codebook
    z_q = cb.detach()[out.indices]  # (B, H, W, C)
    diff = (z_q - z.detach().permute(0, 2, 3, 1)).reshape(-1, 4)
    expected = torch.zeros_like(cb).index_add_(0, out.indices.reshape(-1), 2 * diff / z.numel())
    torch.testing.assert_close(g_cb_cb, expected)

    g_z_c, g_cb_c = torch.autograd.grad(out.commitment_loss, (z, cb), allow_unused=True)
    assert g_cb_c is None  # sg[z_q]: the commitment loss trains only the encoder
    torch.testing.assert_close(g_z_c, 2 * (z.detach() - z_q.permute(0, 3, 1, 2)) / z.numel())


def test_channels_last_and_other_spatial_ranks(gen):
    cb = torch.randn(17, 6, generator=gen)
    z = torch.randn(2, 6, 9, 4, generator=gen)
    out = quantize(z.contiguous(memory_format=torch.channels_last), cb)
    assert torch.equal(out.indices, quantize(z, cb).indices)
    z1 = torch.randn(3, 6, 11, generator=gen)  # (B, C, L)
    out1 = quantize(z1, cb)
    assert out1.indices.shape == (3, 11)
    expected = nearest_code(z1.permute(0, 2, 1).reshape(-1, 6), cb)[0].view(3, 11)
    assert torch.equal(out1.indices, expected)


def test_bad_input_names_the_argument():
    with pytest.raises(ValueError, match=r"z must be \(B, C, H, W\)"):
        quantize(torch.randn(4, 6), torch.randn(5, 6))
    with pytest.raises(ValueError, match="codebook has 5 channels but z has C=6"):
        quantize(torch.randn(1, 6, 2, 2), torch.randn(3, 5))
    with pytest.raises(ValueError, match="z contains NaN"):
        quantize(torch.full((1, 3, 2, 2), float("nan")), torch.randn(4, 3))
