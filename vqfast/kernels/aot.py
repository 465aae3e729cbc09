"""Compiles every Triton kernel variant the ops launch for real GPUs, without a GPU.

    python -m vqfast.kernels.aot [--arch 90,80] [--only TEXT] [--jobs N]

Triton's interpreter (TRITON_INTERPRET=1, which the tests use on CPU machines) runs the
kernels as Python and never calls the compiler, so a kernel a GPU would reject can pass
every interpreter test. This runs each host wrapper of ``vqfast.kernels.variants`` on CPU
tensors with the launch intercepted, specialises the arguments exactly as Triton's
launcher does (``create_function_from_signature`` and ``_pack_args``, the code path of
``JITFunction.run``), and compiles for ``GPUTarget("cuda", arch, 32)`` through
``triton.compile`` down to a cubin (Triton ships ptxas). One line per variant and arch:
kernel, variant, arch, ok or the error, the tensor-core instructions in the PTX
(``mma.sync`` for Ampere, ``wgmma`` for Hopper) and SASS (HMMA / HGMMA), and the
registers and stack bytes (local memory) per thread. Exit status 1 if any failed.

Must run with TRITON_INTERPRET unset (the kernels are then real JIT functions).
"""

import argparse
import multiprocessing
import os
import re
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from typing import NamedTuple, Optional

import triton
from triton import knobs
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource, make_backend
from triton.runtime.jit import JITFunction, create_function_from_signature

from vqfast.kernels import interpreting
from vqfast.kernels.variants import variants


class _Captured(Exception):
    """Raised by the intercepted launcher: the wrapper's work after its launch is moot."""


@contextmanager
def _captured_launches():

    launches = []

    def run(self, *args, grid, warmup, **kwargs):
        launches.append((self, args, kwargs))
        raise _Captured

    original = JITFunction.run
    JITFunction.run = run
    try:
        yield launches
    finally:
        JITFunction.run = original


def _compile(fn, args, kwargs, arch: int):
    """What ``JITFunction.run`` does before it launches, for another target."""

    backend = make_backend(GPUTarget("cuda", arch, 32))
    kwargs = dict(kwargs)
    kwargs["debug"] = kwargs.get("debug", fn.debug) or knobs.runtime.debug
    for name in ("instrumentation_mode", "fpsan_homomorphic_casts"):  # set by run() where the knob exists
        if hasattr(knobs.compilation, name):
            kwargs[name] = getattr(knobs.compilation, name)
    binder = create_function_from_signature(fn.signature, fn.params, backend)
    bound, specialization, options = binder(*args, **kwargs)
    options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound, specialization, options)
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=backend.target,
                          options=options.__dict__)


class Result(NamedTuple):
    kernel: str
    variant: str
    arch: int
    error: Optional[str]  # None: compiled
    ptx_mma: int = 0  # mma.sync instructions in the PTX
    ptx_wgmma: int = 0  # wgmma.mma_async instructions in the PTX
    sass_mma: int = -1  # HMMA / HGMMA in the SASS; -1: no disassembler
    registers: int = -1
    stack: int = -1  # bytes of local memory per thread (register arrays spilled or indexed at run time)

    def line(self) -> str:
        head = f"{self.kernel:<17} {self.variant:<44} sm_{self.arch}"
        if self.error is not None:
            return f"{head}  ERROR {self.error}"
        sass = "?" if self.sass_mma < 0 else str(self.sass_mma)
        return (f"{head}  ok  mma={self.ptx_mma} wgmma={self.ptx_wgmma} sass_tc={sass} "
                f"regs={self.registers} stack={self.stack}")


def _cuobjdump() -> Optional[str]:
    try:
        path = knobs.nvidia.cuobjdump.path
    except Exception:  # older Triton: no knob
        return None
    return path if path and os.path.exists(path) else None


def _inspect(cubin: bytes):
    """(HMMA + HGMMA count, registers, stack bytes) of a cubin, or -1s without cuobjdump."""
    tool = _cuobjdump()
    if tool is None:
        return -1, -1, -1
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        sass = subprocess.run([tool, "-sass", f.name], capture_output=True, text=True).stdout
        usage = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True).stdout
    tc = len(re.findall(r"\b(?:HMMA|HGMMA)\b", sass))
    regs = re.search(r"REG:(\d+)", usage)
    stack = re.search(r"STACK:(\d+)", usage)
    return tc, int(regs.group(1)) if regs else -1, int(stack.group(1)) if stack else -1


def _one_line(exc: BaseException) -> str:
    """Triton's CompilationError is 'at L:C:', the source, then the cause: keep the
    position and the cause."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if len(lines) < 2 else f"{lines[0]} {lines[-1]}"
    return f"{type(exc).__name__}: {text[:400]}"


def compile_variant(variant, arch: int) -> Result:
    """Runs the variant's host wrapper with the launch intercepted and compiles it."""
    with _captured_launches() as launches:
        try:
            variant.call()
        except _Captured:
            pass
        except Exception as exc:  # the wrapper itself failed before launching
            return Result(variant.kernel, variant.name, arch, "host wrapper: " + _one_line(exc))
    if len(launches) != 1:
        return Result(variant.kernel, variant.name, arch, f"expected one launch, saw {len(launches)}")
    fn, args, kwargs = launches[0]
    try:
        compiled = _compile(fn, args, kwargs, arch)
    except Exception as exc:
        return Result(variant.kernel, variant.name, arch, _one_line(exc))
    ptx = compiled.asm.get("ptx", "")
    tc, regs, stack = _inspect(compiled.asm["cubin"])
    return Result(variant.kernel, variant.name, arch, None, len(re.findall(r"\bmma\.sync\b", ptx)),
                  len(re.findall(r"\bwgmma\.mma_async\b", ptx)), tc, regs, stack)


def _work(job):

    index, arch, only = job
    return compile_variant(_chosen(variants(), only)[index], arch)


def _chosen(all_variants, only: str):
    return [v for v in all_variants if only in v.kernel or only in v.name]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vqfast.kernels.aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="90,80", help="compute capabilities, comma separated (default 90,80)")
    parser.add_argument("--only", default="", help="only variants whose kernel or name contains this text")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="compiles at once (default: CPU count)")
    args = parser.parse_args(argv)
    if interpreting():
        print("vqfast.kernels.aot: unset TRITON_INTERPRET: under the interpreter nothing is compiled", file=sys.stderr)
        return 2
    try:
        arches = [int(a) for a in args.arch.split(",") if a.strip()]
    except ValueError:
        parser.error(f"--arch must be numbers like 90,80, got {args.arch!r}")


    chosen = _chosen(variants(), args.only)
    print(f"Triton {triton.__version__}: {len(chosen)} variants x {len(arches)} arches", flush=True)
    jobs = [(i, arch, args.only) for arch in arches for i in range(len(chosen))]
    failed = 0
    # fork: the variants are closures; the parent has run no torch op, so no thread pool is copied
    with multiprocessing.get_context("fork").Pool(max(1, min(args.jobs, len(jobs)))) as pool:
        for result in pool.imap(_work, jobs):
            failed += result.error is not None
            print(result.line(), flush=True)
    print(f"{len(chosen) * len(arches) - failed} compiled, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
