"""score_dataset: results written per batch as they come, and a resume that reuses them."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vqfast.checkpoint import CheckpointError
from vqfast.data import ImageFolder, ImageTransform, ProceduralDefects
from vqfast.scorers import ScoreBatch, score_dataset, scorer_fingerprint


class MeanScorer:
    """Map = the image's channel mean; counts its calls."""

    def __init__(self):
        self.calls = 0

    def score(self, images):
        self.calls += 1
        maps = images.mean(1)
        return ScoreBatch(maps.flatten(1).amax(1), maps)


def test_writes_each_batch_and_resumes(tmp_path):
    data = ProceduralDefects(5, 4, size=16)
    first = MeanScorer()
    full = score_dataset(first, data, batch_size=4, out_dir=tmp_path)
    assert first.calls == 3 and len(list(tmp_path.glob("batch_*.safetensors"))) == 3
    assert full[0].shape == (9,) and full[1].shape == (9, 16, 16) and full[2].tolist() == [0] * 5 + [1] * 4
    (tmp_path / "batch_00001.safetensors").unlink()  # as if the run died while scoring batch 1
    again = MeanScorer()
    resumed = score_dataset(again, data, batch_size=4, out_dir=tmp_path, resume=True)
    assert again.calls == 1
    for a, b in zip(full, resumed):
        assert torch.equal(a, b)
    with pytest.raises(CheckpointError, match="batch_00000.safetensors: scored under other conditions.*"
                                              "batch_size was 4, is 3"):
        score_dataset(MeanScorer(), data, batch_size=3, out_dir=tmp_path, resume=True)


def test_resume_refuses_batches_of_another_model(tmp_path):
    data = ProceduralDefects(3, 1, size=16)
    score_dataset(MeanScorer(), data, batch_size=2, out_dir=tmp_path, stamp={"step": 10})
    assert score_dataset(MeanScorer(), data, batch_size=2, out_dir=tmp_path, resume=True, stamp={"step": 10})
    with pytest.raises(CheckpointError, match="stamp 'step' was '10', is '11'"):
        score_dataset(MeanScorer(), data, batch_size=2, out_dir=tmp_path, resume=True, stamp={"step": 11})


def test_resume_refuses_another_dataset_of_the_same_length(tmp_path):
    score_dataset(MeanScorer(), ProceduralDefects(3, 1, size=16, seed=0), batch_size=2, out_dir=tmp_path)
    with pytest.raises(CheckpointError, match=r"the dataset's items 0..1 changed"):
        score_dataset(MeanScorer(), ProceduralDefects(3, 1, size=16, seed=1), batch_size=2, out_dir=tmp_path,
                      resume=True)


def _folder(root, shades):
    root.mkdir(exist_ok=True)
    for name, shade in shades.items():
        Image.fromarray(np.full((8, 8), shade, dtype=np.uint8)).save(root / name)
    return ImageFolder(root, ImageTransform(channels=1))


def test_resume_names_the_file_that_changed(tmp_path):
    out, root = tmp_path / "scores", tmp_path / "images"
    score_dataset(MeanScorer(), _folder(root, {"a.png": 10, "b.png": 20, "c.png": 30}), batch_size=2, out_dir=out)
    with pytest.raises(CheckpointError, match="items 0..1 changed .same files, other content"):
        score_dataset(MeanScorer(), _folder(root, {"b.png": 21}), batch_size=2, out_dir=out, resume=True)
    (root / "a.png").unlink()
    with pytest.raises(CheckpointError, match="item 0 was .*a.png, is .*b.png"):
        score_dataset(MeanScorer(), _folder(root, {"d.png": 40}), batch_size=2, out_dir=out, resume=True)


class ModelScorer:
    """A scorer with a model and settings, as the real ones are."""

    def __init__(self, weight=1.0, reduction="max", fast=True):
        self.model = torch.nn.Conv2d(3, 1, 1, bias=False)
        torch.nn.init.constant_(self.model.weight, weight)
        self.reduction, self.fast = reduction, fast

    def score(self, images):
        maps = self.model(images)[:, 0]
        return ScoreBatch(maps.flatten(1).amax(1) if self.reduction == "max" else maps.flatten(1).mean(1), maps)


def test_resume_refuses_another_model_or_setting_and_ignores_execution_choices(tmp_path):
    data = ProceduralDefects(3, 1, size=16)
    full = score_dataset(ModelScorer(), data, batch_size=2, out_dir=tmp_path)
    (tmp_path / "batch_00001.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model or fitted state 'model' changed"):
        score_dataset(ModelScorer(weight=2.0), data, batch_size=2, out_dir=tmp_path, resume=True)
    with pytest.raises(CheckpointError, match="setting 'reduction' changed \\('max' -> 'mean'\\)"):
        score_dataset(ModelScorer(reduction="mean"), data, batch_size=2, out_dir=tmp_path, resume=True)
    resumed = score_dataset(ModelScorer(fast=False), data, batch_size=2, out_dir=tmp_path, resume=True)
    assert all(torch.equal(a, b) for a, b in zip(full, resumed))


def test_fresh_run_replaces_the_folder(tmp_path):
    score_dataset(MeanScorer(), ProceduralDefects(5, 0, size=16), batch_size=1, out_dir=tmp_path)
    score_dataset(MeanScorer(), ProceduralDefects(2, 0, size=16), batch_size=1, out_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.glob("batch_*")) == ["batch_00000.safetensors", "batch_00001.safetensors"]


def test_fingerprint_covers_models_settings_and_fitted_state():
    a, b = ModelScorer(), ModelScorer()
    assert scorer_fingerprint(a) == scorer_fingerprint(b)
    b.bank = {2: torch.zeros(3)}
    assert json.loads(scorer_fingerprint(b)["weights"]).keys() == {"bank", "model"}
    with torch.no_grad():
        b.model.weight[0, 0, 0, 0] += 1e-7
    assert json.loads(scorer_fingerprint(b)["weights"])["model"] != json.loads(scorer_fingerprint(a)["weights"])["model"]


def test_resume_names_paths_that_changed_when_the_images_did_not(tmp_path):
    """The same images copied to another folder: refused, and the message says it is the
    paths (not an empty reason)."""
    out = tmp_path / "scores"
    shades = {"a.png": 10, "b.png": 20}
    score_dataset(MeanScorer(), _folder(tmp_path / "one", shades), batch_size=2, out_dir=out)
    with pytest.raises(CheckpointError, match=r"the same images read from other paths \(item 0 was .*one.*a.png, "
                                              r"is .*two.*a.png\)"):
        score_dataset(MeanScorer(), _folder(tmp_path / "two", shades), batch_size=2, out_dir=out, resume=True)
