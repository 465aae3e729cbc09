"""The vqfast command line. vqfast train trains a method on a folder of defect-free
images, vqfast score scores a folder with a trained run, vqfast report draws the results;
vqfast predict scores single images; vqfast export writes a run's scorer as an ONNX or
torch.export graph; vqfast demo runs everything on built-in data; vqfast bench times the kernels; vqfast info
says what this installation can run. Every command takes --help."""

import argparse
import importlib.util
import json
import sys

import torch

from vqfast import _ext, bench, methods
from vqfast.allocator import allocator_status, tune_cpu_allocator
from vqfast.app import distributed
from vqfast.app.data import FORMATS
from vqfast.app.methods import train
from vqfast.app.ownership import OutputError
from vqfast.app.compare import compare
from vqfast.app.export import FORMATS as EXPORT_FORMATS, export
from vqfast.app.predict import load
from vqfast.app.report import report
from vqfast.app.score import score
from vqfast.checkpoint import CheckpointError
from vqfast.cli_args import (UsageError, apply_config, key_value, need, number, percentile, positive_float,
                             positive_int, SetAction)
from vqfast.models.backbones import NAMES as BACKBONES, default_weights_file
from vqfast.data import DatasetError
from vqfast.demo import run_demo
from vqfast.methods import RunError
from vqfast.training import RunExistsError


def _info(_args) -> int:
    print(f"vqfast {__import__('vqfast').__version__}, torch {torch.__version__} (CUDA {torch.version.cuda})")
    print(f"C++ extension: {'yes' if _ext.HAS_EXT else 'no: ' + _ext.EXT_ERROR}")
    if _ext.HAS_EXT:
        print(f"  CPU kernel variants here: {', '.join(_ext._C.cpu_isas())}; threads: {torch.get_num_threads()}")
        picks = {(d, k): _ext._C.nearest_code_cpu_isa(d, k) for d in (16, 32, 64) for k in (1, 4)}
        print("  nearest_code runs: " + ", ".join(f"{isa} for D={d} k={k}" for (d, k), isa in picks.items()))
    print(f"CUDA kernels: {'yes' if _ext.HAS_CUDA_EXT else 'no: ' + _ext.CUDA_EXT_ERROR}")
    print(f"CUDA device: {torch.cuda.get_device_name() if torch.cuda.is_available() else 'none'}")
    print(f"Triton: {'installed' if importlib.util.find_spec('triton') else 'not installed'}")
    for op in ("nearest_code", "omp", "restore_step", "decode_attention"):
        kernels = [b for b in ("cpu", "cuda") if _ext.has_op(op, b)]
        print(f"  {op}: native kernels {', '.join(kernels) or 'none'}; Triton and reference always")
    onnx = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript"))
    print(f"Export: torch.export yes; ONNX {'yes' if onnx else 'no (pip install vqfast[export])'}")
    print(f"CPU memory allocator: {allocator_status()}")
    found = {name: default_weights_file(name) for name in BACKBONES}
    print("Backbone weights: " + "; ".join(f"{name} {'from ' + str(path) if path else 'none (random)'}"
                                          for name, path in found.items()))
    return 0


def _bench(args) -> int:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("vqfast bench: --device cuda but torch sees no CUDA device", file=sys.stderr)
        return 2
    sections = args.only.split(",") if args.only else list(bench.SECTIONS)
    unknown = set(sections) - set(bench.SECTIONS)
    if unknown:
        print(f"vqfast bench: --only takes {','.join(bench.SECTIONS)}, got {','.join(sorted(unknown))}", file=sys.stderr)
        return 2
    _info(args)
    print()
    bench.run(device, sections, bench.BenchOptions(quick=args.quick, repeats=args.repeats, max_time_s=args.max_time,
                                                   memory=args.memory, json_path=args.json, trace_dir=args.trace))
    return 0


def _demo(args) -> int:
    run_demo(args.out, epochs=args.epochs, seed=args.seed, resume=args.resume, prior_epochs=args.prior_epochs,
             overwrite=args.overwrite)
    return 0


def _settings(args) -> dict:
    given = dict(args.settings or {})
    for key in ("size", "channels", "epochs", "minutes", "batch_size", "lr", "seed", "vq"):
        if getattr(args, key, None) is not None:
            given[key] = getattr(args, key)
    return given


def _train(args) -> int:
    need(args, "data", "out")
    distributed.init()
    device = args.device if args.device != "auto" else None
    train(args.method, args.data, args.format, args.out, _settings(args), category=args.category,
          resume=args.resume, overwrite=args.overwrite, skip_bad=args.skip_bad, device=device)
    if distributed.rank_world()[0] == 0:
        print(f"run written to {args.out}; score with: vqfast score SCORER --run {args.out} --data PATH --out DIR")
    distributed.close()
    return 0


