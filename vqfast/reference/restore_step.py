"""Reference restoration step: the counter-based uniform, the NLL test and the
inverse-CDF sample, in plain PyTorch.

The uniform for a row is a pure function of (seed, position): three rounds of the
`lowbias32` integer hash (Wellons) over the seed's two 32-bit halves and the position,
top 24 bits scaled to [0, 1). Reference and fast paths, on any device, draw the same
number for the same counter, so they pick the same tokens.
"""

import torch

_M32 = 0xFFFFFFFF
_SEED_MIX = 0x9E3779B9


def _lowbias32(x: torch.Tensor) -> torch.Tensor:
    # int64 holds the uint32 state; products wrap mod 2^64, whose low 32 bits are the uint32 product.
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & _M32
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & _M32
    return x ^ (x >> 16)


def counter_uniform(seeds: torch.Tensor, position) -> torch.Tensor:
    """seeds (M,) int64, position int or (M,) int64 -> (M,) float64 in [0, 1), multiples of 2^-24."""
    seeds = seeds.to(torch.int64)
    h = _lowbias32((seeds & _M32) ^ _SEED_MIX)
    h = _lowbias32(h ^ ((seeds >> 32) & _M32))
    h = _lowbias32(h ^ (torch.as_tensor(position, dtype=torch.int64, device=seeds.device) & _M32))
    return (h >> 8).to(torch.float64) * 2.0**-24


def image_seeds(images: torch.Tensor, seed: int) -> torch.Tensor:
    """(B, ...) images, int seed -> (B,) int64 in [0, 2^42): one seed per image, a pure
    function of (seed, the image's float32 bits). The same image gets the same seed in
    any batch, order, dataset or call, so its restorations and score are reproducible
    and a resumed run equals an uninterrupted one. Each element's bits are hashed with
    its flat position and summed mod 2^32 (two independent sums), which no reduction
    order changes, so every device gives the same seed."""
    bits = images.detach().reshape(images.shape[0], -1).float().contiguous().view(torch.int32).to(torch.int64) & _M32
    pos = torch.arange(bits.shape[1], dtype=torch.int64, device=bits.device)
    h = _lowbias32(bits ^ _lowbias32(pos ^ _SEED_MIX))
    lo = h.sum(1) & _M32  # < 2^32 terms of < 2^32 each: exact in int64 below 2^31 elements
    hi = _lowbias32(h ^ 0x85EBCA6B).sum(1) & _M32
    s_lo, s_hi = int(seed) & _M32, (int(seed) >> 32) & _M32
    lo = _lowbias32(lo ^ _lowbias32(torch.full_like(lo, s_lo)))
    hi = _lowbias32(hi ^ _lowbias32(torch.full_like(hi, s_hi) ^ lo))
    return ((hi & 0x3FF) << 32) | lo


def stream_seeds(image_seeds: torch.Tensor, restorations: int) -> torch.Tensor:
    """(B,) int64 image seeds -> (B, S) int64 row seeds, one random stream per
    (image, restoration j): image_seed * 2^20 + j (S < 2^20)."""
    if not 1 <= restorations < 2**20:
        raise ValueError(f"restorations must be in [1, 2^20), got {restorations}")
    j = torch.arange(restorations, dtype=torch.int64, device=image_seeds.device)
    return image_seeds.to(torch.int64)[:, None] * 2**20 + j[None, :]


def token_nll(x: torch.Tensor, current: torch.Tensor) -> torch.Tensor:
    """-log softmax(x)[..., current] as max + log sum exp(x - max) - x[current]: x (..., V)
    float, current (...) int64. The one formula every restoration decision uses."""
    top = x.amax(-1, keepdim=True)
    return top[..., 0] + (x - top).exp().sum(-1).log() - x.gather(-1, current[..., None])[..., 0]


def restore_step(logits: torch.Tensor, current: torch.Tensor, threshold: float, seeds: torch.Tensor, position,
                 temperature: float = 1.0):
    """One position of the restoration pass for M sequences.

    nll = -log softmax(logits)[current] (temperature 1: the model's likelihood); where
    nll > threshold the token is replaced by the first v with cumsum(e)[v] > u * sum(e),
    e = exp((logits - max) / temperature), u = counter_uniform(seeds, position).

    Args: logits (M, V) float; current (M,) int64; seeds (M,) int64; position int.
    Returns: tokens (M,) int64, nll (M,) float32 (float64 for float64 logits).
    """
    work = torch.float64 if logits.dtype == torch.float64 else torch.float32
    x = logits.to(work)
    nll = token_nll(x, current)
    top = x.amax(1, keepdim=True)
    e = ((x - top) / temperature).exp()
    c = e.cumsum(1)
    target = counter_uniform(seeds, position).to(work) * c[:, -1]
    sample = (c <= target[:, None]).sum(1).clamp(max=x.shape[1] - 1)
    return torch.where(nll > threshold, sample, current), nll
