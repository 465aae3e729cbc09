"""The one Case protocol of ``vqfast bench``: a shape of an op with its providers (the
reference, plain-torch baselines and every backend runnable on the device), timed side by
side and printed as one table with ratios to the baselines."""

import importlib
import json
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch

from vqfast.ops._dispatch import resolve_backend, triton_interpret
from vqfast.profiling import Timing, format_table, peak_extra_memory, synchronize, time_callable


@dataclass(frozen=True)
class OpCase:
    """One shape of one op. Subclasses give ``op``, ``shape``, ``dtype``, ``inputs(device)`` (the
    providers' arguments, from a fixed seed) and ``baseline_providers(device)``; the
    vqfast backends come from the dispatch rule."""

    label: str

    op = ""  # class attributes, not fields: a case's record holds its shape only
    warmup = 2
    baselines = ()  # the providers the table's ratios are to

    @property
    def title(self) -> str:
        return f"{self.op}  {self.shape} {self.dtype}  ({self.label})"

    sizes = ()  # (letter, field) pairs the title shows, e.g. (("N", "n"), ("D", "d"))

    @property
    def shape(self) -> str:
        return " ".join(f"{letter}={getattr(self, name)}" for letter, name in self.sizes)

    def inputs(self, device) -> tuple:
        raise NotImplementedError

    def baseline_providers(self, device) -> Dict[str, Callable]:
        """name -> fn(*inputs): the reference and the plain-torch ways."""
        raise NotImplementedError

    def call(self, backend: str) -> Callable:
        """fn(*inputs) running the op on ``backend``."""
        raise NotImplementedError

    def where(self, device) -> str:
        return str(device)

    def providers(self, device) -> Dict[str, Callable]:
        """Every provider runnable on ``device``; the Triton interpreter is left out (it
        checks correctness; timing it means nothing)."""
        out = self.baseline_providers(device)
        for backend in ("cpu", "cuda", "triton"):
            try:
                resolve_backend(self.op, backend, device)
            except RuntimeError:
                continue
            if backend == "triton" and device.type == "cpu" and triton_interpret():
                continue
            out[f"vqfast {backend}"] = self.call(backend)
        return out


def run_cases(cases, device: torch.device, *, repeats: int = 10, max_time_s: Optional[float] = 5.0,
              memory: bool = False, json_path: Optional[str] = None,
              echo: Callable[[str], None] = print) -> List[dict]:
    """Times every provider of every case and prints one table per case; with
    ``json_path`` each case's results are appended (JSON lines) as soon as it ends."""
    results = []
    for case in cases:
        args = case.inputs(device)
        timings: List[Timing] = []
        for name, fn in case.providers(device).items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. the reference's fallback warning on CUDA
                t = time_callable(lambda: fn(*args), name=name, device=device, warmup=case.warmup, repeats=repeats,
                                  max_time_s=max_time_s)
                if memory:
                    t.peak_extra_bytes = peak_extra_memory(lambda: fn(*args), device)
            timings.append(t)
        echo(format_table(timings, case.baselines, title=f"{case.title} on {case.where(device)}") + "\n")
        record = {"op": case.op, "device": str(device), **asdict(case), "timings": [asdict(t) for t in timings]}
        results.append(record)
        if json_path:
            with open(json_path, "a") as f:
                f.write(json.dumps(record) + "\n")
    return results


def benchmark_suite(op: str, cases=None):
    """A pytest-benchmark test of every provider of every case of ``vqfast.bench.<op>``
    (default: its "full" cases, nearest_code's for the device), on CUDA when present;
    a benchmarks/bench_<op>.py script assigns it to a ``test_<op>`` name."""
    import pytest  # deferred on purpose: only the benchmark scripts need pytest

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cases is None:
        table = importlib.import_module(f"vqfast.bench.{op}").CASES
        cases = table.get("full", table.get(device.type))
    params = [pytest.param(case, name, id=f"{case.title.split('(')[0].strip().replace(' ', '-')}-{name}")
              for case in cases for name in case.providers(device)]

    @pytest.mark.parametrize("case,provider", params)
    def test(benchmark, case, provider):
        _benchmark_case(benchmark, case, provider, device)
    return test


def _benchmark_case(benchmark, case: OpCase, provider: str, device: torch.device, rounds: int = 5) -> None:
    """Times one provider of ``case`` under pytest-benchmark, in the case's table group."""
    args = case.inputs(device)
    fn = case.providers(device)[provider]

    def call():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn(*args)
        synchronize(device)

    benchmark.group = case.title
    benchmark.extra_info.update(device=str(device), provider=provider)
    slow = provider == "reference" and case.op == "omp"  # a least-squares solve per atom per target
    benchmark.pedantic(call, rounds=1 if slow else rounds, warmup_rounds=0 if slow else 1)
