"""Anomaly-detection datasets: MVTec-AD, Magnetic Tile, plain folders, frame sequences.

Every item is a dict: ``image`` (C, H, W) float32, ``mask`` (H, W) bool (all False
where the image is normal or has no pixel labels), ``label`` int (1 = anomalous),
``defect`` str and ``path`` str. Every file is decoded once when the dataset is
built, so an unreadable or truncated image, a missing mask or a size mismatch fails
at once with the file named; ``skip_bad=True`` skips such images instead, warns with
the count and keeps the list in ``dataset.skipped``.
"""

import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import torch
from tqdm import tqdm

from vqfast.data.transforms import DatasetError, ImageTransform

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


@dataclass(frozen=True)
class Record:
    image: Path
    mask: Optional[Path]  # None: no pixel labels (an all-False mask is served)
    label: int
    defect: str


def list_images(folder: Path) -> List[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: folder not found")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)


class AnomalyDataset(torch.utils.data.Dataset):
    """Records decoded through ``transform``; see the module docstring for items.

    Args:
        records: what to load, in order.
        transform: an ImageTransform (default: file size, 3 channels, [0, 1]).
        skip_bad: skip unreadable images, missing masks and size mismatches (with a
            warning) instead of raising DatasetError.
        cache: keep decoded tensors in memory (files are decoded once either way, to
            check them).
        name: used in messages.
    """

    def __init__(self, records: List[Record], transform: Optional[ImageTransform] = None, *,
                 skip_bad: bool = False, cache: bool = True, name: str = "dataset"):
        if not records:
            raise DatasetError(f"{name}: no images found")
        self.transform = transform or ImageTransform()
        self.name = name
        self.skipped: List[Tuple[str, str]] = []
        self.records: List[Record] = []
        self._cache = [] if cache else None
        for record in tqdm(records, desc=f"checking {name}", disable=len(records) < 256, leave=False):
            try:
                item = self._load(record)
            except DatasetError as exc:
                if not skip_bad:
                    raise
                self.skipped.append((str(record.image), str(exc)))
                continue
            if not self.records:
                first, shape = record, tuple(item["image"].shape)
            elif tuple(item["image"].shape) != shape:  # refused here, naming two files, not inside a DataLoader
                raise DatasetError(f"{name}: images differ in size ({record.image} gives "
                                   f"{tuple(item['image'].shape)}, {first.image} gives {shape}): pass a transform "
                                   f"that resizes them, e.g. ImageTransform(size=({shape[1]}, {shape[2]}))")
            self.records.append(record)
            if self._cache is not None:
                self._cache.append(item)
        if self.skipped:
            warnings.warn(f"{name}: skipped {len(self.skipped)} of {len(records)} images (first: {self.skipped[0][1]}); "
                          "see .skipped", RuntimeWarning, stacklevel=2)
        if not self.records:
            raise DatasetError(f"{name}: every image was skipped")

    def _load(self, record: Record) -> dict:
        image = self.transform.image(record.image)
        if record.mask is not None and not record.mask.is_file():
            raise DatasetError(f"{record.image}: its mask {record.mask} is missing")
        if record.mask is not None:
            mask = self.transform.mask(record.mask, record.image)
        else:
            mask = torch.zeros(image.shape[1:], dtype=torch.bool)
        return {"image": image, "mask": mask, "label": record.label, "defect": record.defect, "path": str(record.image)}

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        return self._cache[i] if self._cache is not None else self._load(self.records[i])

    @property
    def labels(self) -> torch.Tensor:
        """(len,) int64."""
        return torch.tensor([r.label for r in self.records], dtype=torch.int64)

    @property
    def has_masks(self) -> bool:
        """Whether every anomalous image has pixel labels (pixel metrics need them)."""
        return all(r.mask is not None for r in self.records if r.label == 1)


def mvtec_records(root, category: str, split: str) -> List[Record]:
    """MVTec-AD layout: <cat>/train/good, <cat>/test/<defect>, <cat>/ground_truth/<defect>/<stem>_mask.png."""
    base = Path(root) / category
    if split == "train":
        return [Record(p, None, 0, "good") for p in list_images(base / "train" / "good")]
    if split != "test":
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    test = base / "test"
    if not test.is_dir():
        raise DatasetError(f"{test}: folder not found")
    records = []
    for defect_dir in sorted(d for d in test.iterdir() if d.is_dir()):
        for p in list_images(defect_dir):
            if defect_dir.name == "good":
                records.append(Record(p, None, 0, "good"))
            else:
                mask = base / "ground_truth" / defect_dir.name / f"{p.stem}_mask.png"
                records.append(Record(p, mask, 1, defect_dir.name))
    return records


def magnetic_tile_records(root, split: str, split_file=None) -> List[Record]:
    """Magnetic Tile layout: MT_<class>/Imgs/<name>.jpg with <name>.png masks, and a
    split.json {"train": {class: [names]}, "test": {class: [names]}}."""
    root = Path(root)
    split_file = Path(split_file) if split_file is not None else root / "split.json"
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    try:
        spec = json.loads(split_file.read_text())[split]
    except FileNotFoundError as exc:
        raise DatasetError(f"{split_file}: split file not found") from exc
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{split_file}: not a split file with a {split!r} entry ({exc})") from exc
    records = []
    for cls in sorted(spec):
        for name in spec[cls]:
            image = root / cls / "Imgs" / f"{name}.jpg"
            anomalous = cls != "MT_Free"
            mask = root / cls / "Imgs" / f"{name}.png" if anomalous else None
            records.append(Record(image, mask, int(anomalous), cls))
    return records


def _mask_files(images: List[Path]) -> List[Path]:
    """Files that look like masks beside their images: <stem>_mask.png next to <stem>.*,
    or <stem>.png next to a <stem> image of another format (Magnetic Tile's layout)."""
    by_stem: dict = {}
    for p in images:
        by_stem.setdefault(p.stem, []).append(p)
    masks = [p for p in images if p.stem.endswith("_mask") and p.stem[:-5] in by_stem]
    masks += [p for p in images if p.suffix.lower() == ".png" and len(by_stem[p.stem]) > 1]
    return sorted(masks)


def folder_records(root, label: int = 0, masks_root=None) -> List[Record]:
    """A plain folder of images, all with ``label``; masks, if given, are
    <masks_root>/<stem>.png or <stem>_mask.png. With masks_root the same folder (e.g. a
    Magnetic Tile class folder, x.jpg beside its mask x.png) the masks are not images;
    without masks_root such a folder is refused rather than loading masks as images."""
    root = Path(root)
    images = list_images(root)
    masks = _mask_files(images)
    if masks and (masks_root is None or Path(masks_root).resolve() != root.resolve()):
        raise DatasetError(f"{root}: holds {len(masks)} masks beside its images (e.g. {masks[0].name}): pass "
                           f"masks_root={str(root)!r} (Python) to use them as masks; on the command line move them to "
                           "ground_truth/<class>/ beside the class folders, or out (for Magnetic Tile, "
                           "vqfast.data.MagneticTile reads its layout)")
    records = []
    for p in (p for p in images if p not in set(masks)):
        mask = None
        if masks_root is not None:
            candidates = [c for c in (Path(masks_root) / f"{p.stem}{suffix}.png" for suffix in ("", "_mask"))
                          if c.resolve() != p.resolve()]
            mask = next((c for c in candidates if c.is_file()), candidates[0])
        records.append(Record(p, mask, label, "anomalous" if label else "good"))
    return records


def frame_sequence_records(root) -> List[Record]:
    """Video-surveillance layout: <root>/<seq>/ holds the frames (sorted by name) and
    labels.txt (one 0/1 per frame); optional pixel masks in <root>/<seq>_gt/, one per
    frame in the same order."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: folder not found")
    records = []
    for seq in sorted(d for d in root.iterdir() if d.is_dir() and not d.name.endswith("_gt")):
        frames = list_images(seq)
        labels_file = seq / "labels.txt"
        try:
            labels = [int(v) for v in labels_file.read_text().split()]
        except FileNotFoundError as exc:
            raise DatasetError(f"{labels_file}: per-frame labels not found") from exc
        except ValueError as exc:
            raise DatasetError(f"{labels_file}: labels must be 0 or 1 ({exc})") from exc
        if len(labels) != len(frames) or any(v not in (0, 1) for v in labels):
            raise DatasetError(f"{labels_file}: {len(labels)} labels of 0/1 expected one per frame ({len(frames)} frames)")
        gt = root / f"{seq.name}_gt"
        masks = list_images(gt) if gt.is_dir() else [None] * len(frames)
        if len(masks) != len(frames):
            raise DatasetError(f"{gt}: {len(masks)} masks for {len(frames)} frames in {seq}")
        records += [Record(f, m, y, seq.name) for f, m, y in zip(frames, masks, labels)]
    return records


def unwrap_subset(dataset):
    """(the underlying dataset, the positions in it) of a Dataset or a Subset of one."""
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset.dataset, list(dataset.indices)
    return dataset, list(range(len(dataset)))


def balanced_subset(dataset, n: int) -> torch.utils.data.Subset:
    """The first n // 2 defect-free and the first n - n // 2 defective items of a dataset
    (a smoke test's test split that still has both classes)."""
    labels = dataset_labels(dataset)
    normal, defective = (labels == 0).nonzero()[:, 0].tolist(), (labels == 1).nonzero()[:, 0].tolist()
    return torch.utils.data.Subset(dataset, normal[: n // 2] + defective[: n - n // 2])


def dataset_labels(dataset) -> torch.Tensor:
    """(N,) int64 labels of a dataset, a Subset or a ConcatDataset of them, without
    loading images where the dataset keeps records."""
    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return torch.cat([dataset_labels(d) for d in dataset.datasets])
    if isinstance(dataset, torch.utils.data.Subset):
        return dataset_labels(dataset.dataset)[torch.as_tensor(dataset.indices, dtype=torch.int64)]
    if hasattr(dataset, "labels"):
        return torch.as_tensor(dataset.labels, dtype=torch.int64)
    return torch.tensor([int(dataset[i]["label"]) for i in range(len(dataset))], dtype=torch.int64)


def carve_defective(dataset, fraction: float, seed: int = 0) -> Tuple[torch.utils.data.Subset, torch.utils.data.Subset]:
    """(carved, rest): ``fraction`` of each defect class's items, drawn with ``seed``
    (rounded, at least one per class that has any), and every other item in order.

    The density/restoration paper validates on "10% of normal images and 10% of
    anomalous images" and tests on the rest; with a fixed split whose training part is
    defect-free, the anomalous tenth has to come from the test split, stratified so that
    every defect class is in both."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    base, index = unwrap_subset(dataset)
    classes = {}
    for position, i in enumerate(index):
        record = base.records[i]
        if record.label == 1:
            classes.setdefault(record.defect, []).append(position)
    generator = torch.Generator().manual_seed(seed)
    carved = set()
    for defect in sorted(classes):
        members = classes[defect]
        take = max(1, round(fraction * len(members)))
        carved.update(members[j] for j in torch.randperm(len(members), generator=generator)[:take].tolist())
    return (torch.utils.data.Subset(base, [index[j] for j in sorted(carved)]),
            torch.utils.data.Subset(base, [index[j] for j in range(len(index)) if j not in carved]))


class MVTecAD(AnomalyDataset):
    def __init__(self, root, category: str, split: str = "train", transform=None, *, skip_bad=False, cache=True):
        super().__init__(mvtec_records(root, category, split), transform, skip_bad=skip_bad, cache=cache,
                         name=f"MVTec-AD {category}/{split}")


class MagneticTile(AnomalyDataset):
    def __init__(self, root, split: str = "train", transform=None, *, split_file=None, skip_bad=False, cache=True):
        super().__init__(magnetic_tile_records(root, split, split_file), transform, skip_bad=skip_bad, cache=cache,
                         name=f"Magnetic Tile/{split}")


class ImageFolder(AnomalyDataset):
    def __init__(self, root, transform=None, *, label: int = 0, masks_root=None, skip_bad=False, cache=True):
        super().__init__(folder_records(root, label, masks_root), transform, skip_bad=skip_bad, cache=cache,
                         name=str(root))


class FrameSequences(AnomalyDataset):
    def __init__(self, root, transform=None, *, skip_bad=False, cache=True):
        super().__init__(frame_sequence_records(root), transform, skip_bad=skip_bad, cache=cache, name=f"frames {root}")
