"""The ``vqfast`` command line: ``vqfast demo`` (the main job), ``vqfast bench`` and ``vqfast info``."""

import argparse
import importlib.util
import sys

import torch

from vqfast import _ext


def _info(_args) -> int:
    print(f"vqfast {__import__('vqfast').__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"C++ extension: {'yes' if _ext.HAS_EXT else 'no: ' + _ext.EXT_ERROR}")
    if _ext.HAS_EXT:
        print(f"  CPU kernel variants here: {', '.join(_ext._C.cpu_isas())}; threads: {torch.get_num_threads()}")
    print(f"CUDA kernels: {'yes' if _ext.HAS_CUDA_EXT else 'no: ' + _ext.CUDA_EXT_ERROR}")
    print(f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"Triton: {'installed' if importlib.util.find_spec('triton') else 'not installed'}")
    for op in ("nearest_code", "omp", "restore_step", "decode_attention"):
        kernels = [b for b in ("cpu", "cuda") if _ext.has_op(op, b)]
        print(f"  {op}: native kernels {', '.join(kernels) or 'none'}; Triton and reference always")
    return 0


def _bench(args) -> int:
    from vqfast.bench import NEAREST_CODE_CASES, run_models, run_nearest_code, run_omp, run_restoration

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("vqfast bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    cases = NEAREST_CODE_CASES["quick" if args.quick else device.type]
    sections = set(args.only.split(",")) if args.only else set(BENCH_SECTIONS)
    unknown = sections - set(BENCH_SECTIONS)
    if unknown:
        print(f"vqfast bench: --only takes {','.join(BENCH_SECTIONS)}, got {','.join(sorted(unknown))}", file=sys.stderr)
        return 2
    _info(args)
    print()
    if "nearest_code" in sections:
        run_nearest_code(device, cases, repeats=args.repeats, max_time_s=args.max_time, memory=args.memory,
                         json_path=args.json, trace_dir=args.trace)
    if "omp" in sections:
        run_omp(device, quick=args.quick, repeats=min(args.repeats, 5), max_time_s=args.max_time * 4)
    if "restoration" in sections:
        run_restoration(device, quick=args.quick, repeats=min(args.repeats, 3))
    if "models" in sections:
        run_models(device, quick=args.quick, repeats=min(args.repeats, 5))
    return 0


BENCH_SECTIONS = ("nearest_code", "omp", "restoration", "models")


def _demo(args) -> int:
    from vqfast.demo import run_demo

    run_demo(args.out, epochs=args.epochs, seed=args.seed, resume=args.resume, prior_epochs=args.prior_epochs,
             overwrite=args.overwrite)
    return 0


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="vqfast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="train, score and evaluate on the embedded procedural dataset")
    demo.add_argument("--out", default="vqfast-demo", help="folder for checkpoints, logs and results")
    demo.add_argument("--epochs", type=_positive_int, default=20)
    demo.add_argument("--prior-epochs", type=_positive_int, default=15,
                      help="epochs of the GPT-2 prior on the token grids")
    demo.add_argument("--seed", type=int, default=0)
    mode = demo.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    demo.set_defaults(func=_demo)
    bench = sub.add_parser("bench", help="time every available backend of every op against plain-torch baselines")
    bench.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    bench.add_argument("--quick", action="store_true", help="small shapes (a smoke test, seconds)")
    bench.add_argument("--repeats", type=int, default=10, help="timed calls per provider (after 2 warm-up calls)")
    bench.add_argument("--max-time", type=float, default=5.0, help="stop repeating a provider after this many seconds")
    bench.add_argument("--memory", action="store_true", help="also measure each provider's peak extra memory")
    bench.add_argument("--json", metavar="PATH", help="append each case's results to PATH as JSON lines")
    bench.add_argument("--trace", metavar="DIR", help="write a torch.profiler trace of vqfast's auto path per case")
    bench.add_argument("--only", metavar="SECTIONS", help="comma-separated subset of " + ",".join(BENCH_SECTIONS))
    bench.set_defaults(func=_bench)
    info = sub.add_parser("info", help="what this installation can run")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    from vqfast.checkpoint import CheckpointError
    from vqfast.data import DatasetError
    from vqfast.training import RunExistsError

    try:
        return args.func(args)
    except (CheckpointError, DatasetError, RunExistsError) as exc:  # the user's files: a message, not a traceback
        print(f"vqfast {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
