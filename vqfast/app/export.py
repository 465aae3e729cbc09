"""``vqfast export``: a run's scorer as one fixed graph, for ONNX runtimes or ``torch.export``.

The file takes what ``Detector.preprocess`` returns, images (B, C, H, W) float32 (B free,
C, H, W the run's), and gives score (B,) float32 then map (B, H, W) float32: the values
``vqfast score`` writes for the same images, to float rounding. The custom ops become
standard operators while exporting (``vqfast.ops.lowered``: nearest code as a matmul and
argmin, OMP unrolled for its fixed number of atoms); scoring in Python keeps the fused
kernels. SGFR's fitted memory bank and its Gram matrices are constants of the graph.

The file says what it is: ONNX metadata_props, or the ``vqfast.json`` extra file of a
``.pt2``, hold {"run", "scorer", "input": [C, H, W], "outputs", "threshold"}.

The restoration scorers and masked-sample are not exported: ``NOT_EXPORTED`` says why.
"""

import contextlib
import io
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Dict, Optional

import torch

from vqfast.app.predict import Detector, load
from vqfast.methods import RunError, registry
from vqfast.methods.runs import read_run

FORMATS = ("onnx", "torch")

_RESTORATION = ("{name} restores each image by sampling tokens one after another from the prior, each draw "
                "conditioned on the ones before and on random numbers, for as many steps as the image has "
                "unlikely tokens: a loop whose length depends on the data, not a fixed graph. What is fixed, "
                "and exported, is the step it repeats: the VQ encoding and the prior's likelihoods over a grid, "
                "which is the sample scorer of the same run (vqfast export --scorer sample)")
NOT_EXPORTED = {name: _RESTORATION.format(name=name) for name in ("pixel", "light", "kde", "masked-restore")}
NOT_EXPORTED["masked-sample"] = (
    "masked-sample runs its second pass only at the tokens its first pass marks unusual, as many as each "
    "image has: a shape that depends on the data, not a fixed graph. The sample scorer of a gpt2, pixelsnail "
    "or performer run on the same VQ model exports")


class ScoreGraph(torch.nn.Module):
    """A scorer as a module: forward(images (B, C, H, W) float32) -> (score (B,) float32,
    map (B, H, W) float32). The scorer's modules are registered here, so their weights are
    the graph's parameters; its tensors (SGFR's bank) become constants."""

    def __init__(self, scorer):
        super().__init__()
        self.scorer = scorer
        for name, value in vars(scorer).items():
            if isinstance(value, torch.nn.Module):
                self.add_module(name, value)

    def forward(self, images: torch.Tensor):
        out = self.scorer.score(images)
        return out.pred_score.float(), out.anomaly_map.float()


def _metadata(detector: Detector, scorer_name: str, run) -> Dict:
    """What the file says it is (written as JSON into it)."""
    t = detector.transform
    size = (t.size, t.size) if isinstance(t.size, int) else tuple(t.size)
    return {"run": str(Path(run).resolve()), "scorer": scorer_name, "input": [t.channels, *size],
            "outputs": ["score (B,)", "map (B, H, W)"], "threshold": detector.threshold}


def export(run, out, fmt: str = "onnx", scorer: Optional[str] = None, *, threshold="auto",
           overwrite: bool = False, echo=print) -> Dict:
    """Writes the run's scorer (default: the method's first) to ``out`` as ``fmt``
    ("onnx" or "torch", a ``torch.export`` .pt2); returns the metadata. ``threshold``: as
    vqfast.load's, recorded in the file. ``out`` is written atomically and never replaces
    an existing file unless ``overwrite``."""
    if fmt not in FORMATS:
        raise RunError(f"--format takes {' or '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    if fmt == "torch" and out.suffix != ".pt2":
        raise RunError(f"--out {out}: a torch.export file's name ends in .pt2 (torch.export.load reads no other)")
    if out.is_dir():
        raise RunError(f"{out} is a folder: --out names the file to write")
    if out.exists() and not overwrite:
        raise RunError(f"{out} exists: export to another --out, or pass --overwrite to replace it")
    record = read_run(run)
    name = scorer or registry.get(record["method"]).scorers[0].name
    if name in NOT_EXPORTED:
        raise RunError(f"the {name} scorer is not exported: {NOT_EXPORTED[name]}")
    if threshold == "auto" and not record.get("val_images"):  # the file's threshold is metadata, not a need
        echo(f"{run} holds no validation images (trained on every image): the file records no threshold "
             "(pass --threshold VALUE to record one)")
        threshold = None
    detector = load(run, name, threshold=threshold, device="cpu")
    meta = _metadata(detector, name, run)
    text = json.dumps(meta)
    graph = ScoreGraph(detector.scorer).eval()
    example = detector.preprocess(torch.rand(2, *meta["input"]))
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp" + out.suffix)
    except OSError as exc:
        raise RunError(f"--out {out}: cannot write there ({exc.strerror})") from None
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' notes on their own internals
            if fmt == "torch":
                program = _traced(graph, example, batch, name)
                torch.export.save(program, tmp, extra_files={"vqfast.json": text})
            else:
                with contextlib.redirect_stdout(io.StringIO()):  # the ONNX exporter's progress lines
                    _onnx(graph, example, batch, tmp, text, name)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    echo(f"{name} of {run} exported to {out} ({fmt}): input images (B, {', '.join(map(str, meta['input']))}) "
         "float32 as vqfast.load(run).preprocess gives them; outputs score (B,), map (B, H, W)")
    return meta


def _traced(graph: ScoreGraph, example: torch.Tensor, batch, name: str):
    """torch.export's program of the graph, any batch size; a scorer that is not one fixed
    graph (a method from outside vqfast, say) is a RunError naming what stopped it."""
    try:
        return torch.export.export(graph, (example,), dynamic_shapes=({0: batch},))
    except Exception as exc:  # torch.export's many error types; the first line says what it met
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise RunError(f"the {name} scorer is not one fixed graph, so it cannot be exported: {first}") from exc


def _onnx(graph: ScoreGraph, example: torch.Tensor, batch, path: str, text: str, name: str) -> None:
    try:
        import onnx  # optional: vqfast[export]
        import onnxscript  # noqa: F401  (optional: the exporter needs it, and says so less clearly)
    except ModuleNotFoundError as exc:
        raise RunError(f"--format onnx needs the {exc.name} package: pip install 'vqfast[export]'") from None
    program = torch.onnx.export(_traced(graph, example, batch, name), dynamo=True, input_names=["images"],
                                output_names=["score", "map"], external_data=False, verbose=False)
    model = program.model_proto
    if model.ByteSize() >= 2**31:  # protobuf's limit on one file
        raise RunError(f"the {name} graph holds {model.ByteSize() / 2**30:.1f} GiB, past ONNX's 2 GiB for one file "
                       "(an SGFR bank of many images): export it with --format torch")
    model.metadata_props.add(key="vqfast", value=text)
    onnx.save(model, path)
