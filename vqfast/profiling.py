"""Timing harness shared by every op, model and scorer benchmark.

    t = time_callable(lambda: model(x), device=x.device, name="decode")
    print(format_table([t1, t2], baseline="reference"))

Times are wall clock around the call with the device synchronised before and after,
after warm-up runs; the median and the interquartile range of the repeats are
reported. ``trace`` writes a torch.profiler Chrome trace of a few calls.
"""

import ctypes
import ctypes.util
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional

import torch


@dataclass
class Timing:
    name: str
    median_s: float
    q1_s: float
    q3_s: float
    min_s: float
    repeats: int
    peak_extra_bytes: Optional[int] = None  # memory the call needed beyond its inputs

    @property
    def spread(self) -> float:
        """Interquartile range relative to the median."""
        return (self.q3_s - self.q1_s) / self.median_s if self.median_s > 0 else 0.0


def synchronize(device) -> None:
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def time_callable(
    fn: Callable[[], object],
    *,
    name: str = "",
    device=None,
    warmup: int = 2,
    repeats: int = 10,
    max_time_s: Optional[float] = None,
) -> Timing:
    """Median wall time of ``fn()`` over ``repeats`` calls after ``warmup`` calls.

    ``max_time_s`` stops repeating once that much time was spent (keeping at least
    three repeats), so slow reference paths can sit in the same table.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    spent = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
        spent += times[-1]
        if max_time_s is not None and spent > max_time_s and len(times) >= 3:
            break
    if len(times) >= 2:
        q1, _, q3 = statistics.quantiles(times, n=4, method="inclusive")
    else:
        q1 = q3 = times[0]
    return Timing(name, statistics.median(times), q1, q3, min(times), len(times))


def time_stages(stages: Dict[str, Callable[[], object]], device, repeats: int = 5, warmup: int = 2) -> List[Timing]:
    """One Timing a named stage, in order: a model's or scorer's ``profile()`` table."""
    return [time_callable(fn, name=name, device=device, repeats=repeats, warmup=warmup) for name, fn in stages.items()]


def minor_page_faults() -> int:
    """Minor page faults of this process so far (Unix): pages the kernel mapped in on first
    touch, e.g. of a block malloc took fresh from the OS. Differences around a call count
    the call's."""
    import resource  # Unix only: imported where asked for

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _rss_field(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    raise OSError(f"{field} missing from /proc/self/status")


def peak_extra_memory(fn: Callable[[], object], device) -> Optional[int]:
    """Bytes of memory ``fn()`` held at its peak beyond what was in use before.

    CUDA: the caching allocator's peak. CPU (Linux): the rise of the resident set's
    high-water mark, reset first through /proc/self/clear_refs, after returning
    free heap pages to the OS so that reusing them counts. Call after warm-up: lazy
    one-time initialisation would count otherwise. None where unsupported.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        before = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.malloc_trim(0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current VmRSS (Linux >= 4.0)
        before = _rss_field("VmRSS:")
    except (OSError, AttributeError):
        return None
    fn()
    return _rss_field("VmHWM:") - before


def trace(fn: Callable[[], object], path: str, *, device=None, calls: int = 3) -> str:
    """Writes a torch.profiler Chrome trace of ``calls`` calls to ``path``; returns the
    profiler's table of the most expensive operators."""
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device is not None and torch.device(device).type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    fn()
    synchronize(device)
    with torch.profiler.profile(activities=activities, record_shapes=True) as prof:
        for _ in range(calls):
            fn()
        synchronize(device)
    prof.export_chrome_trace(path)
    sort = "self_cuda_time_total" if len(activities) > 1 else "self_cpu_time_total"
    return prof.key_averages().table(sort_by=sort, row_limit=12)


def _fmt_time(s: float) -> str:
    if s >= 1.0:
        return f"{s:.3f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def _fmt_bytes(b: Optional[int]) -> str:
    if b is None:
        return "-"
    return f"{b / 2**20:.1f} MiB"


def format_table(timings: Iterable[Timing], baselines: Iterable[str] = (), title: str = "") -> str:
    """A text table: one row per timing, with ``baseline_time / time`` for each
    named baseline (so > 1 means faster than that baseline)."""
    timings = list(timings)
    by_name = {t.name: t for t in timings}
    baselines = [b for b in baselines if b in by_name]
    show_mem = any(t.peak_extra_bytes is not None for t in timings)
    header = ["provider", "median", "IQR", "runs"] + (["peak extra mem"] if show_mem else [])
    header += [f"x vs {b}" for b in baselines]
    rows = []
    for t in timings:
        row = [t.name, _fmt_time(t.median_s), f"{100 * t.spread:.0f}%", str(t.repeats)]
        if show_mem:
            row.append(_fmt_bytes(t.peak_extra_bytes))
        row += [f"{by_name[b].median_s / t.median_s:.2f}" for b in baselines]
        rows.append(row)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [title] if title else []
    lines.append("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)
