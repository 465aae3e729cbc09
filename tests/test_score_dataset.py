"""score_dataset: results written per batch as they come, and a resume that reuses them."""

import pytest
import torch

from vqfast.checkpoint import CheckpointError
from vqfast.data import ProceduralDefects
from vqfast.scorers import ScoreBatch, score_dataset


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
    with pytest.raises(CheckpointError, match="batch_00000.safetensors: written for another"):
        score_dataset(MeanScorer(), data, batch_size=3, out_dir=tmp_path, resume=True)


def test_resume_refuses_batches_of_another_model(tmp_path):
    data = ProceduralDefects(3, 1, size=16)
    score_dataset(MeanScorer(), data, batch_size=2, out_dir=tmp_path, stamp={"step": 10})
    assert score_dataset(MeanScorer(), data, batch_size=2, out_dir=tmp_path, resume=True, stamp={"step": 10})
    with pytest.raises(CheckpointError, match="expected"):
        score_dataset(MeanScorer(), data, batch_size=2, out_dir=tmp_path, resume=True, stamp={"step": 11})
