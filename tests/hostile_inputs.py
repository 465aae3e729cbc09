"""Child process of test_no_crash.py: drives every public op, and every raw `_C` entry
point, with hostile inputs drawn by hypothesis. Each call must return or raise a Python
exception; the parent fails the test if this process dies of a signal instead.

Usage: python hostile_inputs.py BACKEND EXAMPLES
"""

import sys
import warnings

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vqfast
from vqfast import _ext
from vqfast.ops import decode_attention, omp, restore_step

BACKEND = sys.argv[1]
EXAMPLES = int(sys.argv[2])
OK_ERRORS = (ValueError, TypeError, RuntimeError, IndexError)

SPECIAL = [0.0, -0.0, 1.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e30, -1e30, 3e38, 1e-45]
INDICES = [0, 1, -1, -5, 15, 16, 17, 2**31, 10**9, -(10**9), 2**62]


def floats(shape, dtype, data):
    """A tensor of `shape`: random normals with special values planted at random spots,
    sometimes transposed or strided (non-contiguous)."""
    x = torch.randn(*shape, dtype=torch.float64)
    if x.numel():
        for _ in range(data.draw(st.integers(0, 3))):
            flat = x.view(-1)
            flat[data.draw(st.integers(0, flat.numel() - 1))] = data.draw(st.sampled_from(SPECIAL))
    x = x.to(dtype)
    if x.dim() >= 2 and data.draw(st.booleans()):
        x = x.transpose(0, 1).contiguous().transpose(0, 1)  # same shape, column-major strides
    return x


def indices(n, data):
    return torch.tensor([data.draw(st.sampled_from(INDICES)) for _ in range(n)], dtype=torch.int64)


sizes = st.sampled_from([0, 1, 2, 3, 16, 97])
float_dtypes = st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64])


def attempt(fn):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            fn()
        except OK_ERRORS:
            pass


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck),
          database=None)
@given(st.data())
def drive_public_ops(data):
    op = data.draw(st.sampled_from(["nearest_code", "omp", "restore_step", "decode_attention"]))
    n, m, d = data.draw(sizes), data.draw(sizes), data.draw(st.sampled_from([0, 1, 4, 33]))
    dtype = data.draw(float_dtypes)
    if dtype == torch.int64:
        make = lambda *shape: torch.randint(-3, 3, shape)  # noqa: E731
    else:
        make = lambda *shape: floats(shape, dtype, data)  # noqa: E731
    if op == "nearest_code":
        k = data.draw(st.sampled_from([1, 2, 4, 100]))
        attempt(lambda: vqfast.nearest_code(make(n, d), make(m, d), k=k, backend=BACKEND))
    elif op == "omp":
        s = data.draw(st.sampled_from([1, 2, 5, 40]))
        g = make(m, m)
        if data.draw(st.booleans()) and g.is_floating_point():
            g = g @ g.T  # symmetric, sometimes with NaN/Inf inside
        tol = data.draw(st.sampled_from([None, 0.0, 1.0, 1e300]))
        attempt(lambda: omp(g, make(n, m), s, tol, make(n) if tol is not None else None, backend=BACKEND))
    elif op == "restore_step":
        v = data.draw(st.sampled_from([1, 16, 97]))
        validate = data.draw(st.booleans())
        position = data.draw(st.sampled_from([0, 5, 2**31 - 1, 2**31, -1]))
        temperature = data.draw(st.sampled_from([1.0, 1e-30, 0.0, -1.0, float("inf")]))
        attempt(lambda: restore_step(make(n, v), indices(n, data), data.draw(st.sampled_from([-1.0, 0.0, 5.0])),
                                     indices(n, data), position, temperature, backend=BACKEND, validate=validate))
    else:
        h, t = data.draw(st.sampled_from([1, 2])), data.draw(st.sampled_from([1, 3, 17]))
        length = data.draw(st.sampled_from([0, 1, t, t + 1, 10**9]))
        attempt(lambda: decode_attention(make(n, h, d), make(n, h, t, d), make(n, h, t, d), length, backend=BACKEND))


@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck),
          database=None)
@given(st.data())
def drive_raw_entry_points(data):
    """vqfast._C's CPU functions, called directly: no Python checks in front of them."""
    C = _ext._C
    n, m, d = data.draw(sizes), data.draw(st.sampled_from([1, 3, 16])), data.draw(st.sampled_from([0, 1, 4]))
    device = data.draw(st.sampled_from(["cpu", "meta"]))  # meta: a tensor whose memory is not on the host
    on = lambda x: x.to(device)  # noqa: E731
    fn = data.draw(st.sampled_from(["nearest_code_cpu", "omp_cpu", "restore_step_cpu", "decode_attention_cpu"]))
    if fn == "nearest_code_cpu":
        attempt(lambda: C.nearest_code_cpu(on(floats((n, d), torch.float32, data)),
                                           on(floats((m, d), torch.float32, data)), 1, "auto"))
    elif fn == "omp_cpu":
        g = floats((m, m), torch.float64, data)
        attempt(lambda: C.omp_cpu(on(g @ g.T), on(floats((n, m), torch.float64, data)), min(m, 2), -1.0,
                                  on(torch.ones(n, dtype=torch.float64))))
    elif fn == "restore_step_cpu":
        attempt(lambda: C.restore_step_cpu(on(floats((n, 16), torch.float32, data)), on(indices(n, data)), 0.0,
                                           on(indices(n, data)), 0, 1.0))
    else:
        attempt(lambda: C.decode_attention_cpu(on(floats((n, 2, 4), torch.float32, data)),
                                               on(floats((n, 2, 3, 4), torch.float32, data)),
                                               on(floats((n, 2, 3, 4), torch.float32, data)), 3, 0.5))


if __name__ == "__main__":
    drive_public_ops()
    if BACKEND == "cpu":
        drive_raw_entry_points()
    print("survived")
