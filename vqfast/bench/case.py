"""The one Case protocol of ``vqfast bench``: a shape of an op with its providers (the
reference, plain-torch baselines and every backend runnable on the device), timed side by
side and printed as one table with ratios to the baselines."""

import json
import warnings
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional

import torch

from vqfast.ops._dispatch import resolve_backend, triton_interpret
from vqfast.profiling import Timing, format_table, peak_extra_memory, synchronize, time_callable


@dataclass(frozen=True)
class OpCase:
    """One shape of one op. Subclasses give ``op``, ``title``, ``inputs(device)`` (the
    providers' arguments, from a fixed seed) and ``baseline_providers(device)``; the
    vqfast backends come from the dispatch rule."""

    label: str

    op = ""  # class attributes, not fields: a case's record holds its shape only
    warmup = 2
    baselines = ()  # the providers the table's ratios are to

    @property
    def title(self) -> str:
        raise NotImplementedError

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


def benchmark_params(cases, device: torch.device) -> list:
    """pytest parameters (case, provider) of every provider of every case, for a
    benchmarks/bench_<op>.py script."""
    import pytest  # only the pytest-benchmark scripts call this: pytest is a test tool

    return [pytest.param(case, name, id=f"{case.title.split('(')[0].strip().replace(' ', '-')}-{name}")
            for case in cases for name in case.providers(device)]


def benchmark_case(benchmark, case: OpCase, provider: str, device: torch.device, rounds: int = 5) -> None:
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
