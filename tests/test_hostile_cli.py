"""The command line under hostile input: it writes and deletes only what it owns, one
process per output folder, typed values everywhere, and every refusal is one line with
exit code 2 that leaves every file outside --out as it was."""

import hashlib
import json
import os

import numpy as np
import pytest

from vqfast.app.ownership import LOCK, MANIFEST, locked
from vqfast.cli import main
from vqfast.data import procedural_splits, write_image_folder

TINY = ["--size", "32", "--epochs", "1", "--set", "hidden=16", "--set", "codes=16", "--set", "code_dim=8",
        "--set", "res_blocks=1", "--set", "downsamples=2"]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    train, test = procedural_splits(size=32, seed=3, n_train=20, n_test_normal=4, n_test_anomalous=4)
    write_image_folder(train, root / "train")
    write_image_folder(test, root / "test")
    assert main(["train", "vqvae", "--data", str(root / "train"), "--out", str(root / "vq"), *TINY]) == 0
    return root


def _snapshot(root, skip=()):
    """Every file under root (but those under ``skip``) with a hash of its bytes."""
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            if not any(path.startswith(str(s)) for s in skip):
                out[path] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def _refused(capsys, argv, fragment):
    capsys.readouterr()  # what earlier calls printed
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert fragment in err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def _score(world, out, *extra):
    return ["score", "regenerative", "--run", world / "vq", "--data", world / "test", "--out", out, *extra]


def test_score_refuses_a_folder_it_did_not_write_and_deletes_nothing(world, tmp_path, capsys):
    out = tmp_path / "mine"
    (out / "maps").mkdir(parents=True)
    for name in ("maps/a.npy", "old_scores.jsonl", "scores.csv", "summary.json", "notes.txt"):
        (out / name).write_text("the user's")
    before = _snapshot(tmp_path)
    _refused(capsys, _score(world, out), "not written by vqfast score")
    assert _snapshot(tmp_path) == before


def test_a_fresh_score_replaces_only_its_own_files(world, tmp_path, capsys):
    out = tmp_path / "s"
    assert main([str(a) for a in _score(world, out, "--maps", "png")]) == 0
    assert (out / MANIFEST).is_file() and list((out / "maps").glob("*.png"))
    (out / "notes.txt").write_text("kept")
    assert main([str(a) for a in _score(world, out, "--no-maps")]) == 0
    assert (out / "notes.txt").read_text() == "kept"
    assert not list((out / "maps").glob("*.png"))  # the earlier run's maps are vqfast's: gone


def test_train_overwrite_removes_only_what_train_wrote(world, tmp_path):
    out = tmp_path / "run"
    args = ["train", "vqvae", "--data", str(world / "train"), "--out", str(out), *TINY]
    assert main(args) == 0
    (out / "notes.txt").write_text("kept")
    (out / "extra").mkdir()
    (out / "extra" / "x.bin").write_bytes(b"kept")
    assert main(args + ["--overwrite"]) == 0
    assert (out / "notes.txt").read_text() == "kept" and (out / "extra" / "x.bin").read_bytes() == b"kept"
    assert json.loads((out / "run.json").read_text())["status"] == "trained"


def test_data_inside_out_is_refused(world, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "vqvae", "--data", str(world / "train"), "--out", str(out), *TINY]) == 0
    data = out / "images"
    data.mkdir()
    for p in sorted((world / "train").glob("*.png"))[:10]:
        (data / p.name).write_bytes(p.read_bytes())
    before = _snapshot(tmp_path)
    _refused(capsys, ["train", "vqvae", "--data", data, "--out", out, "--overwrite", *TINY], "lies inside --out")
    assert _snapshot(tmp_path) == before


