"""End to end: vqfast train / score / report on small generated folders, the records and
the files they promise, resume and its refusals, config files, and bad input."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from vqfast import metrics
from vqfast.app.methods import RunError
from vqfast.cli import main
from vqfast.data import procedural_splits, write_image_folder

TINY = ["--size", "32", "--epochs", "2", "--set", "hidden=16", "--set", "codes=16", "--set", "code_dim=8",
        "--set", "res_blocks=1", "--set", "downsamples=2"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("app")
    train, test = procedural_splits(size=32, seed=5, n_train=30, n_test_normal=5, n_test_anomalous=5)
    write_image_folder(train, root / "train")
    write_image_folder(test, root / "test")
    assert main(["train", "vqvae", "--data", str(root / "train"), "--out", str(root / "vq"), *TINY]) == 0
    assert main(["train", "gpt2", "--vq", str(root / "vq"), "--data", str(root / "train"), "--out",
                 str(root / "gpt2"), "--epochs", "1"]) == 0
    return root


def _records(folder):
    return [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]


def test_train_writes_a_run_folder(folders):
    run = json.loads((folders / "vq" / "run.json").read_text())
    assert run["method"] == "vqvae" and run["status"] == "trained" and run["settings"]["codes"] == 16
    assert run["data"]["images"] == 30 and len(run["val_images"]) == 3  # the held-out tenth
    assert {"checkpoint.safetensors", "model.safetensors", "metrics.jsonl"} <= {p.name for p in (folders / "vq" / "model").iterdir()}
    assert len((folders / "vq" / "model" / "metrics.jsonl").read_text().splitlines()) == 2
    prior = json.loads((folders / "gpt2" / "run.json").read_text())
    assert prior["settings"]["size"] == 32 and (folders / "gpt2" / "vq.safetensors").is_file()


def test_score_and_report(folders, capsys):
    out = folders / "scores_regen"
    assert main(["score", "regenerative", "--run", str(folders / "vq"), "--data", str(folders / "test"),
                 "--out", str(out)]) == 0
    records = _records(out)
    assert [r["index"] for r in records] == list(range(10))
    assert len({r["path"] for r in records}) == 10 and sorted(r["label"] for r in records) == [0] * 5 + [1] * 5
    summary = json.loads((out / "summary.json").read_text())
    threshold = summary["threshold"]["value"]
    val = [json.loads(line)["score"] for line in (out / "val_scores.jsonl").read_text().splitlines()]
    assert threshold == pytest.approx(np.percentile(val, 99))  # defect-free validation images only
    assert all(r["decision"] == int(r["score"] >= threshold) for r in records)
    labels, scores = np.array([r["label"] for r in records]), np.array([r["score"] for r in records])
    assert summary["metrics"]["image_auroc"] == pytest.approx(metrics.auroc(labels, scores))
    with open(out / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert [float(r["score"]) for r in rows] == [r["score"] for r in records] and rows[0]["path"] == records[0]["path"]
    amap = np.load(out / records[0]["map"])
    assert amap.shape == (32, 32) and amap.dtype == np.float32

    assert main(["report", "--scores", str(out), "--max-overlays", "4"]) == 0
    report = json.loads((out / "metrics.json").read_text())
    assert report["image_auroc"] == pytest.approx(summary["metrics"]["image_auroc"])
    assert 0 <= report["pixel_auroc"] <= 1 and 0 <= report["aupro"] <= 1  # the folder's masks were found
    page = (out / "index.html").read_text()
    overlays = sorted(p.name for p in (out / "overlays").glob("*.png"))
    assert len(overlays) == 4 and all(name in page for name in overlays) and "roc.png" in page
    top = max(records, key=lambda r: r["score"])
    assert f"{top['index']:06d}.png" in overlays
    assert (out / "roc.png").stat().st_size > 1000 and (out / "pr.png").stat().st_size > 1000


def test_png_maps_give_the_values_back_and_a_report(folders):
    """--maps png: 16-bit grayscale PNGs a viewer opens; load_map recovers the float maps
    of an npy run to 1/65535 of each map's range, and report reads them."""
    from PIL import Image

    from vqfast.app.score import load_map

    args = ["score", "regenerative", "--run", str(folders / "vq"), "--data", str(folders / "test")]
    assert main([*args, "--out", str(folders / "npy")]) == 0
    assert main([*args, "--out", str(folders / "png"), "--maps", "png"]) == 0
    npy, png = _records(folders / "npy"), _records(folders / "png")
    for a, b in zip(npy, png):
        assert b["map"].endswith(".png") and a["score"] == b["score"]
        picture = Image.open(folders / "png" / b["map"])
        assert picture.size == (32, 32) and np.asarray(picture).max() == 65535
        exact, back = load_map(folders / "npy", a), load_map(folders / "png", b)
        low, high = b["map_range"]
        assert (low, high) == pytest.approx((exact.min(), exact.max()))
        assert np.abs(back - exact).max() <= (high - low) / 65535 + 1e-7
    pixel = []
    for folder in ("npy", "png"):
        assert main(["report", "--scores", str(folders / folder), "--max-overlays", "2"]) == 0
        pixel.append(json.loads((folders / folder / "metrics.json").read_text())["pixel_auroc"])
    assert pixel[1] == pytest.approx(pixel[0], abs=1e-3)


