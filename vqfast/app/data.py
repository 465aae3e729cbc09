"""Opening a user's images: ``--format mvtec|mtd|folder|frames`` and the split a step needs.

- mvtec: PATH is an MVTec-AD root and ``category`` names the object; train = train/good,
  test = test/* with ground_truth masks.
- mtd: PATH is a Magnetic Tile root with its split.json.
- folder: PATH holds images. Flat: every image unlabelled (training takes them as
  defect-free). With sub-folders: ``good`` / ``normal`` / ``ok`` are defect-free, any other
  sub-folder defective, masks (if any) in ``ground_truth/<sub-folder>/<stem>[_mask].png``.
- frames: PATH/<sequence>/ frames with labels.txt (see vqfast.data.FrameSequences).
"""

import hashlib
import json
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

from vqfast.data.datasets import (AnomalyDataset, IMAGE_EXTENSIONS, Record, folder_records, frame_sequence_records,
                                  magnetic_tile_records, mvtec_records)
from vqfast.data.transforms import DatasetError, ImageTransform

FORMATS = ("mvtec", "mtd", "folder", "frames")
NORMAL_FOLDERS = ("good", "normal", "ok")


def _not_read(folder: Path, nested: bool) -> List[str]:
    """What the folder layout leaves unread in ``folder``: files that are not images vqfast
    reads, and (``nested``) folders below the layout's depth."""
    left = []
    for p in sorted(folder.iterdir()):
        if p.is_dir():
            if nested:
                left.append(p.name + "/")
        elif p.suffix.lower() not in IMAGE_EXTENSIONS and not p.name.startswith("."):
            left.append(p.name)
    return left


def _warn_not_read(root: Path, left: List[str]) -> None:
    if left:
        warnings.warn(f"{root}: {len(left)} entries are not read (not images in {', '.join(IMAGE_EXTENSIONS)}, or "
                      f"folders below the layout): {', '.join(left[:5])}{' ...' if len(left) > 5 else ''}",
                      RuntimeWarning, stacklevel=3)


def _folder_records(root: Path) -> (List[Record], bool):
    subs = sorted(d for d in root.iterdir() if d.is_dir() and d.name != "ground_truth") if root.is_dir() else []
    if not subs:
        _warn_not_read(root, _not_read(root, nested=False))
        return folder_records(root), False
    loose = [p.name for p in sorted(root.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    if loose:
        raise DatasetError(f"{root}: holds {len(loose)} images at its top level (e.g. {loose[0]}) beside the "
                           f"sub-folders {', '.join(d.name for d in subs[:4])}: with sub-folders every image must be in "
                           "one (good/ for defect-free, a defect class otherwise); move them, or point --data at one "
                           "layout")
    left = _not_read(root, nested=False)  # the loose images refused above, what is left is not images
    for sub in subs:
        left += [f"{sub.name}/{name}" for name in _not_read(sub, nested=True)]
    _warn_not_read(root, left)
    records = []
    for sub in subs:
        normal = sub.name.lower() in NORMAL_FOLDERS
        gt = root / "ground_truth" / sub.name
        for r in folder_records(sub, label=0 if normal else 1, masks_root=None if normal or not gt.is_dir() else gt):
            records.append(Record(r.image, r.mask, r.label, sub.name))
    return records, True


def open_data(path, fmt: str, split: str, transform: ImageTransform, *, category: Optional[str] = None,
              skip_bad: bool = False) -> AnomalyDataset:
    """The images of ``split`` ("train" or "test") at ``path`` in layout ``fmt``, through
    ``transform``. ``dataset.labelled`` says whether labels are known. Raises
    DatasetError naming the path and what to pass instead."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder (--data)")
    if fmt not in FORMATS:
        raise DatasetError(f"unknown format {fmt!r} (--format takes {', '.join(FORMATS)})")
    if not path.is_dir():
        raise DatasetError(f"{path}: not a folder (--data takes a folder of images in the --format layout)")
    labelled = True
    if fmt == "mvtec":
        if not category:
            cats = sorted(d.name for d in path.iterdir() if (d / "train").is_dir())
            raise DatasetError(f"{path}: --format mvtec needs --category (one of: {', '.join(cats) or 'none found'})")
        records = mvtec_records(path, category, split)
    elif fmt == "mtd":
        records = magnetic_tile_records(path, split)
    elif fmt == "frames":
        records = frame_sequence_records(path)
    else:
        records, labelled = _folder_records(path)
        if split == "train":
            records = [r for r in records if r.label == 0]
    if not records:
        raise DatasetError(f"{path}: no images ({', '.join(IMAGE_EXTENSIONS)}) found for the {split} split "
                           f"in the {fmt} layout")
    dataset = AnomalyDataset(records, transform, skip_bad=skip_bad, name=str(path))
    dataset.labelled = labelled
    return dataset


def data_identity(dataset) -> Dict[str, object]:
    """What a run's results depend on in its data: the number of images and a digest of
    their paths, sizes and modification times (cheap; no image is read again)."""
    h = hashlib.sha256()
    for r in dataset.records:
        stat = r.image.stat()
        h.update(json.dumps([str(r.image.resolve()), stat.st_size, stat.st_mtime_ns, r.label]).encode())
    return {"images": len(dataset.records), "digest": h.hexdigest()[:16]}


def held_out(n: int, fraction: float, seed: int) -> (List[int], List[int]):
    """(train, validation) positions: a seeded shuffle's last ``fraction`` held out, as
    the papers' early-stopping rule needs (the benchmark scripts' split)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, int(n * fraction)) if n > 1 and fraction > 0 else 0
    return order[n_val:], order[:n_val]