def test_out_naming_a_file_or_another_kind_of_folder(world, tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    _refused(capsys, _score(world, tmp_path / "f"), "is a file, not a folder")
    _refused(capsys, _score(world, world / "vq"), "is a vqfast run folder, not a scores folder")
    _refused(capsys, ["train", "vqvae", "--data", world / "train", "--out", world / "test", *TINY],
             "not written by vqfast train")


def test_a_second_process_on_the_same_out_is_refused(world, tmp_path, capsys):
    out = tmp_path / "busy"
    with locked(out):  # as another vqfast process holds it (flock: per open file)
        _refused(capsys, _score(world, out), "in use by another vqfast process")
    assert main([str(a) for a in _score(world, out)]) == 0  # free again
    assert (out / LOCK).is_file()


def test_config_switches_take_only_true_or_false(world, tmp_path, capsys):
    before = _snapshot(world)
    for text in ('overwrite = "no"', 'overwrite = "false"', "overwrite = 0"):
        (tmp_path / "c.toml").write_text(text + "\n")
        _refused(capsys, ["train", "vqvae", "--data", world / "train", "--out", world / "vq",
                          "--config", tmp_path / "c.toml", *TINY], "overwrite takes true or false")
    (tmp_path / "c.toml").write_text('lr = "fast"\n')
    _refused(capsys, ["train", "vqvae", "--data", world / "train", "--out", tmp_path / "x",
                      "--config", tmp_path / "c.toml"], "lr")
    assert _snapshot(world) == before


@pytest.mark.parametrize("extra,fragment", [
    (["--set", "lr=inf"], "setting lr"),
    (["--set", "lr=nan"], "setting lr"),
    (["--set", "batch_size=0"], "setting batch_size: takes a whole number >= 1"),
    (["--set", "epochs=2.5"], "setting epochs"),
    (["--set", "codes=true"], "setting codes"),
    (["--size", "100000"], "GiB for one training batch"),
])
def test_bad_settings_are_refused_before_anything_is_written(world, tmp_path, capsys, extra, fragment):
    out = tmp_path / "never"
    _refused(capsys, ["train", "vqvae", "--data", world / "train", "--out", out, *extra], fragment)
    assert not out.exists()


@pytest.mark.parametrize("extra,fragment", [
    (["--threshold", "nan"], "not finite"),
    (["--threshold", "inf"], "not finite"),
])
def test_non_finite_thresholds_are_refused(world, tmp_path, capsys, extra, fragment):
    _refused(capsys, _score(world, tmp_path / "s", *extra), fragment)


@pytest.mark.parametrize("flag,value", [("--percentile", "200"), ("--percentile", "nan"), ("--lr", "inf"),
                                        ("--minutes", "-1")])
def test_out_of_range_flags_exit_2(world, tmp_path, flag, value):
    command = "score" if flag == "--percentile" else "train"
    argv = (["score", "pixel", "--run", str(world / "vq"), "--data", str(world / "test"), "--out", str(tmp_path / "s")]
            if command == "score" else ["train", "vqvae", "--data", str(world / "train"), "--out", str(tmp_path / "r")])
    with pytest.raises(SystemExit) as exc:
        main(argv + [flag, value])
    assert exc.value.code == 2


def test_a_run_scores_the_same_from_any_working_directory(world, tmp_path, monkeypatch):
    """The run stores its validation images as absolute paths: scoring from another
    directory that holds other files of the same relative names reads the run's own."""
    monkeypatch.chdir(world)
    assert main(["train", "vqvae", "--data", "train", "--out", str(tmp_path / "run"), *TINY]) == 0
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert all(os.path.isabs(p) for p in run["val_images"])
    score = ["score", "regenerative", "--run", str(tmp_path / "run"), "--data", str(world / "test")]
    assert main(score + ["--out", str(tmp_path / "here")]) == 0
    elsewhere = tmp_path / "elsewhere"
    write_image_folder(procedural_splits(size=32, seed=99, n_train=20, n_test_normal=1, n_test_anomalous=1)[0],
                       elsewhere / "train")  # same relative names, other images
    monkeypatch.chdir(elsewhere)
    assert main(score + ["--out", str(tmp_path / "there")]) == 0
    here, there = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("here", "there"))
    assert here["threshold"] == there["threshold"]


