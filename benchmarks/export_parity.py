"""Exported scorers against the Python path on real images: the largest relative
difference of scores and maps, and the warm time per image of each, side by side.
Reproduces the export rows of benchmarks/RESULTS.md.

    python benchmarks/export_parity.py --images DIR runs/mt_sgfr runs/mt_psnail:sample ...

Each argument is a run folder, optionally with ``:scorer`` (default: the method's first).
For each, the scorer is exported as ONNX and as a torch.export program (vqfast export),
and the first --count images of DIR (sorted) are scored as one batch and one at a time by
the Python path (the fused kernels), onnxruntime on the CPU and the torch.export program.
Relative difference: max |exported - python| / max |python|, over scores and over maps.
Times: the median of --repeats calls after two warm-up calls, per image.
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime
import torch

import vqfast
from vqfast.app.export import export
from vqfast.methods import get
from vqfast.methods.runs import read_run
from vqfast.profiling import format_table, time_callable


def _relative(got, want) -> float:
    want = np.asarray(want, dtype=np.float64)
    return float(np.abs(np.asarray(got, dtype=np.float64) - want).max() / max(np.abs(want).max(), 1e-12))


def _one(run: str, scorer: str, paths, repeats: int, folder: Path):
    detector = vqfast.load(run, scorer, threshold=None, device="cpu")
    onnx_file, torch_file = folder / f"{Path(run).name}_{scorer}.onnx", folder / f"{Path(run).name}_{scorer}.pt2"
    export(run, onnx_file, "onnx", scorer, threshold=None, echo=lambda *_: None)
    export(run, torch_file, "torch", scorer, threshold=None, echo=lambda *_: None)
    session = onnxruntime.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    program = torch.export.load(str(torch_file)).module()
    runners = {
        "python": lambda x: [t.numpy() for t in detector.scorer.score(x)],
        "onnxruntime": lambda x: session.run(None, {"images": x.numpy()}),
        "torch.export": lambda x: [t.detach().numpy() for t in program(x)],
    }
    batch = detector.preprocess(paths)
    rows, timings = [], []
    with torch.no_grad():
        want = runners["python"](batch)
        for name in ("onnxruntime", "torch.export"):
            got = runners[name](batch)
            rows.append((run, scorer, name, _relative(got[0], want[0]), _relative(got[1], want[1])))
        for size in (1, len(paths)):
            x = batch[:size]
            for name, fn in runners.items():
                t = time_callable(lambda: fn(x), name=f"{Path(run).name} {scorer} {name} batch {size}",
                                  repeats=repeats)
                timings.append((t, size))
    sizes = {p.suffix: p.stat().st_size / 2**20 for p in (onnx_file, torch_file)}
    return rows, timings, sizes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN[:SCORER]")
    p.add_argument("--images", required=True, help="a folder of images (the first --count, sorted)")
    p.add_argument("--count", type=int, default=7)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    paths = sorted(q for q in Path(args.images).iterdir() if q.suffix.lower() in (".jpg", ".png"))[:args.count]
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.runs:
            run, _, scorer = spec.partition(":")
            scorer = scorer or get(read_run(run)["method"]).scorers[0].name
            rows, timings, sizes = _one(run, scorer, paths, args.repeats, Path(tmp))
            for row in rows:
                print(f"{row[0]} {row[1]} {row[2]}: scores rel {row[3]:.2e}, maps rel {row[4]:.2e} "
                      f"({len(paths)} images of {args.images})")
            print(f"  files: onnx {sizes['.onnx']:.1f} MiB, pt2 {sizes['.pt2']:.1f} MiB")
            print(format_table([t for t, _ in timings], title=f"{run} {scorer}: warm, per call"))
            for t, size in timings:
                print(f"  {t.name}: {t.median_s * 1000 / size:.2f} ms an image")


if __name__ == "__main__":
    main()
