"""Warm latency of one-image prediction (vqfast.load(run).predict(path)) per scorer, the
run loaded once; reproduces the predict rows of benchmarks/RESULTS.md.

    python benchmarks/predict_latency.py --image IMG runs/mt_sgfr runs/mt_vqvae runs/mt_psnail:pixel ...

Each argument is a run folder, optionally with ``:scorer`` (default: every scorer the
run's method offers). Times: the median of --repeats calls after two warm-up calls, the
whole call (reading and preprocessing the file, scoring, the map back at the file's size).
"""

import argparse

import vqfast
from vqfast.methods import get
from vqfast.methods.runs import read_run
from vqfast.profiling import format_table, time_callable


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN[:SCORER]")
    p.add_argument("--image", required=True, help="the image file every detector predicts")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    timings = []
    for spec in args.runs:
        run, _, scorer = spec.partition(":")
        names = [scorer] if scorer else [s.name for s in get(read_run(run)["method"]).scorers]
        for name in names:
            detector = vqfast.load(run, name, threshold=None)
            timings.append(time_callable(lambda: detector.predict(args.image), name=f"{run} {name}",
                                         repeats=args.repeats))
    print(format_table(timings, title=f"one-image predict, warm, {args.image}"))


if __name__ == "__main__":
    main()
