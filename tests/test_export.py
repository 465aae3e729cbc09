"""vqfast export: each fixed-graph scorer as ONNX (run by onnxruntime on the CPU) and as a
torch.export .pt2 gives vqfast score's scores and maps to 1e-4 relative, for batches of
1 and 7, on the user's images, random images and Magnetic Tile photographs; a planted
export bug (one weight changed, the final smoothing dropped) fails the comparison."""

import copy
import json
import pathlib
import sys

import numpy as np
import pytest
import torch

import vqfast
from vqfast.app import export as export_module
from vqfast.app.score import load_map
from vqfast.cli import main
from conftest import image_folders

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")
onnx = pytest.importorskip("onnx")

SHARED_MT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"
VQ = ["--size", "32", "--epochs", "1", "--set", "hidden=8", "--set", "codes=8", "--set", "code_dim=4",
      "--set", "downsamples=2", "--set", "res_blocks=1"]
RUNS = {  # run name: (train arguments, the scorer exported)
    "vq": (["vqvae", *VQ], "regenerative"),
    "gpt2": (["gpt2", "--vq", "{root}/vq", "--epochs", "1", "--set", "layers=1", "--set", "width=16",
              "--set", "heads=2"], "sample"),
    "fae": (["feature-ae", "--size", "64", "--epochs", "1", "--set", "backbone=resnet18"], "feature-ae"),
    "sgfr": (["sgfr", "--size", "64", "--set", "backbone=resnet18", "--set", "s_ref=4", "--set", "s=3"], "sgfr"),
    # a DSR of 2 steps a stage moves its maps by 5e-5 between two CPU convolution
    # backends already (untrained batch norms amplify rounding); 10 steps settle it
    "dsr": (["dsr", "--size", "64", "--set", "steps=10,10,10"], "dsr"),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = image_folders(tmp_path_factory.mktemp("export"), size=64, seed=7, n_train=16, n_test_normal=4,
                         n_test_anomalous=4)
    with pytest.warns(RuntimeWarning):  # the random resnet18s say so
        for name, (args, scorer) in RUNS.items():
            args = [a.format(root=root) for a in args]
            assert main(["train", args[0], "--data", str(root / "train"), "--out", str(root / name), *args[1:]]) == 0
            assert main(["score", scorer, "--run", str(root / name), "--data", str(root / "test"),
                         "--out", str(root / f"{name}_scores")]) == 0
    return root


def _records(folder):
    return [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]


def _run_file(path, fmt, x: torch.Tensor):
    """(scores (B,), maps (B, H, W)) NumPy from the exported file."""
    if fmt == "onnx":
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        return [t.numpy() for t in torch.export.load(str(path)).module()(x)]


def _close(got, want, rtol=1e-4) -> bool:
    """Within rtol relative, maps measured against their own scale."""
    want = np.asarray(want, dtype=np.float64)
    return np.allclose(got, want, rtol=rtol, atol=rtol * max(np.abs(want).max(), 1e-12))


def _export(root, name, fmt, tmp_path):
    out = tmp_path / f"{name}.{'onnx' if fmt == 'onnx' else 'pt2'}"
    assert main(["export", "--run", str(root / name), "--scorer", RUNS[name][1], "--format", fmt,
                 "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("fmt", ["onnx", "torch"])
@pytest.mark.parametrize("name", list(RUNS))
def test_the_exported_scorer_gives_vqfast_scores_values(world, name, fmt, tmp_path):
    out = _export(world, name, fmt, tmp_path)
    records = _records(world / f"{name}_scores")
    detector = vqfast.load(world / name, RUNS[name][1], threshold=None, device="cpu")
    users = detector.preprocess([r["path"] for r in records[:7]])
    for x, want in ((users, records[:7]), (users[3:4], records[3:4])):
        scores, maps = _run_file(out, fmt, x)
        assert scores.shape == (len(want),) and maps.shape == (len(want), *x.shape[-2:])
        assert _close(scores, [r["score"] for r in want]), (scores, [r["score"] for r in want])
        assert _close(maps, np.stack([load_map(world / f"{name}_scores", r) for r in want]))
    torch.manual_seed(3)
    for batch in (7, 1):
        x = torch.rand(batch, *users.shape[1:])
        scores, maps = _run_file(out, fmt, x)
        want = detector.scorer.score(x)
        assert _close(scores, want.pred_score.numpy()) and _close(maps, want.anomaly_map.numpy())
    meta = json.loads({p.key: p.value for p in onnx.load(str(out)).metadata_props}["vqfast"]) if fmt == "onnx" \
        else None
    if meta is not None:
        assert meta["scorer"] == RUNS[name][1] and meta["input"] == list(users.shape[1:])


@pytest.mark.skipif(not SHARED_MT.is_dir(), reason="needs ../shared/data/magnetic_tile")
def test_onnx_parity_on_magnetic_tile_photographs(world, tmp_path):
    paths = sorted((SHARED_MT / "MT_Blowhole" / "Imgs").glob("*.jpg"))[:7]
    for name in ("sgfr", "dsr"):
        out = _export(world, name, "onnx", tmp_path)
        detector = vqfast.load(world / name, threshold=None, device="cpu")
        x = detector.preprocess(paths)
        scores, maps = _run_file(out, "onnx", x)
        want = detector.predict(x)
        assert _close(scores, [w["score"] for w in want]) and _close(maps, np.stack([w["map"] for w in want]))


class _OneWeightChanged(export_module.ScoreGraph):
    def __init__(self, scorer):
        scorer = copy.deepcopy(scorer)
        super().__init__(scorer)
        weight = [p for p in self.parameters() if p.dim() > 1][-1]  # the output layer's
        with torch.no_grad():
            weight.view(-1)[0] += weight.abs().max()


def _planted(world, name, tmp_path, patch):
    """Whether the parity check still passes with ``patch`` applied while exporting."""
    records = _records(world / f"{name}_scores")
    x = vqfast.load(world / name, threshold=None, device="cpu").preprocess([r["path"] for r in records[:7]])
    want = np.stack([load_map(world / f"{name}_scores", r) for r in records[:7]])
    with pytest.MonkeyPatch.context() as m:
        patch(m)
        got = _run_file(_export(world, name, "onnx", tmp_path), "onnx", x)[1]
    return _close(got, want)


@pytest.mark.parametrize("name", ["vq", "dsr"])
def test_a_planted_export_bug_that_changes_one_weight_fails_the_parity_check(world, name, tmp_path):
    assert not _planted(world, name, tmp_path, lambda m: m.setattr(export_module, "ScoreGraph", _OneWeightChanged))


@pytest.mark.parametrize("name, module", [("fae", "feature_ae"), ("sgfr", "sgfr")])
def test_a_planted_export_bug_that_drops_the_smoothing_fails_the_parity_check(world, name, module, tmp_path):
    assert not _planted(world, name, tmp_path,
                        lambda m: m.setattr(f"vqfast.scorers.{module}.gaussian_blur", lambda maps, sigma: maps))


def test_restoration_scorers_say_why_they_are_not_exported(world, tmp_path, capsys):
    for scorer in ("pixel", "light", "kde"):
        assert main(["export", "--run", str(world / "gpt2"), "--scorer", scorer, "--out",
                     str(tmp_path / "x.onnx")]) == 2
        err = capsys.readouterr().err
        assert f"the {scorer} scorer is not exported" in err and "--scorer sample" in err
    assert main(["export", "--run", str(world / "gpt2"), "--scorer", "masked-sample", "--out",
                 str(tmp_path / "x.onnx")]) == 2
    assert "a shape that depends on the data" in capsys.readouterr().err
    assert main(["export", "--run", str(world / "gpt2"), "--out", str(tmp_path / "x.onnx")]) == 2  # its default
    assert "the pixel scorer is not exported" in capsys.readouterr().err
    assert not (tmp_path / "x.onnx").exists()


def test_a_missing_exporter_package_is_named_with_the_extra(world, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # as if not installed
    assert main(["export", "--run", str(world / "vq"), "--out", str(tmp_path / "x.onnx")]) == 2
    err = capsys.readouterr().err
    assert "onnxscript" in err and "vqfast[export]" in err and not (tmp_path / "x.onnx").exists()
    assert main(["export", "--run", str(world / "vq"), "--format", "torch", "--out", str(tmp_path / "x.pt2")]) == 0


def test_export_never_replaces_a_file_unasked_and_names_a_bad_out(world, tmp_path, capsys):
    mine = tmp_path / "mine.onnx"
    mine.write_bytes(b"the user's own")
    assert main(["export", "--run", str(world / "vq"), "--out", str(mine)]) == 2
    assert "exists" in capsys.readouterr().err and mine.read_bytes() == b"the user's own"
    assert main(["export", "--run", str(world / "vq"), "--format", "torch", "--out", str(tmp_path / "m.onnx")]) == 2
    assert ".pt2" in capsys.readouterr().err
    assert main(["export", "--run", str(world / "vq"), "--out", str(mine), "--overwrite"]) == 0
    assert onnx.load(str(mine)).graph.input[0].name == "images"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.onnx"]  # no temp file left
    assert main(["export", "--run", str(world / "vq"), "--out", "/proc/vqfast-test/m.onnx"]) == 2  # no folder there
    assert "cannot write there" in capsys.readouterr().err
    assert main(["export", "--run", str(tmp_path / "no-run"), "--out", str(tmp_path / "n.onnx")]) == 2
    assert "no run.json" in capsys.readouterr().err


def test_the_python_path_keeps_the_fused_kernels(world, monkeypatch):
    """Outside an export nothing takes the lowered ops."""
    def refuse(*args, **kwargs):
        raise AssertionError("the lowered op ran outside an export")

    monkeypatch.setattr("vqfast.ops.lowered.nearest_code", refuse)
    monkeypatch.setattr("vqfast.ops.lowered.omp", refuse)
    for name in ("vq", "sgfr"):
        detector = vqfast.load(world / name, threshold=None, device="cpu")
        detector.predict(torch.rand(2, 3, 64, 64))


def test_a_run_without_validation_images_exports_without_a_threshold(world, tmp_path, capsys):
    """SGFR's paper setting trains on every image: nothing to set "auto" by, and the
    threshold is only the file's metadata, so the export goes on without one."""
    run = tmp_path / "all"
    assert main(["train", "sgfr", "--data", str(world / "train"), "--out", str(run), "--size", "64", "--set",
                 "backbone=resnet18", "--set", "s_ref=4", "--set", "s=3", "--set", "val_fraction=0"]) == 0
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--format", "torch", "--out", str(tmp_path / "all.pt2")]) == 0
    assert "records no threshold" in capsys.readouterr().out
    extra = {"vqfast.json": ""}
    torch.export.load(str(tmp_path / "all.pt2"), extra_files=extra)
    assert json.loads(extra["vqfast.json"])["threshold"] is None
    assert main(["export", "--run", str(run), "--format", "torch", "--threshold", "2.5", "--out",
                 str(tmp_path / "t.pt2")]) == 0
    torch.export.load(str(tmp_path / "t.pt2"), extra_files=extra)
    assert json.loads(extra["vqfast.json"])["threshold"] == 2.5