def test_sixteen_bit_and_palette_images_at_their_true_scale(tmp_path):
    import numpy as np
    from PIL import Image

    from vqfast.data.transforms import open_image

    grey = np.full((8, 8), round(0.51 * 65535), dtype=np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")  # PIL writes mode I;16 as a 16-bit PNG
    assert abs(np.asarray(open_image(tmp_path / "g16.png", "L")).mean() / 255 - 0.51) < 0.01
    palette = Image.fromarray(np.full((8, 8), 100, dtype=np.uint8)).convert("P")
    palette.save(tmp_path / "p.png")
    assert np.asarray(open_image(tmp_path / "p.png", "L")).mean() == 100


def test_a_decompression_bomb_is_refused_by_name(tmp_path, monkeypatch):
    from PIL import Image

    from vqfast.data import DatasetError
    from vqfast.data.transforms import open_image

    Image.new("L", (64, 64)).save(tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 4096 pixels is then past twice the limit
    with pytest.raises(DatasetError, match="bomb.png: refused, too many pixels"):
        open_image(tmp_path / "bomb.png", "L")


def test_checkpoints_are_readable_like_any_file_written_here(world):
    umask = os.umask(0)
    os.umask(umask)
    for path in (world / "vq").rglob("*.safetensors"):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path


def test_json_files_never_hold_nan(tmp_path):
    from vqfast.files import write_json

    write_json(tmp_path / "a.json", {"x": float("nan"), "y": [float("inf"), 1.5]})
    assert json.loads((tmp_path / "a.json").read_text(), parse_constant=lambda c: pytest.fail(c)) == {
        "x": None, "y": [None, 1.5]}
    assert not list(tmp_path.glob("*.tmp"))


def test_every_file_under_data_is_scored_or_named(world, tmp_path, capsys):
    """A folder with class sub-folders and loose images is refused by name; files that
    are not images, and folders below the layout, are named in a warning; .webp is read."""
    from PIL import Image

    data = tmp_path / "data"
    good, bad = sorted((world / "test").glob("*/*.png"))[:3], sorted((world / "test").glob("*/*.png"))[-2:]
    (data / "good" / "deeper").mkdir(parents=True)
    (data / "crack").mkdir()
    for p in good:
        (data / "good" / p.name).write_bytes(p.read_bytes())
    for p in bad:
        (data / "crack" / p.name).write_bytes(p.read_bytes())
    Image.open(good[0]).save(data / "good" / "extra.webp")
    (data / "good" / "deeper" / "x.png").write_bytes(good[0].read_bytes())
    (data / "crack" / "notes.txt").write_text("not an image")
    with pytest.warns(RuntimeWarning, match=r"2 entries are not read.*crack/notes.txt, good/deeper/"):
        assert main(["score", "regenerative", "--run", str(world / "vq"), "--data", str(data), "--out",
                     str(tmp_path / "s"), "--threshold", "1"]) == 0
    records = [json.loads(line) for line in (tmp_path / "s" / "scores.jsonl").read_text().splitlines()]
    assert len(records) == 6 and any(r["path"].endswith("extra.webp") for r in records)
    (data / "loose.png").write_bytes(good[0].read_bytes())
    _refused(capsys, ["score", "regenerative", "--run", world / "vq", "--data", data, "--out", tmp_path / "s2"],
             "holds 1 images at its top level")


NAMES = [b"a b.png", b"q'\"uote.png", b"$x$_^{2}.png", b"<b>&amp.png", b"\xff\xfe bad.png"]


def test_any_file_name_round_trips_through_csv_json_html_and_plots(world, tmp_path, capsys):
    """Spaces, quotes, $ (matplotlib's mathtext), markup and bytes that are not UTF-8."""
    data = tmp_path / "data"
    os.makedirs(os.fsencode(data / "good"))
    os.makedirs(os.fsencode(data / "bad"))
    sources = sorted((world / "test").glob("*/*.png"))
    for i, name in enumerate(NAMES):
        folder = b"good" if i < 3 else b"bad"
        with open(os.path.join(os.fsencode(data), folder, name), "wb") as f:
            f.write(sources[i].read_bytes())
    out = tmp_path / "s"
    assert main(["score", "regenerative", "--run", str(world / "vq"), "--data", str(data), "--out", str(out),
                 "--threshold", "1"]) == 0
    assert main(["report", "--scores", str(out)]) == 0
    names = {os.path.basename(os.fsencode(json.loads(line)["path"]))
             for line in (out / "scores.jsonl").read_text().splitlines()}
    assert names == set(NAMES)
    import csv
    import io

    rows = csv.DictReader(io.StringIO((out / "scores.csv").read_bytes().decode("utf-8", "surrogateescape")))
    assert {os.path.basename(os.fsencode(r["path"])) for r in rows} == set(NAMES)
    page = (out / "index.html").read_text()
    assert "&lt;b&gt;&amp;amp.png" in page and "$x$_^{2}.png" in page and "\ufffd\ufffd bad.png" in page
    assert len(list((out / "overlays").glob("*.png"))) == len(NAMES)


def test_a_report_after_a_scored_image_was_deleted_is_one_line(world, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted((world / "test").glob("*/*.png"))[:4]:
        (data / p.name).write_bytes(p.read_bytes())
    assert main(["score", "regenerative", "--run", str(world / "vq"), "--data", str(data), "--out",
                 str(tmp_path / "s"), "--threshold", "1"]) == 0
    next(data.iterdir()).unlink()
    _refused(capsys, ["report", "--scores", tmp_path / "s"], "no longer readable")


def test_a_missing_weights_file_is_refused_before_the_run_starts(world, tmp_path, capsys):
    out = tmp_path / "r"
    _refused(capsys, ["train", "feature-ae", "--data", world / "train", "--out", out, "--set",
                      f"weights={tmp_path / 'missing.pth'}"], "setting weights")
    assert not out.exists()


def test_a_score_resume_with_another_batch_size_is_refused(world, tmp_path, capsys):
    out = tmp_path / "s"
    assert main([str(a) for a in _score(world, out, "--threshold", "1", "--batch-size", "3")]) == 0
    _refused(capsys, _score(world, out, "--threshold", "1", "--batch-size", "2", "--resume"), "batch_size was 3")


def test_a_failed_training_says_so_in_run_json(world, tmp_path, monkeypatch):
    import dataclasses

    from vqfast.app import methods
    from vqfast.methods import registry

    def boom(*args, **kwargs):
        raise FloatingPointError("non-finite loss nan at epoch 1, step 0")

    monkeypatch.setitem(registry._METHODS, "vqvae", dataclasses.replace(registry.get("vqvae"), train=boom))
    with pytest.raises(FloatingPointError):
        methods.train("vqvae", world / "train", "folder", tmp_path / "r", {"size": 32}, progress=False)
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["status"] == "failed" and "non-finite loss" in run["error"]


def _copy_run(src, dst):
    """A run folder's files (not its manifest or lock) copied, to damage the copy."""
    for p in src.rglob("*"):
        if p.is_file() and not p.name.startswith(".vqfast"):
            (dst / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            (dst / p.relative_to(src)).write_bytes(p.read_bytes())
    return dst


RUN_JSON_EDITS = {
    "a list": lambda run: [],
    "an empty object": lambda run: {},
    "an unknown method": lambda run: {**run, "method": "foo"},
    "settings a number": lambda run: {**run, "settings": 5},
    "no transform": lambda run: {k: v for k, v in run.items() if k != "transform"},
    "a text size": lambda run: {**run, "transform": {**run["transform"], "size": "abc"}},
    "a zero size": lambda run: {**run, "transform": {**run["transform"], "size": 0}},
    "val_images a number": lambda run: {**run, "val_images": 5},
    "val_images of numbers": lambda run: {**run, "val_images": [1, 2]},
    "a setting out of range": lambda run: {**run, "settings": {**run["settings"], "codes": 0}},
    "a setting not finite": lambda run: {**run, "settings": {**run["settings"], "lr": "NaN"}},
}


@pytest.mark.parametrize("edit", sorted(RUN_JSON_EDITS))
def test_a_malformed_run_json_is_one_line(world, tmp_path, capsys, edit):
    run = _copy_run(world / "vq", tmp_path / "run")
    record = json.loads((run / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(RUN_JSON_EDITS[edit](record)))
    _refused(capsys, ["score", "regenerative", "--run", run, "--data", world / "test", "--out", tmp_path / "s"],
             "run.json")


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated", "no config", "a config list", "bad config"])
def test_a_damaged_checkpoint_is_one_line(world, tmp_path, capsys, damage):
    from safetensors.torch import load_file, save_file

    run = _copy_run(world / "vq", tmp_path / "run")
    model = next(run.rglob("model.safetensors"))
    whole = model.read_bytes()
    if damage == "empty":
        model.write_bytes(b"")
    elif damage == "garbage":
        model.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        model.write_bytes(whole[: len(whole) // 2])
    else:
        config = {"no config": None, "a config list": "[1, 2]", "bad config": json.dumps(
            {"model": "VQVAE", "in_channels": -3})}[damage]
        meta = {"format": "vqfast-1"} if config is None else {"format": "vqfast-1", "config": config}
        from vqfast import checkpoint

        meta["format"] = checkpoint.FORMAT
        save_file(load_file(str(model)), str(model), metadata=meta)
    _refused(capsys, ["score", "regenerative", "--run", run, "--data", world / "test", "--out", tmp_path / "s"],
             "model.safetensors")


@pytest.mark.parametrize("name,text", [("summary.json", '{"scorer": "regen'), ("score.json", "[]"),
                                       ("scores.jsonl", "{not json}\n")])
def test_a_damaged_score_folder_is_one_line_for_report(world, tmp_path, capsys, name, text):
    out = tmp_path / "s"
    assert main([str(a) for a in _score(world, out, "--threshold", "1")]) == 0
    (out / name).write_text(text)
    _refused(capsys, ["report", "--scores", out], str(out))


@pytest.mark.parametrize("value,fragment", [("steps=1", "takes 3 comma-separated values"),
                                            ("split=a,b,c", "setting split"), ("steps=1,2,x", "setting steps"),
                                            ("lr=1e400", "setting lr"), ("steps=0,1,1", "whole number >= 1")])
def test_garbage_list_settings(world, tmp_path, capsys, value, fragment):
    _refused(capsys, ["train", "dsr", "--data", world / "train", "--out", tmp_path / "r", "--set", value], fragment)
    assert not (tmp_path / "r").exists()


def test_an_out_below_a_file_is_one_line(world, tmp_path, capsys):
    (tmp_path / "f").write_text("a file")
    before = _snapshot(tmp_path)
    _refused(capsys, _score(world, tmp_path / "f" / "sub"), str(tmp_path / "f"))
    assert _snapshot(tmp_path) == before


def test_a_resume_scores_each_image_in_its_uninterrupted_batch(world, tmp_path):
    """A scorer whose output depends on its batch (as float rounding can): a resume after a
    kill in the middle of a batch must still give every image its uninterrupted value."""
    from types import SimpleNamespace

    import torch

    from vqfast.app.data import open_data
    from vqfast.app.score import score_images
    from vqfast.data import ImageTransform

    class BatchBound:
        def score(self, x):
            value = x.mean((1, 2, 3)) + 1000 * x.shape[0] + x.sum()
            return SimpleNamespace(pred_score=value, anomaly_map=x[:, 0] + value[:, None, None])

    data = open_data(world / "test", "folder", "test", ImageTransform(size=32, channels=3))
    straight = score_images(BatchBound(), data, tmp_path / "a", batch_size=3, progress=False)
    lines = (tmp_path / "a" / "scores.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "scores.jsonl").write_text("".join(lines[:4]))  # killed after 4 of 8: mid-batch
    resumed = score_images(BatchBound(), data, tmp_path / "b", batch_size=3, progress=False)
    assert [r["score"] for r in resumed] == [r["score"] for r in straight]
    for r in straight[4:]:
        assert torch.equal(torch.from_numpy(np.load(tmp_path / "a" / r["map"])),
                           torch.from_numpy(np.load(tmp_path / "b" / r["map"])))


def test_a_map_left_half_written_by_a_kill_is_cleared_by_the_next_fresh_score(world, tmp_path):
    out = tmp_path / "s"
    assert main([str(a) for a in _score(world, out, "--threshold", "1")]) == 0
    (out / "maps" / "scores_000000.npy.k3j2x.tmp").write_bytes(b"half")  # a kill between write and rename
    assert main([str(a) for a in _score(world, out, "--threshold", "1")]) == 0
    assert not list((out / "maps").glob("*.tmp"))
