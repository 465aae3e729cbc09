"""vqfast.data: folder layouts, transforms, bad files and the procedural dataset."""

import json
import pathlib

import numpy as np
import pytest
import torch
from PIL import Image

from vqfast.data import (
    DatasetError,
    FrameSequences,
    ImageFolder,
    ImageTransform,
    MagneticTile,
    MVTecAD,
    ProceduralDefects,
    procedural_splits,
)
from vqfast.data.procedural import make_sample

SHARED_MT = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "magnetic_tile"


def _img(path, size=(40, 30), mode="RGB", value=None, rng=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    if value is None:
        arr = (rng or np.random.default_rng(0)).integers(0, 256, (h, w, 3) if mode == "RGB" else (h, w), dtype=np.uint8)
    else:
        arr = np.full((h, w, 3) if mode == "RGB" else (h, w), value, dtype=np.uint8)
    Image.fromarray(arr, mode).save(path)
    return path


def _mask(path, size=(40, 30), box=(5, 5, 15, 12)):
    w, h = size
    arr = np.zeros((h, w), dtype=np.uint8)
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, "L").save(path)
    return path


@pytest.fixture
def mvtec(tmp_path):
    root = tmp_path / "mvtec"
    for i in range(3):
        _img(root / "bottle" / "train" / "good" / f"{i:03d}.png")
    _img(root / "bottle" / "test" / "good" / "000.png")
    for i in range(2):
        _img(root / "bottle" / "test" / "crack" / f"{i:03d}.png")
        _mask(root / "bottle" / "ground_truth" / "crack" / f"{i:03d}_mask.png")
    return root


def test_mvtec_layout(mvtec):
    train = MVTecAD(mvtec, "bottle", "train", ImageTransform(size=16))
    assert len(train) == 3 and train.labels.tolist() == [0, 0, 0]
    test = MVTecAD(mvtec, "bottle", "test", ImageTransform(size=(20, 16)))
    assert test.labels.tolist() == [1, 1, 0] and [test[i]["defect"] for i in range(3)] == ["crack", "crack", "good"]
    item = test[0]
    assert item["image"].shape == (3, 20, 16) and item["image"].dtype == torch.float32
    assert 0 <= item["image"].min() and item["image"].max() <= 1
    assert item["mask"].dtype == torch.bool and item["mask"].shape == (20, 16)
    # nearest neighbour samples pixel centres: output r reads input floor((r + 0.5) * scale)
    expected = torch.zeros(20, 16, dtype=torch.bool)
    rows = [r for r in range(20) if 5 <= int((r + 0.5) * 30 / 20) < 12]
    cols = [c for c in range(16) if 5 <= int((c + 0.5) * 40 / 16) < 15]
    expected[np.ix_(rows, cols)] = True
    assert torch.equal(item["mask"], expected)
    assert not test[2]["mask"].any() and test.has_masks


def test_transform_crop_channels_and_normalisation(tmp_path):
    path = _img(tmp_path / "a.png", size=(8, 6), mode="L", value=51)  # 51 / 255 = 0.2
    rgb = ImageTransform(channels=3).image(path)
    assert rgb.shape == (3, 6, 8) and torch.allclose(rgb, torch.full_like(rgb, 0.2))  # grey -> RGB
    t = ImageTransform(size=(6, 8), crop=(4, 4), channels=1, mean=[0.1], std=[0.5])
    assert torch.allclose(t.image(path), torch.full((1, 4, 4), 0.2))  # (0.2 - 0.1) / 0.5
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        ImageTransform(channels=2)
    with pytest.raises(ValueError, match="mean and std must be given together"):
        ImageTransform(mean=[0.5])
    with pytest.raises(ValueError, match="crop"):
        ImageTransform(crop=10).image(path)


