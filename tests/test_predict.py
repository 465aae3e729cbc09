"""vqfast.load(run).predict(x) and vqfast predict: one image in, the same answer as
vqfast score's for it, whatever form the image comes in."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

import vqfast
from vqfast.app.score import load_map
from vqfast.cli import main
from conftest import image_folders

TINY = ["--size", "32", "--epochs", "1", "--set", "hidden=8", "--set", "codes=8", "--set", "code_dim=4",
        "--set", "downsamples=2", "--set", "res_blocks=1"]


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = image_folders(tmp_path_factory.mktemp("predict"), size=32, seed=7, n_train=16, n_test_normal=3,
                         n_test_anomalous=3)
    assert main(["train", "vqvae", "--data", str(root / "train"), "--out", str(root / "run"), *TINY]) == 0
    assert main(["score", "regenerative", "--run", str(root / "run"), "--data", str(root / "test"),
                 "--out", str(root / "scores")]) == 0
    records = [json.loads(line) for line in (root / "scores" / "scores.jsonl").read_text().splitlines()]
    summary = json.loads((root / "scores" / "summary.json").read_text())
    return root, records, summary


def test_predict_equals_vqfast_score(scored):
    root, records, summary = scored
    detector = vqfast.load(root / "run")
    assert detector.threshold == pytest.approx(summary["threshold"]["value"], rel=1e-6)  # the same auto rule
    results = detector.predict([r["path"] for r in records])
    for r, got in zip(records, results):
        assert got["score"] == pytest.approx(r["score"], rel=1e-5, abs=1e-7)
        np.testing.assert_allclose(got["map"], load_map(root / "scores", r), rtol=1e-5, atol=1e-6)
        assert got["decision"] == r["decision"]


def test_every_input_form_gives_the_same_answer(scored):
    root, records, _ = scored
    detector = vqfast.load(root / "run", threshold=None)
    path = records[-1]["path"]
    by_path = detector.predict(path)
    assert by_path["decision"] is None and by_path["map"].shape == (32, 32)
    with Image.open(path) as im:
        rgb = im.convert("RGB")
    tensor = detector.preprocess(path)[0]
    assert tuple(detector.preprocess([path, path]).shape) == (2, 3, 32, 32)
    for other in (detector.predict(rgb), detector.predict(np.asarray(rgb)), detector.predict(tensor),
                  detector.predict(tensor[None])[0], detector.predict(np.asarray(rgb, dtype=np.float32) / 255)):
        assert other["score"] == pytest.approx(by_path["score"], rel=1e-5, abs=1e-6)
        np.testing.assert_allclose(other["map"], by_path["map"], rtol=1e-4, atol=1e-5)
    large = np.asarray(rgb.resize((96, 64)))  # the map comes back at the input's resolution
    assert detector.predict(large)["map"].shape == (64, 96)
    with pytest.raises(ValueError, match="predict takes"):
        detector.predict(torch.zeros(2, 5, 32, 32)[0])


def test_the_command_prints_one_json_line_an_image(scored, capsys, tmp_path):
    root, records, _ = scored
    capsys.readouterr()
    paths = [r["path"] for r in records[:2]]
    assert main(["predict", "--run", str(root / "run"), "--threshold", "1.5", *paths]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["path"] for line in lines] == paths and all(line["threshold"] == 1.5 for line in lines)
    assert [line["score"] for line in lines] == pytest.approx([r["score"] for r in records[:2]], rel=1e-5)
    assert main(["predict", "--run", str(root / "run"), "--tile", "16", "--stride", "8", paths[0]]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == paths[0]
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert main(["predict", "--run", str(root / "run"), str(tmp_path / "bad.png")]) == 2
    assert "bad.png" in capsys.readouterr().err


def test_tiles_stitch_to_what_scoring_each_tile_by_hand_gives(scored):
    """A 64 x 96 image, 32-pixel tiles every 16 pixels: the stitched map is the average of
    the tiles' maps where they overlap, the score its mean (the scorer's reduction)."""
    root, _, _ = scored
    detector = vqfast.load(root / "run", threshold=None)
    image = torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1))
    got = detector.predict(image, tile=32, stride=16, batch_size=5)
    total, count = torch.zeros(64, 96), torch.zeros(64, 96)
    for y in (0, 16, 32):
        for x in (0, 16, 32, 48, 64):
            total[y:y + 32, x:x + 32] += detector.scorer.score(image[None, :, y:y + 32, x:x + 32]).anomaly_map[0]
            count[y:y + 32, x:x + 32] += 1
    expected = total / count
    assert got["tiles"] == 15 and got["map"].shape == (64, 96)
    np.testing.assert_allclose(got["map"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert got["score"] == pytest.approx(float(expected.mean()), rel=1e-5)  # Regenerative: the mean
    last = detector.predict(image, tile=40, stride=30)  # offsets 0, 24 and 0, 30, 56: flush with the border
    assert last["tiles"] == 6 and last["map"].shape == (64, 96)
    with pytest.raises(ValueError, match="tile must be"):
        detector.predict(image, tile=80)


def test_a_large_image_is_scored_a_tile_batch_at_a_time(scored):
    """2048 x 2048 with a 32-pixel model and 256-pixel tiles: the scorer never sees more than
    one batch of model-sized tiles, whatever the image's size."""
    root, _, _ = scored
    detector = vqfast.load(root / "run", threshold=None)
    seen = []
    score = detector.scorer.score

    def spy(batch):
        seen.append(tuple(batch.shape))
        return score(batch)

    detector.scorer.score = spy
    got = detector.predict(np.zeros((2048, 2048), dtype=np.uint8), tile=256, stride=256, batch_size=8)
    assert got["tiles"] == 64 and got["map"].shape == (2048, 2048)
    assert len(seen) == 8 and all(shape == (8, 3, 32, 32) for shape in seen)