def _score(args) -> int:
    need(args, "run", "data", "out")
    if args.stride is not None and args.tile is None:
        raise UsageError("--stride needs --tile")
    distributed.init()
    threshold = args.threshold if args.threshold == "auto" else number("--threshold", args.threshold)
    score(args.scorer, args.run, args.data, args.format, args.out, category=args.category, split=args.split,
          threshold=threshold, percentile=args.percentile, restorations=args.restorations,
          decode_precision=args.decode_precision, prior_precision=args.prior_precision, marker=args.marker,
          passes=args.passes, dropout_decodes=args.dropout_decodes, resume=args.resume,
          skip_bad=args.skip_bad, batch_size=args.batch_size, maps=not args.no_maps, map_format=args.maps,
          device=args.device if args.device != "auto" else None, tile=args.tile, stride=args.stride)
    distributed.close()
    return 0


def _threshold(text: str):
    """--threshold of predict and export: "auto", "none" (None) or a finite number."""
    return {"auto": "auto", "none": None}[text] if text in ("auto", "none") else number("--threshold", text)


def _predict(args) -> int:
    detector = load(args.run, args.scorer, threshold=_threshold(args.threshold),
                    device=args.device if args.device != "auto" else None)
    for path in args.paths:
        result = detector.predict(path, tile=args.tile, stride=args.stride)
        print(json.dumps({"path": str(path), "score": result["score"], "decision": result["decision"],
                          "threshold": result["threshold"]}), flush=True)
    return 0


def _export(args) -> int:
    need(args, "run", "out")
    export(args.run, args.out, args.format, args.scorer, threshold=_threshold(args.threshold),
           overwrite=args.overwrite)
    return 0


def _report(args) -> int:
    need(args, "scores")
    if len(args.scores) > 1 or args.out:
        need(args, "out")
        compare(args.scores, args.out, max_images=args.max_images)
        return 0
    report(args.scores[0], max_overlays=args.max_overlays)
    return 0


def _config_and_debug(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="a TOML or YAML file of these options (flags win)")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="the folder of images")
    p.add_argument("--format", choices=FORMATS, default="folder",
                   help="its layout: mvtec (an MVTec-AD root, with --category), mtd (Magnetic Tile with its "
                        "split.json), folder (images, or sub-folders good/ and defect classes), frames "
                        "(video sequences with labels.txt); default folder")
    p.add_argument("--category", help="the MVTec-AD object, e.g. bottle")
    p.add_argument("--out", help="the folder to write into")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images (counted) instead of stopping")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="default: cuda when available")
    _config_and_debug(p)


