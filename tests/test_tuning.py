"""Threshold percentiles searched on a validation split, and the stratified split they need."""

import pathlib

import pytest
import torch

from vqfast.data import carve_defective, dataset_labels, MagneticTile, Record
from vqfast.scorers import ScoreBatch, nll_threshold, search_percentile

SHARED_MT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"


class Records(torch.utils.data.Dataset):
    def __init__(self, counts):
        self.records = [Record(pathlib.Path(f"{d}_{i}.png"), None, int(d != "good"), d)
                        for d, n in counts.items() for i in range(n)]

    def __len__(self):
        return len(self.records)

    @property
    def labels(self):
        return torch.tensor([r.label for r in self.records])


def test_carve_defective_is_stratified_seeded_and_a_partition():
    data = Records({"good": 30, "crack": 21, "hole": 4, "fray": 1})
    carved, rest = carve_defective(data, 0.1, seed=3)
    defects = [data.records[i].defect for i in carved.indices]
    assert sorted(defects) == ["crack", "crack", "fray", "hole"]  # round(2.1), at least 1, at least 1
    assert sorted(carved.indices + rest.indices) == list(range(len(data)))
    assert rest.indices == sorted(rest.indices) and all(data.records[i].label == 1 for i in carved.indices)
    again, _ = carve_defective(data, 0.1, seed=3)
    other = [carve_defective(data, 0.1, seed=s)[0].indices for s in range(4, 8)]
    assert again.indices == carved.indices and any(o != carved.indices for o in other)
    inner, _ = carve_defective(torch.utils.data.Subset(data, list(range(30, 56))), 0.1, seed=3)
    assert inner.dataset is data and all(i >= 30 for i in inner.indices)  # indices into the base dataset
    with pytest.raises(ValueError, match="fraction"):
        carve_defective(data, 1.0)


@pytest.mark.skipif(not SHARED_MT.is_dir(), reason="needs ../shared/data/magnetic_tile")
def test_magnetic_tile_validation_tenth_of_each_defect_class():
    from vqfast.data import ImageTransform

    test = MagneticTile(SHARED_MT, "test", ImageTransform(size=8, channels=1))
    carved, rest = carve_defective(test, 0.1, seed=0)
    assert len(carved) == 39 and dataset_labels(rest).tolist().count(0) == 191  # the test normals stay in test
    per_class = {}
    for i in carved.indices:
        per_class[test.records[i].defect] = per_class.get(test.records[i].defect, 0) + 1
    assert per_class == {"MT_Blowhole": 12, "MT_Break": 8, "MT_Crack": 6, "MT_Fray": 3, "MT_Uneven": 10}


class IdentityPrior(torch.nn.Module):
    """NLL of a token = its value, so percentiles of the NLLs are percentiles of the tokens."""

    def nll(self, tokens):
        return tokens.float()


class ThresholdScorer:
    """Ranks the images right (the bright spot scores high) only at ``good`` threshold,
    backwards otherwise; counts its calls."""

    calls = 0

    def __init__(self, threshold, good):
        self.threshold, self.good = threshold, good

    def score(self, images):
        ThresholdScorer.calls += 1
        peak = images.flatten(1).amax(1)
        return ScoreBatch(peak if any(abs(self.threshold - g) < 1e-9 for g in self.good) else -peak, images.mean(1))


def _val(n_normal=6, n_defective=4):
    g = torch.Generator().manual_seed(0)
    items = []
    for i in range(n_normal + n_defective):
        image = torch.rand(1, 8, 8, generator=g) * 0.5
        if i >= n_normal:
            image[0, 2, 3] = 1.0
        items.append({"image": image, "mask": torch.zeros(8, 8, dtype=torch.bool), "label": int(i >= n_normal)})
    return items


def test_search_picks_the_percentile_that_ranks_validation_best_and_resumes(tmp_path):
    prior, normal = IdentityPrior(), torch.arange(100).reshape(1, 10, 10)
    good = [nll_threshold(prior, normal, 60)]
    found = search_percentile(lambda t: ThresholdScorer(t, good), prior, normal, _val(), out_dir=tmp_path)
    assert found["percentile"] == 60 and found["threshold"] == good[0]
    assert [r["percentile"] for r in found["grid"]] == [20, 40, 60, 80, 90]
    assert [r["image_auroc"] for r in found["grid"]] == [0.0, 0.0, 1.0, 0.0, 0.0]
    assert [r["threshold"] for r in found["grid"]] == [nll_threshold(prior, normal, p) for p in (20, 40, 60, 80, 90)]
    ThresholdScorer.calls = 0
    again = search_percentile(lambda t: ThresholdScorer(t, good), prior, normal, _val(), out_dir=tmp_path, resume=True)
    assert again == found and ThresholdScorer.calls == 0  # every percentile's scores read back


def test_search_breaks_ties_towards_the_lower_percentile_and_needs_both_classes():
    prior, normal = IdentityPrior(), torch.arange(100).reshape(1, 10, 10)
    good = [nll_threshold(prior, normal, p) for p in (40, 80)]
    found = search_percentile(lambda t: ThresholdScorer(t, good), prior, normal, _val())
    assert found["percentile"] == 40
    with pytest.raises(ValueError, match="normal and anomalous"):
        search_percentile(lambda t: ThresholdScorer(t, good), prior, normal, _val(n_defective=0))