def test_missing_mask_names_both_files_and_skip_bad_skips(mvtec):
    (mvtec / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DatasetError, match=r"crack/001.png: its mask .*001_mask.png is missing"):
        MVTecAD(mvtec, "bottle", "test")
    with pytest.warns(RuntimeWarning, match="skipped 1 of 3 images"):
        ds = MVTecAD(mvtec, "bottle", "test", skip_bad=True)
    assert len(ds) == 2 and ds.skipped[0][0].endswith("crack/001.png")


def test_truncated_and_garbage_images(mvtec):
    bad = mvtec / "bottle" / "train" / "good" / "001.png"
    data = bad.read_bytes()
    bad.write_bytes(data[: len(data) // 2])
    (mvtec / "bottle" / "train" / "good" / "002.png").write_bytes(b"not an image at all")
    with pytest.raises(DatasetError, match=r"001.png: unreadable or truncated image"):
        MVTecAD(mvtec, "bottle", "train")
    with pytest.warns(RuntimeWarning, match="skipped 2 of 3"):
        ds = MVTecAD(mvtec, "bottle", "train", skip_bad=True)
    assert [pathlib.Path(p).name for p, _ in ds.skipped] == ["001.png", "002.png"]


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "good" / "a.jpg"
    _img(tmp_path / "good" / "a.png", size=(64, 64))
    Image.open(tmp_path / "good" / "a.png").save(path, quality=90)
    (tmp_path / "good" / "a.png").unlink()
    path.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DatasetError, match=r"a.jpg: unreadable or truncated"):
        ImageFolder(tmp_path / "good")


def test_mask_size_mismatch_and_empty_folder(tmp_path):
    _img(tmp_path / "imgs" / "x.png", size=(40, 30))
    _mask(tmp_path / "masks" / "x.png", size=(20, 30))
    with pytest.raises(DatasetError, match=r"x.png: mask is 20x30 but its image .*x.png is 40x30"):
        ImageFolder(tmp_path / "imgs", label=1, masks_root=tmp_path / "masks")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(DatasetError, match="folder not found"):
        ImageFolder(tmp_path / "absent")


def test_image_folder_with_mask_suffix(tmp_path):
    _img(tmp_path / "imgs" / "x.png")
    _mask(tmp_path / "masks" / "x_mask.png")
    ds = ImageFolder(tmp_path / "imgs", label=1, masks_root=tmp_path / "masks")
    assert ds[0]["label"] == 1 and int(ds[0]["mask"].sum()) == 70


def test_image_folder_refuses_masks_beside_images_unless_told(tmp_path):
    """A Magnetic Tile class folder holds x.jpg beside its mask x.png: loading both as
    images would train or score on masks."""
    root = tmp_path / "MT_Crack" / "Imgs"
    for name in ("a", "b"):
        _img(root / f"{name}.jpg", mode="L")
        _mask(root / f"{name}.png")
    with pytest.raises(DatasetError, match=r"Imgs: holds 2 masks beside its images \(e.g. a.png\): pass masks_root="):
        ImageFolder(root)
    ds = ImageFolder(root, label=1, masks_root=root)
    assert [pathlib.Path(ds[i]["path"]).name for i in range(2)] == ["a.jpg", "b.jpg"]
    assert all(int(ds[i]["mask"].sum()) == 70 for i in range(2))
    _img(tmp_path / "mv" / "c.png")
    _mask(tmp_path / "mv" / "c_mask.png")
    with pytest.raises(DatasetError, match=r"holds 1 masks beside its images \(e.g. c_mask.png\)"):
        ImageFolder(tmp_path / "mv")


@pytest.mark.skipif(not (SHARED_MT / "split.json").is_file(), reason="shared Magnetic Tile data not present")
def test_image_folder_on_a_real_magnetic_tile_class_folder():
    folder = SHARED_MT / "MT_Fray" / "Imgs"
    with pytest.raises(DatasetError, match="masks beside its images"):
        ImageFolder(folder, ImageTransform(size=32, channels=1))
    ds = ImageFolder(folder, ImageTransform(size=32, channels=1), label=1, masks_root=folder)
    assert len(ds) == 32 and all(ds[i]["path"].endswith(".jpg") for i in range(len(ds)))


def test_mixed_image_sizes_fail_when_the_dataset_is_built(tmp_path):
    _img(tmp_path / "f" / "a.png", size=(40, 30))
    _img(tmp_path / "f" / "b.png", size=(41, 30))
    with pytest.raises(DatasetError, match=r"images differ in size \(.*b.png gives \(3, 30, 41\), .*a.png gives "
                                           r"\(3, 30, 40\)\): pass a transform that resizes them, e.g. "
                                           r"ImageTransform\(size=\(30, 40\)\)"):
        ImageFolder(tmp_path / "f")
    assert len(ImageFolder(tmp_path / "f", ImageTransform(size=(30, 40)))) == 2


def test_magnetic_tile_layout_and_split(tmp_path):
    root = tmp_path / "mt"
    for name in ["a", "b", "c"]:
        _img(root / "MT_Free" / "Imgs" / f"{name}.jpg", mode="L")
    _img(root / "MT_Crack" / "Imgs" / "d.jpg", mode="L")
    _mask(root / "MT_Crack" / "Imgs" / "d.png")
    split = {"train": {"MT_Free": ["a", "b"]}, "test": {"MT_Free": ["c"], "MT_Crack": ["d"]}}
    (root / "split.json").write_text(json.dumps(split))
    t = ImageTransform(size=32, channels=1)
    assert len(MagneticTile(root, "train", t)) == 2
    test = MagneticTile(root, "test", t)
    assert test.labels.tolist() == [1, 0] and test[0]["mask"].any() and not test[1]["mask"].any()
    with pytest.raises(DatasetError, match=r"nope.json: split file not found"):
        MagneticTile(root, "train", split_file=root / "nope.json")


@pytest.mark.skipif(not (SHARED_MT / "split.json").is_file(), reason="shared Magnetic Tile data not present")
def test_real_magnetic_tile_split_counts():
    t = ImageTransform(size=64, channels=1)
    train, test = MagneticTile(SHARED_MT, "train", t), MagneticTile(SHARED_MT, "test", t)
    assert len(train) == 761 and int(train.labels.sum()) == 0
    assert len(test) == 583 and int(test.labels.sum()) == 392 and test.has_masks


def test_frame_sequences(tmp_path):
    for i in range(4):
        _img(tmp_path / "Test001" / f"{i:03d}.png", size=(16, 12))
        _mask(tmp_path / "Test001_gt" / f"{i:03d}.png", size=(16, 12), box=(2, 2, 5, 5) if i >= 2 else (0, 0, 0, 0))
    (tmp_path / "Test001" / "labels.txt").write_text("0 0 1 1\n")
    ds = FrameSequences(tmp_path)
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds[3]["mask"].sum() == 9 and ds[3]["defect"] == "Test001"
    (tmp_path / "Test001" / "labels.txt").write_text("0 1\n")
    with pytest.raises(DatasetError, match=r"labels.txt: 2 labels of 0/1 expected one per frame \(4 frames\)"):
        FrameSequences(tmp_path)


def test_procedural_is_deterministic_and_masks_are_exact():
    a, b = ProceduralDefects(3, 9, size=48, seed=7), ProceduralDefects(3, 9, size=48, seed=7)
    assert all(torch.equal(a[i]["image"], b[i]["image"]) for i in range(12))
    assert a.labels.tolist() == [0] * 3 + [1] * 9
    assert not torch.equal(a[0]["image"], ProceduralDefects(3, 0, size=48, seed=8)[0]["image"])
    for i in range(3, 12):
        anomalous, normal = a[i], make_sample(7, i, 48, anomalous=False)
        changed = (anomalous["image"] != normal["image"]).any(0)
        mask = anomalous["mask"]
        assert mask.any() and not (changed & ~mask).any()  # nothing changes outside the mask
        assert changed[mask].float().mean() > 0.9  # and the mask is what changed
    train, test = procedural_splits(size=32, n_train=5, n_test_normal=2, n_test_anomalous=3)
    assert len(train) == 5 and test.labels.tolist() == [0, 0, 1, 1, 1]
    assert {a[i]["defect"] for i in range(3, 12)} <= {"blob", "scratch", "patch"}


def test_augment_is_a_pure_function_of_seed_and_key():
    from vqfast.data import Augment

    item = make_sample(0, 0, 32, True, 3)
    aug = Augment(seed=3)
    a, b = aug(item, 7), aug(item, 7)
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
    assert not torch.equal(aug(item, 8)["image"], a["image"]) and not torch.equal(Augment(seed=4)(item, 7)["image"],
                                                                                  a["image"])
    off = Augment(noise_std=0, contrast=0, intensity=0, translate=0, rotate=0, scale=0)
    assert torch.equal(off(item, 1)["image"], item["image"]) and torch.equal(off(item, 1)["mask"], item["mask"])


def test_augment_moves_the_mask_with_the_image():
    from vqfast.data import Augment

    image = torch.zeros(1, 32, 32)
    image[:, 8:16, 8:16] = 1.0
    item = {"image": image, "mask": image[0] > 0.5, "label": 1}
    shift = Augment(noise_std=0, contrast=0, intensity=0, rotate=0, scale=0, translate=0.25, seed=0)
    out = shift(item, 0)

    def centre(m):
        ys, xs = torch.nonzero(m, as_tuple=True)
        return torch.stack([ys.float().mean(), xs.float().mean()])

    moved = centre(out["mask"]) - centre(item["mask"])
    assert moved.abs().max() > 1  # it moved
    assert (moved - (centre(out["image"][0] > 0.5) - centre(item["mask"]))).abs().max() <= 1  # with the image
    assert abs(int(out["mask"].sum()) - 64) <= 16


def test_trainer_feeds_augmented_epochs_reproducibly(tmp_path):
    from vqfast.data import Augment, AugmentedDataset
    from vqfast.models import VQVAE, VQVAEConfig
    from vqfast.training import TrainConfig, Trainer

    def trainer(out, epochs):
        torch.manual_seed(0)
        data = AugmentedDataset(ProceduralDefects(8, 0, size=16), Augment(seed=1))
        model = VQVAE(VQVAEConfig(hidden=8, res_blocks=1, num_codes=8, code_dim=4, downsamples=2))
        return Trainer(model, data, config=TrainConfig(epochs=epochs, batch_size=4, lr=1e-3), out_dir=out,
                       progress=False)

    straight = trainer(tmp_path / "a", 3)
    straight.fit()
    assert straight.train_set.epoch == 2  # the last epoch's draws
    trainer(tmp_path / "b", 1).fit()
    resumed = trainer(tmp_path / "b", 3)
    resumed.fit(resume=True)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_writing_a_folder_again_keeps_identical_files(tmp_path):
    """write_image_folder leaves a file that holds the same PNG untouched (runs on the
    folder resume: their data identity has modification times) and rewrites one that
    differs."""
    from vqfast.data import procedural_splits, write_image_folder

    _, test = procedural_splits(size=16, seed=0, n_train=1, n_test_normal=2, n_test_anomalous=2)
    root = write_image_folder(test, tmp_path / "t")
    files = sorted(p for p in root.rglob("*.png"))
    assert len(files) == 6  # 4 images, 2 masks
    stamps = {p: p.stat().st_mtime_ns for p in files}
    changed = files[0]
    changed.write_bytes(b"other")
    write_image_folder(test, root)
    for p in files:
        assert (p.stat().st_mtime_ns == stamps[p]) == (p != changed)
    fresh = write_image_folder(test, tmp_path / "fresh")
    assert changed.read_bytes() == (fresh / changed.relative_to(root)).read_bytes()