def _add_train(sub) -> argparse.ArgumentParser:
    lines = "\n".join(f"  {m.name}: {m.help}\n    settings: " + "; ".join(m.settings.describe(own=True))
                      for m in map(methods.get, methods.names()))
    p = sub.add_parser("train", help="train a method on a folder of defect-free images",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train METHOD on the defect-free images of --data into the run folder --out "
                                   "(config, checkpoints, metrics.jsonl and what vqfast score needs). Defaults "
                                   "are the papers', scaled down where a paper's size does not fit a CPU (said "
                                   "below).\n\nmethods:\n" + lines + "\n\nMethod settings (the names in "
                                   "run.json) are changed with --set KEY=VALUE or a --config file.")
    p.add_argument("method", choices=methods.names(), help="what to train")
    _common(p)
    p.add_argument("--size", type=positive_int, help="image side in pixels (default: the method's)")
    p.add_argument("--channels", type=positive_int, help="1 for grey, 3 for colour (default: the method's)")
    p.add_argument("--epochs", type=positive_int, help="most epochs to train")
    p.add_argument("--minutes", type=positive_float, help="training time budget in minutes")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--lr", type=positive_float, help="learning rate")
    p.add_argument("--seed", type=int)
    p.add_argument("--vq", metavar="RUN", help="priors: the vqvae or vqgan run whose token grids they model")
    p.add_argument("--set", dest="settings", metavar="KEY=VALUE", type=key_value, action=SetAction,
                   help="a method setting, e.g. --set codes=512 (repeatable)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.set_defaults(func=_train)
    return p


def _add_score(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("score", help="score a folder with a trained run, one record per image",
                       description="Score the images of --data with SCORER of the run in --run. Writes "
                                   "scores.csv and scores.jsonl (path, score, label if known, decision) as it "
                                   "goes, anomaly maps in maps/ (.npy or .png), and summary.json with metrics when labels "
                                   "exist. Image size and preprocessing come from the run.")
    offers = "; ".join(f"{name}: {', '.join(s.name for s in methods.get(name).scorers)}" for name in methods.names())
    p.add_argument("scorer", help=f"what the run's method offers (the first is its default): {offers}")
    p.add_argument("--run", "--run-dir", dest="run",
                   help="the run folder vqfast train wrote (under torchrun write --run-dir: torchrun takes --run "
                        "for its own --run-path)")
    _common(p)
    p.add_argument("--split", choices=["test", "train"], default="test", help="mvtec / mtd: which split")
    p.add_argument("--threshold", default="auto",
                   help="the score at or above which an image is flagged: a number, or auto (best F1 on "
                        "labelled validation images; else the 99th percentile of the run's held-out "
                        "defect-free images' scores)")
    p.add_argument("--percentile", type=percentile,
                   help="prior scorers: the percentile of the validation NLLs that sets the token threshold "
                        "(default: the paper's for this VQ model and prior)")
    p.add_argument("--restorations", type=positive_int,
                   help="restoration scorers: samples per image (default 5; kde on a run trained with --set "
                        "preset=paper: the Performer paper's 20)")
    p.add_argument("--dropout-decodes", type=positive_int,
                   help="kde: decodes per restoration with the VQ decoder's dropout on (default 1, none; on a "
                        "preset=paper run the paper's 20: 400 decodes an image)")
    p.add_argument("--decode-precision", choices=["float32", "bfloat16"], default="float32",
                   help="regenerative and restoration scorers: decode the VQ tokens in bfloat16 (about 3x faster "
                        "on CPUs with AMX or AVX512-BF16; pixels within ~1e-3 of float32's; the "
                        "tokens themselves never change)")
    p.add_argument("--prior-precision", choices=["float32", "bfloat16"], default="float32",
                   help="prior scorers: run the token prior (and --marker) in bfloat16, thresholds included "
                        "(on a CPU with AMX: transformer priors' forwards ~2x faster, PixelSNAIL and the "
                        "sequential Pixel-wise pass slower; NLLs move by ~1e-2, so tokens near the threshold can "
                        "be judged the other way: scores close to float32's, not equal)")
    p.add_argument("--marker", metavar="RUN",
                   help="masked-sample / masked-restore: a gpt2, performer or pixelsnail run on the same VQ model "
                        "whose NLLs mark the unusual tokens (one causal forward; default: the masked prior's "
                        "neighbourhood NLLs, 4 forwards)")
    p.add_argument("--passes", type=positive_int,
                   help="masked-restore: in-painting passes (default: the masked run's passes setting; 1 is the "
                        "fastest: every unusual token drawn from one forward)")
    p.add_argument("--batch-size", type=positive_int, default=8)
    p.add_argument("--maps", choices=["npy", "png", "tiff"], default="npy",
                   help="how anomaly maps are saved: npy (float32 arrays), png (16-bit grayscale images that "
                        "any viewer opens; each record's map_range gives the values their 0..65535 span) or tiff "
                        "(float32 at each image's resolution in MVTec's layout, maps/<category>/<split>/<defect>/"
                        "<id>.tiff, which MVTec's evaluation script reads)")
    p.add_argument("--tile", type=positive_int, help="score every image by tile x tile crops at its own "
                   "resolution, the maps stitched (for large images with small defects)")
    p.add_argument("--stride", type=positive_int, help="--tile: pixels between tiles (default: half a tile)")
    p.add_argument("--no-maps", action="store_true", help="do not save anomaly maps")
    p.set_defaults(func=_score)
    return p


def _add_predict(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("predict", help="score single images with a trained run, one JSON line each",
                       description="Load the run once and print, per image, one JSON line: path, score, decision "
                                   "(1: at or above the threshold) and threshold. The run's preprocessing and "
                                   "scorer; the same values as vqfast score's.")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files")
    p.add_argument("--run", "--run-dir", dest="run", required=True, help="the run folder vqfast train wrote")
    p.add_argument("--scorer", help="one the run's method offers (default: its first)")
    p.add_argument("--threshold", default="auto",
                   help="auto (vqfast score's rule over the run's held-out images), a number, or none")
    p.add_argument("--tile", type=positive_int, help="score by tile x tile crops of the image at its own "
                   "resolution, the maps stitched (for large images with small defects)")
    p.add_argument("--stride", type=positive_int, help="--tile: pixels between tiles (default: half a tile)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    p.set_defaults(func=_predict)
    return p


def _add_export(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("export", help="a run's scorer as one ONNX or torch.export file",
                       description="Write the scorer of --run as a fixed graph: input images (B, C, H, W) float32 "
                                   "as vqfast.load(run).preprocess gives them, outputs score (B,) and map "
                                   "(B, H, W), vqfast score's values. Regenerative, sample, DSR, feature-ae and "
                                   "SGFR export; the restoration scorers (pixel, light, kde, masked-restore) "
                                   "sample token by token and do not.")
    p.add_argument("--run", "--run-dir", dest="run", help="the run folder vqfast train wrote")
    p.add_argument("--scorer", help="one the run's method offers (default: its first)")
    p.add_argument("--format", choices=EXPORT_FORMATS, default="onnx",
                   help="onnx (any ONNX runtime; needs vqfast[export]) or torch (torch.export, a .pt2 file)")
    p.add_argument("--out", help="the file to write (.onnx, or .pt2 for --format torch)")
    p.add_argument("--threshold", default="auto",
                   help="recorded in the file's metadata: auto (vqfast score's rule over the run's held-out "
                        "images), a number, or none")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    _config_and_debug(p)
    p.set_defaults(func=_export)
    return p


def _add_report(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="metrics, curves and overlays of a score folder, in one index.html",
                       description="Write metrics.json (with per-defect-class metrics where the data names "
                                   "classes), ROC and PR curves, per-image overlays (image, heat map, "
                                   "ground-truth and predicted contours) and index.html into the --scores "
                                   "folder of vqfast score; or, given several --scores and --out, one page "
                                   "comparing them.")
    p.add_argument("--scores", nargs="+", metavar="FOLDER",
                   help="the --out folder of vqfast score; several, with --out: one page comparing them")
    p.add_argument("--out", help="several --scores: the folder of the comparison page (a table of scorers x "
                                 "metrics and ms per image, ROC and PR curves overlaid, the same images' maps "
                                 "side by side)")
    p.add_argument("--max-overlays", type=positive_int, default=48, help="overlays of the highest-scored images")
    p.add_argument("--max-images", type=positive_int, default=8,
                   help="comparison: images shown side by side (half defective where labels exist)")
    _config_and_debug(p)
    p.set_defaults(func=_report)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_cpu_allocator()  # this process runs vqfast's jobs: see vqfast.allocator
    parser = argparse.ArgumentParser(prog="vqfast", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vqfast {__import__('vqfast').__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    subs = {"train": _add_train(sub), "score": _add_score(sub), "predict": _add_predict(sub),
            "export": _add_export(sub), "report": _add_report(sub)}
    demo = sub.add_parser("demo", help="train, score and evaluate on the embedded procedural dataset")
    demo.add_argument("--out", default="vqfast-demo", help="folder for checkpoints, logs and results")
    demo.add_argument("--epochs", type=positive_int, default=20)
    demo.add_argument("--prior-epochs", type=positive_int, default=15,
                      help="epochs of the GPT-2 prior on the token grids")
    demo.add_argument("--seed", type=int, default=0)
    mode = demo.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    mode.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    demo.set_defaults(func=_demo)
    timing = sub.add_parser("bench", help="time every available backend of every op against plain-torch baselines")
    timing.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    timing.add_argument("--quick", action="store_true", help="small shapes (a smoke test, seconds)")
    timing.add_argument("--repeats", type=int, default=10, help="timed calls per provider (after 2 warm-up calls)")
    timing.add_argument("--max-time", type=float, default=5.0, help="stop repeating a provider after this many seconds")
    timing.add_argument("--memory", action="store_true", help="also measure each provider's peak extra memory")
    timing.add_argument("--json", metavar="PATH", help="append each case's results to PATH as JSON lines")
    timing.add_argument("--trace", metavar="DIR", help="write a torch.profiler trace of vqfast's auto path per case")
    timing.add_argument("--only", metavar="SECTIONS", help="comma-separated subset of " + ",".join(bench.SECTIONS))
    timing.set_defaults(func=_bench)
    info = sub.add_parser("info", help="what this installation can run")
    info.set_defaults(func=_info)
    args = parser.parse_args(argv)
    try:
        if getattr(args, "config", None):
            args = apply_config(args, subs[args.command], argv)
        return args.func(args)
    except (CheckpointError, DatasetError, FloatingPointError, OutputError, RunExistsError, RunError, UsageError) as exc:
        # the user's files and flags: one line saying what is wrong, not a traceback
        if getattr(args, "debug", False):
            raise
        print(f"vqfast {args.command}: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only or full disks, a folder where a file goes: named with the path
        if getattr(args, "debug", False):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"vqfast {args.command}: {where}{exc.strerror or exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
