"""vqfast score --maps tiff (MVTec's layout, read as its evaluation script reads it),
--tile / --stride, per-defect-class metrics in vqfast report, and vqfast report --scores
A B --out DIR (the comparison page)."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

import vqfast
from vqfast.app.score import load_map
from vqfast.cli import main
from vqfast.data import procedural_splits

tifffile = pytest.importorskip("tifffile")

TINY = ["--size", "32", "--epochs", "1", "--set", "hidden=8", "--set", "codes=8", "--set", "code_dim=4",
        "--set", "downsamples=2", "--set", "res_blocks=1"]
CLASSES = ("hole", "scratch")
WIDTH, HEIGHT = 56, 40  # not the model's 32 x 32, not square: TIFFs come back at this size


def _png(array: np.ndarray, path, resample=Image.BILINEAR):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).resize((WIDTH, HEIGHT), resample).save(path)


def _mvtec_tree(root):
    """<root>/cat/{train/good, test/good, test/hole, test/scratch, ground_truth/<class>/<id>_mask.png}."""
    train, test = procedural_splits(size=48, seed=5, n_train=12, n_test_normal=4, n_test_anomalous=6)
    as_u8 = (lambda t: (t.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy())
    for i in range(len(train)):
        _png(as_u8(train[i]["image"]), root / "cat" / "train" / "good" / f"{i:03d}.png")
    n = 0
    for i in range(len(test)):
        item = test[i]
        if int(item["label"]) == 0:
            _png(as_u8(item["image"]), root / "cat" / "test" / "good" / f"{i:03d}.png")
            continue
        defect = CLASSES[n % 2]
        n += 1
        _png(as_u8(item["image"]), root / "cat" / "test" / defect / f"{i:03d}.png")
        mask = (item["mask"].numpy() > 0.5).astype(np.uint8) * 255
        _png(mask, root / "cat" / "ground_truth" / defect / f"{i:03d}_mask.png", Image.NEAREST)
    return root


@pytest.fixture(scope="module")
def mvtec(tmp_path_factory):
    root = _mvtec_tree(tmp_path_factory.mktemp("mvtec"))
    args = ["--data", str(root), "--format", "mvtec", "--category", "cat"]
    assert main(["train", "vqvae", *args, "--out", str(root / "run"), *TINY]) == 0
    assert main(["score", "regenerative", "--run", str(root / "run"), *args, "--out", str(root / "tiff"),
                 "--maps", "tiff"]) == 0
    assert main(["score", "regenerative", "--run", str(root / "run"), *args, "--out", str(root / "npy")]) == 0
    return root


def _records(folder):
    return [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]


def test_tiff_maps_lie_where_mvtec_evaluation_reads_them(mvtec):
    """Walking the ground truth as MVTec's evaluate_experiment.py does, every test image
    has <maps>/<object>/test/<defect>/<id>.tiff: float32, at the image's resolution, the
    model-sized map resized bilinearly; AUROC over those maps and the masks is computable."""
    maps_dir = mvtec / "tiff" / "maps"
    test = mvtec / "cat" / "test"
    all_maps, all_masks = [], []
    for defect_dir in sorted(test.iterdir()):
        for image in sorted(defect_dir.glob("*.png")):
            amap = tifffile.imread(maps_dir / "cat" / "test" / defect_dir.name / f"{image.stem}.tiff")
            assert amap.dtype == np.float32 and amap.shape == (HEIGHT, WIDTH)
            mask_file = mvtec / "cat" / "ground_truth" / defect_dir.name / f"{image.stem}_mask.png"
            mask = np.asarray(Image.open(mask_file)) > 0 if mask_file.is_file() else np.zeros_like(amap, bool)
            all_maps.append(amap)
            all_masks.append(mask)
    assert len(all_maps) == 10
    assert 0.0 <= roc_auc_score(np.ravel(all_masks), np.ravel(all_maps)) <= 1.0
    npy = {r["path"]: r for r in _records(mvtec / "npy")}
    for r in _records(mvtec / "tiff"):
        small = torch.from_numpy(load_map(mvtec / "npy", npy[r["path"]]))[None, None]
        want = torch.nn.functional.interpolate(small, size=(HEIGHT, WIDTH), mode="bilinear", align_corners=False)
        np.testing.assert_allclose(load_map(mvtec / "tiff", r), want[0, 0].numpy(), rtol=1e-6, atol=1e-7)
        assert r["score"] == npy[r["path"]]["score"]


def test_a_fresh_tiff_score_removes_only_its_own_maps(mvtec, tmp_path):
    args = ["regenerative", "--run", str(mvtec / "run"), "--data", str(mvtec), "--format", "mvtec",
            "--category", "cat", "--out", str(tmp_path / "s"), "--maps", "tiff"]
    assert main(["score", *args]) == 0
    mine = tmp_path / "s" / "maps" / "cat" / "test" / "good" / "notes.txt"
    mine.write_text("the user's")
    assert main(["score", *args[:-2]]) == 0  # npy maps this time: the TIFFs go, the user's file stays
    assert mine.read_text() == "the user's" and not list((tmp_path / "s" / "maps").rglob("*.tiff"))
    assert not (tmp_path / "s" / "maps" / "cat" / "test" / "hole").exists()  # emptied folders go too


def test_report_gives_metrics_per_defect_class(mvtec):
    assert main(["report", "--scores", str(mvtec / "tiff")]) == 0
    result = json.loads((mvtec / "tiff" / "metrics.json").read_text())
    records = _records(mvtec / "tiff")
    assert sorted(result["per_class"]) == list(CLASSES)
    for name in CLASSES:
        keep = [r for r in records if r["defect"] in ("good", name)]
        got = result["per_class"][name]
        assert got["images"] == sum(r["defect"] == name for r in records)
        assert got["image_auroc"] == pytest.approx(roc_auc_score([r["label"] for r in keep],
                                                                 [r["score"] for r in keep]))
        assert 0.0 <= got["pixel_auroc"] <= 1.0 and 0.0 <= got["aupro"] <= 1.0
    page = (mvtec / "tiff" / "index.html").read_text()
    assert "Per defect class" in page and all(name in page for name in CLASSES)


def test_score_by_tiles_equals_predict_by_tiles(mvtec, tmp_path, capsys):
    out = tmp_path / "tiles"
    args = ["score", "regenerative", "--run", str(mvtec / "run"), "--data", str(mvtec), "--format", "mvtec",
            "--category", "cat", "--threshold", "0.5"]
    assert main([*args, "--out", str(out), "--tile", "32", "--stride", "12"]) == 0
    detector = vqfast.load(mvtec / "run", threshold=0.5)
    for r in _records(out):
        want = detector.predict(r["path"], tile=32, stride=12)
        assert r["score"] == pytest.approx(want["score"], rel=1e-6)
        np.testing.assert_allclose(load_map(out, r), want["map"], rtol=1e-6, atol=1e-7)
        assert load_map(out, r).shape == (HEIGHT, WIDTH)
    assert main([*args, "--out", str(out), "--tile", "24", "--resume"]) == 2  # other tiles: no resume
    assert "tile" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "x"), "--stride", "8"]) == 2
    assert "--stride needs --tile" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "y"), "--tile", "64"]) == 2
    err = capsys.readouterr().err
    assert ".png" in err and "tile must be" in err


def test_the_comparison_page_puts_scorers_side_by_side(mvtec, tmp_path, capsys):
    folders = [mvtec / "npy", mvtec / "tiff"]
    for f in folders:
        assert main(["report", "--scores", str(f)]) == 0
    out = tmp_path / "cmp"
    assert main(["report", "--scores", *map(str, folders), "--out", str(out), "--max-images", "4"]) == 0
    result = json.loads((out / "comparison.json").read_text())
    assert len(result) == 2  # the same scorer and run twice: told apart by their folders
    for f, (name, got) in zip(folders, result.items()):
        own = json.loads((f / "metrics.json").read_text())
        assert got["folder"] == str(f) and f.name in name
        for key in ("image_auroc", "pixel_auroc", "aupro"):
            assert got[key] == pytest.approx(own[key], rel=1e-6)
        assert got["ms_per_image"] > 0
    assert sorted(p.name for p in (out / "images").iterdir()) == [f"{k:03d}.png" for k in range(4)]
    assert (out / "roc.png").is_file() and (out / "pr.png").is_file()
    page = (out / "index.html").read_text()
    assert "ms per image" in page and "aupro" in page
    before = sorted(p.name for p in (mvtec / "npy").iterdir())
    assert main(["report", "--scores", str(folders[0]), str(folders[1]), "--out", str(mvtec / "npy")]) == 2
    assert "not a comparison folder" in capsys.readouterr().err
    assert sorted(p.name for p in (mvtec / "npy").iterdir()) == before
    assert main(["report", "--scores", str(folders[0]), "--out", str(tmp_path / "one")]) == 2
    assert "two or more" in capsys.readouterr().err
