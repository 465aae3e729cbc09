"""Every Triton kernel launch the ops make, in one list, for the ahead-of-time compile.

A variant is a call of a kernel's host wrapper on small CPU tensors of the dtype and
shape that pick one compiled specialisation: each constexpr value the wrapper can pass
(dtype flags, top-k slot counts, tile sizes), and the integer arguments Triton
specialises on its own: a value equal to 1 becomes a constexpr and a multiple of 16
gets a divisibility hint, so each kernel is listed with its integer arguments at 1, at
multiples of 16 and at odd values, plus the edge values the ops pass (position 0, 1 and
2^31 - 1). ``vqfast.kernels.aot`` runs each call with the launch intercepted, so what it
compiles is exactly what the wrapper would launch on a GPU, not a hand-copied signature.

Adding a kernel or a constexpr: add its variants here; ``tests/test_kernels_aot.py``
fails on any variant that does not compile.
"""

from typing import Callable, List, NamedTuple

import torch

from vqfast.kernels.decode_attention_triton import decode_attention_triton
from vqfast.kernels.nearest_code_triton import nearest_code_triton
from vqfast.kernels.omp_triton import omp_triton
from vqfast.kernels.restore_step_triton import restore_step_triton


class Variant(NamedTuple):
    kernel: str  # the op whose Triton kernel this launches
    name: str  # what is special about it
    call: Callable[[], object]  # runs the host wrapper on CPU tensors


def _nearest_code(n, d, num_codes, k, dtype):
    def call():
        return nearest_code_triton(torch.randn(n, d).to(dtype), torch.randn(num_codes, d).to(dtype), k)

    tag = str(dtype).replace("torch.", "")
    return Variant("nearest_code", f"{tag} N={n} D={d} K={num_codes} k={k}", call)


def _omp(b, n, s, tol, dtype):
    def call():
        x = torch.randn(max(n, 2), n, dtype=dtype)
        y = torch.randn(b, x.shape[0], dtype=dtype)
        return omp_triton(x.T @ x, y @ x, s, tol, y.square().sum(1))

    tag = str(dtype).replace("torch.", "")
    return Variant("omp", f"{tag} B={b} N={n} S={s} tol={'on' if tol >= 0 else 'off'}", call)


def _restore_step(m, v, position, dtype):
    def call():
        logits = torch.randn(m, v).to(dtype)
        current = torch.randint(0, v, (m,))
        return restore_step_triton(logits, current, 1.5, torch.arange(m), position, 1.0)

    tag = str(dtype).replace("torch.", "")
    return Variant("restore_step", f"{tag} M={m} V={v} position={position}", call)


def _decode_attention(m, h, d, t, length, dtype):
    def call():
        q = torch.randn(m, h, d).to(dtype)
        cache = torch.randn(2, m, h, t, d).to(dtype)
        return decode_attention_triton(q, cache[0], cache[1], length, d**-0.5)

    tag = str(dtype).replace("torch.", "")
    return Variant("decode_attention", f"{tag} M={m} H={h} d={d} T={t} length={length}", call)


HALF = (torch.float16, torch.bfloat16)


def variants() -> List[Variant]:
    out = []
    for dtype in (torch.float32,) + HALF:
        for n, d, num_codes in ((1, 1, 2), (97, 3, 513), (256, 64, 1024)):  # ones, odd, multiples of 16
            out.append(_nearest_code(n, d, num_codes, 1, dtype))
    for dtype in (torch.float32, torch.bfloat16):
        for k in (5, 13, 29, 61, 64):  # top-k slot counts 8, 16, 32, 64, 128
            out.append(_nearest_code(97, 33, 200, k, dtype))
    for dtype in (torch.float32, torch.float64):
        for b, n, s in ((1, 1, 1), (37, 50, 7), (64, 256, 16)):
            for tol in (-1.0, 1e-3):
                out.append(_omp(b, n, s, tol, dtype))
    for dtype in (torch.float32, torch.float64) + HALF:
        out.append(_restore_step(37, 513, 2**31 - 1, dtype))
    for position in (0, 1, 16, 7):
        out.append(_restore_step(1, 1024, position, torch.float32))
    out.append(_restore_step(64, 1, 3, torch.float32))
    for dtype in (torch.float32, torch.float64) + HALF:
        out.append(_decode_attention(3, 5, 24, 37, 29, dtype))
    out.append(_decode_attention(1, 1, 1, 1, 1, torch.float32))
    out.append(_decode_attention(16, 16, 64, 256, 1, torch.float32))
    out.append(_decode_attention(16, 16, 64, 256, 256, torch.bfloat16))
    return out
