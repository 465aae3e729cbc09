"""``vqfast bench``: every available backend of every op side by side with its reference
and the plain-torch baselines (one module per op, on the Case protocol of case.py), then
the restoration pass, the token scorers and the models' stage timings.

benchmarks/bench_<op>.py runs the same cases and providers under pytest-benchmark.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional

import torch

from vqfast.bench import code_at_rank, decode_attention, models, nearest_code, omp, restoration, restore_step, scorers


@dataclass(frozen=True)
class BenchOptions:
    quick: bool = False  # the smoke-test shapes (seconds)
    repeats: int = 10  # timed calls a provider (after warm-up calls)
    max_time_s: float = 5.0  # stop repeating a provider after this long
    memory: bool = False  # nearest_code: each provider's peak extra memory
    json_path: Optional[str] = None  # nearest_code: each case's results appended as JSON lines
    trace_dir: Optional[str] = None  # nearest_code: a torch.profiler trace of the auto path per case


# name -> run(device, options), in the order vqfast bench runs them; the slow reference
# paths get fewer repeats and (OMP) more time.
SECTIONS: Dict[str, Callable[[torch.device, BenchOptions], object]] = {
    "nearest_code": lambda d, o: nearest_code.run(d, o.quick, repeats=o.repeats, max_time_s=o.max_time_s,
                                                  memory=o.memory, json_path=o.json_path, trace_dir=o.trace_dir),
    "omp": lambda d, o: omp.run(d, o.quick, repeats=min(o.repeats, 5), max_time_s=o.max_time_s * 4),
    "restore_step": lambda d, o: restore_step.run(d, o.quick, repeats=o.repeats, max_time_s=o.max_time_s),
    "decode_attention": lambda d, o: decode_attention.run(d, o.quick, repeats=o.repeats, max_time_s=o.max_time_s),
    "code_at_rank": lambda d, o: code_at_rank.run(d, o.quick, repeats=o.repeats, max_time_s=o.max_time_s),
    "restoration": lambda d, o: restoration.run(d, o.quick, repeats=min(o.repeats, 3)),
    "scorers": lambda d, o: scorers.run(d, o.quick),
    "models": lambda d, o: models.run(d, o.quick, repeats=min(o.repeats, 5)),
}


def run(device: torch.device, sections: Iterable[str] = tuple(SECTIONS), options: BenchOptions = BenchOptions()):
    """Runs ``sections`` (names of SECTIONS) in SECTIONS' order."""
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        raise ValueError(f"unknown bench sections {', '.join(sorted(unknown))} (there are: {', '.join(SECTIONS)})")
    for name, section in SECTIONS.items():
        if name in sections:
            section(device, options)
