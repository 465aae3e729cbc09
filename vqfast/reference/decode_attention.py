"""Reference single-query attention against a KV cache."""

import math

import torch


def decode_attention(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, length: int, scale=None):
    """q (M, H, d), caches (M, H, T, d) -> (M, H, d): softmax(scale q k^T) v over the
    first ``length`` cached positions; scale defaults to 1/sqrt(d). Accumulates in
    float32 (float64 for float64 inputs)."""
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    k = k_cache[:, :, :length].to(work)
    v = v_cache[:, :, :length].to(work)
    scores = torch.einsum("mhd,mhtd->mht", q.to(work), k) * scale
    return torch.einsum("mht,mhtd->mhd", scores.softmax(-1), v).to(q.dtype)