def test_prior_scorers_and_a_given_threshold(folders):
    out = folders / "scores_sample"
    assert main(["score", "sample", "--run", str(folders / "gpt2"), "--data", str(folders / "test"),
                 "--out", str(out), "--threshold", "1e9", "--no-maps", "--percentile", "70"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["threshold"] == {"value": 1e9, "rule": "given (--threshold)"} and summary["flagged"] == 0
    assert summary["nll_percentile"] == 70 and not (out / "val_scores.jsonl").exists()
    assert all(r["map"] is None for r in _records(out))


def test_resume_refuses_a_changed_run_or_scoring(folders, capsys):
    code = main(["train", "vqvae", "--data", str(folders / "train"), "--out", str(folders / "vq"), *TINY,
                 "--set", "codes=32", "--resume"])
    err = capsys.readouterr().err
    assert code == 2 and "settings.codes was 16, is 32" in err and "Traceback" not in err
    out = folders / "scores_resume"
    args = ["score", "regenerative", "--run", str(folders / "vq"), "--data", str(folders / "test"), "--out", str(out)]
    assert main(args) == 0
    assert main(args + ["--resume", "--threshold", "0.5"]) == 2
    assert "threshold was 'auto', is '0.5'" in capsys.readouterr().err
    before = _records(out)
    assert main(args + ["--resume"]) == 0 and _records(out) == before  # nothing left to score


def test_config_files_mirror_the_flags(folders, tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text(f'data = "{folders / "train"}"\nsize = 32\nepochs = 1\nhidden = 16\ncodes = 8\n'
                    'code_dim = 8\nres_blocks = 1\ndownsamples = 2\n')
    assert main(["train", "vqvae", "--config", str(toml), "--out", str(tmp_path / "a"), "--epochs", "2"]) == 0
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["settings"]["codes"] == 8 and run["settings"]["epochs"] == 2  # the flag wins over the file
    yaml = tmp_path / "score.yaml"
    yaml.write_text(f"run: {tmp_path / 'a'}\ndata: {folders / 'test'}\nout: {tmp_path / 's'}\nno_maps: true\n")
    assert main(["score", "regenerative", "--config", str(yaml)]) == 0
    assert len(_records(tmp_path / "s")) == 10 and not (tmp_path / "s" / "maps").exists()


@pytest.mark.parametrize("argv, message", [
    (["train", "vqvae", "--data", "{root}/missing", "--out", "{tmp}/x"], "missing: no such file or folder (--data)"),
    (["train", "vqvae", "--data", "{root}/train", "--format", "mvtec", "--out", "{tmp}/x"], "needs --category"),
    (["train", "vqvae", "--data", "{tmp}/empty", "--out", "{tmp}/x"], "no images"),
    (["train", "vqvae", "--data", "{root}/train", "--out", "{tmp}/x", "--size", "30"], "multiple of 8"),
    (["train", "dsr", "--data", "{root}/train", "--out", "{tmp}/x", "--size", "32"], "at least 64"),
    (["train", "vqvae", "--data", "{root}/train", "--out", "{tmp}/x", "--set", "bogus=1"], "no setting bogus"),
    (["train", "vqvae", "--data", "{root}/train"], "missing --out"),
    (["train", "gpt2", "--data", "{root}/train", "--out", "{tmp}/x"], "--vq"),
    (["train", "gpt2", "--vq", "{root}/gpt2", "--data", "{root}/train", "--out", "{tmp}/x"], "not a vqvae or vqgan"),
    (["train", "vqvae", "--data", "{root}/train", "--out", "{root}/vq"], "already holds a vqvae run"),
    (["score", "sgfr", "--run", "{root}/vq", "--data", "{root}/test", "--out", "{tmp}/x"], "scores with regenerative"),
    (["score", "regenerative", "--run", "{root}/train", "--data", "{root}/test", "--out", "{tmp}/x"], "no run.json"),
    (["score", "regenerative", "--run", "{root}/vq", "--data", "{root}/test", "--out", "{tmp}/x",
      "--threshold", "high"], "--threshold takes 'auto' or a number"),
    (["report", "--scores", "{root}/train"], "not a finished vqfast score folder"),
    (["score", "sample", "--run", "{root}/gpt2", "--data", "{root}/test", "--out", "{tmp}/x",
      "--decode-precision", "bfloat16"], "the sample scorer decodes no VQ tokens"),
    (["score", "regenerative", "--run", "{root}/vq", "--data", "{root}/test", "--out", "{tmp}/x",
      "--prior-precision", "bfloat16"], "a vqvae run has no token prior"),
    (["score", "regenerative", "--run", "{root}/gpt2", "--data", "{root}/test", "--out", "{tmp}/x",
      "--prior-precision", "bfloat16"], "the regenerative scorer runs no prior"),
    (["train", "vqvae", "--config", "{tmp}/none.toml", "--out", "{tmp}/x"], "cannot read the --config file"),
    (["train", "vqvae", "--data", "{tmp}/bad", "--out", "{tmp}/x"], "bad/0001.png"),
])
def test_bad_input_is_one_line_and_exit_2(folders, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "0001.png").write_bytes(b"not a png")
    code = main([a.format(root=folders, tmp=tmp_path) for a in argv])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "Traceback" not in err and len(err.splitlines()) == 1, err


def test_skip_bad_skips_and_counts(folders, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for p in sorted((folders / "train").glob("*.png"))[:12]:
        (data / p.name).write_bytes(p.read_bytes())
    (data / "zz_broken.png").write_bytes(b"\x89PNG truncated")
    with pytest.warns(RuntimeWarning, match="skipped 1 of 13"):
        assert main(["train", "vqvae", "--data", str(data), "--out", str(tmp_path / "r"), *TINY, "--skip-bad"]) == 0
    assert json.loads((tmp_path / "r" / "run.json").read_text())["data"]["images"] == 12


def test_debug_shows_the_traceback(folders, tmp_path):
    with pytest.raises(Exception, match="no such file"):
        main(["train", "vqvae", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "x"), "--debug"])


def test_python_dash_m_and_version():
    done = subprocess.run([sys.executable, "-m", "vqfast", "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.startswith("vqfast ")


def _score_args(folders, out):
    return ["score", "pixel", "--run", str(folders / "gpt2"), "--data", str(folders / "test"), "--out", str(out),
            "--batch-size", "2"]


def test_scoring_killed_at_random_moments_resumes_to_the_uninterrupted_result(folders, tmp_path):
    import random
    import signal
    import time

    seed = int(os.environ.get("VQFAST_TEST_SEED", random.randrange(2**31)))
    rng = random.Random(seed)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    assert main(_score_args(folders, straight)) == 0
    targets = sorted(rng.sample(range(0, 13), 4))  # records written (val + test) before the kill
    for target in targets:
        argv = _score_args(folders, killed) + (["--resume"] if killed.exists() else [])
        proc = subprocess.Popen([sys.executable, "-m", "vqfast", *argv], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 300
        while proc.poll() is None and time.monotonic() < deadline:
            written = sum(len(p.read_bytes().splitlines()) for p in killed.glob("*scores.jsonl"))
            if written >= target:
                proc.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"the scorer finished before the kill at {target} (seed {seed})"
    assert main(_score_args(folders, killed) + ["--resume"]) == 0
    a, b = _records(straight), _records(killed)
    assert [r["index"] for r in b] == list(range(10)), f"seed {seed}"
    assert a == b, f"records differ after kills at {targets} (seed {seed})"
    for r in a:
        assert np.array_equal(np.load(straight / r["map"]), np.load(killed / r["map"]))
    assert (straight / "scores.csv").read_text() == (killed / "scores.csv").read_text()


def test_a_torn_last_record_is_dropped_and_scored_again(folders, tmp_path):
    out = tmp_path / "s"
    assert main(_score_args(folders, out)) == 0
    full = (out / "scores.jsonl").read_text()
    lines = full.splitlines(keepends=True)
    (out / "scores.jsonl").write_text("".join(lines[:6]) + lines[6][:17])  # killed while writing record 6
    assert main(_score_args(folders, out) + ["--resume"]) == 0
    assert (out / "scores.jsonl").read_text() == full


def test_evaluate_scores_equals_the_metrics_of_its_records_and_leaves_out_excluded(folders):
    """What the Magnetic Tile scripts print: evaluate_scores of a score folder."""
    from vqfast.app.report import evaluate_scores

    out = folders / "scores_eval"
    assert main(["score", "regenerative", "--run", str(folders / "vq"), "--data", str(folders / "test"),
                 "--out", str(out)]) == 0
    records = _records(out)
    labels, scores = np.array([r["label"] for r in records]), np.array([r["score"] for r in records])
    peaks = np.stack([np.load(out / r["map"]) for r in records]).reshape(len(records), -1).max(1)
    found = evaluate_scores(out, reductions=("max",), pixel=False)
    assert found["score"]["image_auroc"] == pytest.approx(metrics.auroc(labels, scores))
    assert found["max"]["image_auroc"] == pytest.approx(metrics.auroc(labels, peaks))
    assert "pixel_auroc" not in found["score"] and "pixel_auroc" in evaluate_scores(out)["score"]
    drop = [records[0]["path"], records[-1]["path"]]  # one normal, one defective
    left = evaluate_scores(out, exclude=drop, pixel=False)["score"]
    assert left["image_auroc"] == pytest.approx(metrics.auroc(labels[1:-1], scores[1:-1]))


def test_val_fraction_zero_only_where_the_papers_use_every_image():
    from vqfast.app.data import held_out
    from vqfast.app.methods import RunError, settings_for

    assert held_out(10, 0.0, 0)[1] == [] and sorted(held_out(10, 0.0, 0)[0]) == list(range(10))
    assert settings_for("sgfr", {"val_fraction": "0"})["val_fraction"] == 0
    with pytest.raises(RunError, match="val_fraction"):
        settings_for("vqvae", {"val_fraction": 0})
    with pytest.raises(RunError, match="val_fraction"):
        settings_for("feature-ae", {"val_fraction": 1.5})


def test_load_scorer_takes_a_token_threshold(folders):
    from vqfast.app.score import load_scorer

    scorer, _ = load_scorer(folders / "gpt2", "light", token_threshold=3.25)
    assert scorer.threshold == 3.25 and scorer.percentile is None
    by_pct, _ = load_scorer(folders / "gpt2", "light", percentile=70)
    assert by_pct.percentile == 70 and by_pct.threshold != 3.25


def test_decode_precision_reaches_the_decoding_scorers(folders):
    from vqfast.app.score import load_scorer

    for run, name in (("vq", "regenerative"), ("gpt2", "regenerative"), ("gpt2", "pixel"), ("gpt2", "light"),
                      ("gpt2", "kde")):
        assert load_scorer(folders / run, name, decode_precision="bfloat16")[0].decode_precision == "bfloat16"
        assert load_scorer(folders / run, name)[0].decode_precision == "float32"
    out = folders / "scores_bf16"
    assert main(["score", "light", "--run", str(folders / "gpt2"), "--data", str(folders / "test"), "--out", str(out),
                 "--threshold", "1e9", "--decode-precision", "bfloat16"]) == 0
    assert '"decode_precision": "bfloat16"' in json.loads((out / "score.json").read_text())["scorer.settings"]


def test_prior_precision_reaches_the_prior_scorers_and_their_thresholds(folders):
    from vqfast.app.score import load_scorer

    for name in ("sample", "pixel", "light", "kde"):
        half = load_scorer(folders / "gpt2", name, prior_precision="bfloat16")[0]
        full = load_scorer(folders / "gpt2", name)[0]
        assert (half.prior_precision, full.prior_precision) == ("bfloat16", "float32")
        assert half.threshold != full.threshold  # the validation NLLs in bfloat16 too
    out = folders / "scores_prior_bf16"
    assert main(["score", "sample", "--run", str(folders / "gpt2"), "--data", str(folders / "test"), "--out", str(out),
                 "--threshold", "1e9", "--prior-precision", "bfloat16"]) == 0
    assert '"prior_precision": "bfloat16"' in json.loads((out / "score.json").read_text())["scorer.settings"]


def test_masked_prior_trains_and_scores_from_the_command_line(folders):
    """vqfast train masked, then both masked-context scorers; a restoration scorer's
    records resume to the same values (its draws are keyed by the image)."""
    run = folders / "masked"
    assert main(["train", "masked", "--vq", str(folders / "vq"), "--data", str(folders / "train"), "--out",
                 str(run), "--epochs", "1", "--set", "passes=2"]) == 0
    assert json.loads((run / "run.json").read_text())["summary"]["epochs"] == 1
    for scorer in ("masked-sample", "masked-restore"):
        out = folders / f"scores_{scorer}"
        assert main(["score", scorer, "--run", str(run), "--data", str(folders / "test"), "--out", str(out),
                     "--restorations", "2"]) == 0
        records = _records(out)
        assert len(records) == 10 and all(np.isfinite(r["score"]) for r in records)
        summary = json.loads((out / "summary.json").read_text())
        assert summary["nll_percentile"] == (40 if scorer == "masked-sample" else 80)  # the GPT-2 prior's
    again = folders / "scores_masked_again"
    assert main(["score", "masked-restore", "--run", str(run), "--data", str(folders / "test"), "--out", str(again),
                 "--restorations", "2"]) == 0
    assert [r["score"] for r in _records(again)] == [r["score"] for r in _records(folders / "scores_masked-restore")]
    assert main(["score", "pixel", "--run", str(run), "--data", str(folders / "test"), "--out",
                 str(folders / "wrong")]) == 2


def test_a_raster_prior_marks_the_masked_scorers_unusual_tokens(folders, tmp_path, capsys):
    """--marker RUN: u = the tokens over the GPT-2 run's percentile of its own validation
    NLLs (one causal forward), for both masked-context scorers; a marker of another kind or
    trained on another VQ model, or on a scorer that marks nothing, is refused."""
    import shutil

    from vqfast.app.score import load_scorer
    from vqfast.scorers.masked_context import mark_unusual

    run = folders / "masked_marked"
    assert main(["train", "masked", "--vq", str(folders / "vq"), "--data", str(folders / "train"), "--out",
                 str(run), "--epochs", "1", "--set", "passes=3"]) == 0
    gpt2, _ = load_scorer(folders / "gpt2", "pixel")
    restore, _ = load_scorer(run, "masked-restore", marker=folders / "gpt2")
    assert restore.marker is not None and restore.passes == 3  # the run's setting
    assert load_scorer(run, "masked-restore", passes=1)[0].passes == 1 and restore.passes == 3
    assert restore.threshold == gpt2.threshold  # the same percentile (80) of the same validation NLLs
    sample, _ = load_scorer(run, "masked-sample", marker=folders / "gpt2", percentile=60)
    assert sample.mark_threshold == load_scorer(folders / "gpt2", "sample", percentile=60)[0].threshold
    assert sample.mark_threshold != sample.threshold  # lambda_S stays on the masked prior's own NLLs
    tokens = torch.randint(0, 16, (3, 8, 8))
    assert torch.equal(sample.unusual(tokens), mark_unusual(sample.prior, tokens, sample.mark_threshold, gpt2.prior))
    half, _ = load_scorer(run, "masked-restore", marker=folders / "gpt2", prior_precision="bfloat16")
    assert half.prior_precision == "bfloat16"  # the marker's threshold from its bfloat16 NLLs too
    assert half.threshold == load_scorer(folders / "gpt2", "pixel", prior_precision="bfloat16")[0].threshold
    out = tmp_path / "marked"
    assert main(["score", "masked-restore", "--run", str(run), "--data", str(folders / "test"), "--out", str(out),
                 "--restorations", "2", "--marker", str(folders / "gpt2"), "--passes", "1"]) == 0
    assert json.loads((out / "summary.json").read_text())["marker"] == str(folders / "gpt2")
    assert main(["score", "masked-restore", "--run", str(run), "--data", str(folders / "test"), "--out", str(out),
                 "--restorations", "2", "--passes", "1", "--resume"]) == 2  # no marker: other settings
    assert "cannot resume" in capsys.readouterr().err
    other = tmp_path / "other_gpt2"
    shutil.copytree(folders / "gpt2", other)
    with open(other / "vq.safetensors", "ab") as f:
        f.write(b"\0")
    for marker, message in ((folders / "vq", "it must be a gpt2, performer or pixelsnail run"),
                            (run, "a masked run"), (other, "trained on another VQ model")):
        with pytest.raises(RunError, match=message):
            load_scorer(run, "masked-restore", marker=marker)
    with pytest.raises(RunError, match="only the masked-context scorers"):
        load_scorer(folders / "gpt2", "pixel", marker=folders / "gpt2")
    with pytest.raises(RunError, match="only masked-restore in-paints in passes"):
        load_scorer(run, "masked-sample", passes=2)
