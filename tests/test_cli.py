"""The `vqfast` command and the promises the README makes about it."""

import json
import pathlib
import re

import pytest

from vqfast import _ext
from vqfast.cli import main
from vqfast.demo import run_demo

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_bench_quick_prints_every_provider_and_writes_json(tmp_path, capsys):
    out_json = tmp_path / "bench.jsonl"
    args = ["bench", "--quick", "--repeats", "2", "--device", "cpu", "--json", str(out_json), "--memory"]
    assert main(args + ["--trace", str(tmp_path / "traces")]) == 0
    out = capsys.readouterr().out
    assert "x vs torch cdist+argmin" in out and "x vs torch chunked addmm+topk" in out
    for provider in ["reference", "torch cdist+argmin", "torch chunked addmm+argmin"]:
        assert provider in out
    if _ext.HAS_EXT:
        assert "vqfast cpu" in out
    records = [json.loads(line) for line in out_json.read_text().splitlines()]
    assert [r["k"] for r in records] == [1, 4]
    assert {t["name"] for t in records[0]["timings"]} >= {"reference", "torch cdist+argmin"}
    assert all(t["median_s"] > 0 for r in records for t in r["timings"])
    assert "peak extra mem" in out
    assert "omp  B=256" in out and "x vs sklearn orthogonal_mp_gram" in out
    assert "VQ-VAE (small)" in out and "VQ-GAN (small)" in out and "score (total)" in out
    assert "KDE map" in out and "Pixel-wise restoration  Performer" in out
    assert "the published pipeline (target >= 50x)" in out and "Regenerative (bfloat16 decode): " in out
    assert sorted(p.name for p in (tmp_path / "traces").iterdir()) == [
        "nearest_code_1024x16x128_k4.json",
        "nearest_code_2048x32x256_k1.json",
    ]


def test_demo_writes_results_and_resumes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--epochs", "1", "--prior-epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "image_auroc" in printed and "stage timings" in printed and "encode" in printed
    assert "identical restored tokens: True" in printed
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 1 and 0.0 <= results["regenerative"]["aupro"] <= 1.0
    assert 0.0 <= results["pixel_wise"]["aupro"] <= 1.0 and "image_auroc" in results["sample_wise"]
    assert results["pixel_wise_restoration"]["identical_tokens"] is True
    assert 0.0 <= results["performer_pixel_wise"]["aupro"] <= 1.0 and "pixel_auroc" in results["kde"]
    assert "Performer prior (FAVOR+)" in printed
    assert "DSR stage 3" in printed and 0.0 <= results["dsr"]["aupro"] <= 1.0 and (out / "dsr" / "stage3").is_dir()
    scores = out / "report" / "scores"  # the demo's Regenerative scores, through vqfast score and vqfast report
    assert results["report"] == str(scores / "index.html") and len(list((scores / "overlays").glob("*.png"))) == 12
    report = json.loads((scores / "metrics.json").read_text())
    assert report["images"] == 80 and report["image_auroc"] == pytest.approx(results["regenerative"]["image_auroc"],
                                                                             abs=0.05)
    assert main(["demo", "--out", str(out), "--epochs", "2", "--prior-epochs", "1", "--resume"]) == 0
    assert json.loads((out / "results.json").read_text())["epochs"] == 2
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2


def test_demo_refuses_an_old_run_and_bad_epochs(tmp_path, capsys):
    out = tmp_path / "demo"
    (out / "prior").mkdir(parents=True)
    (out / "metrics.jsonl").write_text("{}\n")
    assert main(["demo", "--out", str(out), "--epochs", "1", "--prior-epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{out} already holds a training run" in err and "resume" in err and "overwrite" in err
    for bad in ("0", "-3", "two"):
        with pytest.raises(SystemExit) as exc:
            main(["demo", "--out", str(out), "--epochs", bad])
        assert exc.value.code == 2
        assert "--epochs: " in capsys.readouterr().err
    with pytest.raises(ValueError, match="epochs and prior_epochs must be >= 1"):
        run_demo(out, epochs=0)


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "C++ extension:" in out and "Triton:" in out
    from vqfast import _ext

    if _ext.HAS_EXT:
        assert "restore_step: native kernels cpu" in out and "omp: native kernels cpu" in out
        assert f"nearest_code runs: {_ext._C.nearest_code_cpu_isa(16, 1)} for D=16 k=1," in out
        assert f" {_ext._C.nearest_code_cpu_isa(32, 1)} for D=32 k=1," in out


def _readme_commands():
    return re.findall(r"```bash\n(.*?)\n```", (ROOT / "README.md").read_text(), flags=re.S)


def test_readme_gives_the_two_fresh_machine_commands_and_ci_runs_the_test_one():
    blocks = _readme_commands()
    main_job, tests = blocks[0], blocks[1]
    assert main_job == "bash .ci/setup && .venv/bin/vqfast demo"
    assert tests == "bash .ci/setup && .venv/bin/python -m pytest -q"
    assert tests in (ROOT / ".ci" / "run").read_text()
