"""``vqfast score``: a run's scorer over a folder, one record per image as it is computed.

The output folder holds ``score.json`` (what the records depend on: the run, the scorer
and its settings, the data, the threshold), ``scores.jsonl`` (the records; the source of
truth), ``scores.csv`` (the same records as a table), ``maps/`` (each image's (H, W)
anomaly map: float32 ``.npy``; with ``map_format="png"`` a 16-bit grayscale PNG whose
0..65535 spans the record's ``map_range`` [low, high], so any viewer shows it and
``load_map`` gives the values back to 1/65535 of that range; with ``map_format="tiff"``
float32 at the image's own resolution in MVTec's layout), ``val_scores.jsonl`` (the
run's held-out validation images, scored first when the threshold is ``auto``) and
``*.timings`` (each batch's scoring time, for ``summary.json``'s ms per image).

Nothing is lost: each image's map is written atomically, then its record is appended,
flushed and fsynced. A resumed run reads the records back (a torn last line, from a kill
mid-write, is dropped and that image scored again) and scores only the images missing;
the scorers draw no randomness from call order, so the values equal an uninterrupted
run's. A resume whose run, scorer, data or threshold rule changed is refused.

Threshold rule (``auto``): with validation images of both classes, the threshold of best
F1 on them; with defect-free validation images only (a run's held-out training images),
their 99th score percentile, so about 1 % of normal images are flagged. A number fixes it.
"""

import csv
import io
import json
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from vqfast import metrics
from vqfast.app import distributed, tiles
from vqfast.app.data import data_identity, open_data
from vqfast.files import write_atomic, write_json
from vqfast.app.ownership import owned, remove_own
from vqfast.data import ImageTransform, unwrap_subset
from vqfast.data.datasets import AnomalyDataset, Record
from vqfast.methods import RunError, ScoreOptions, registry
from vqfast.methods.runs import open_run, require_trained
from vqfast.scorers import scorer_fingerprint

CSV_FIELDS = ("index", "path", "score", "label", "defect", "decision", "map", "map_range")


def load_scorer(run_dir, name: str, *, percentile: Optional[float] = None, token_threshold: Optional[float] = None,
                restorations: Optional[int] = None, decode_precision: str = "float32", prior_precision: str = "float32",
                marker=None, passes: Optional[int] = None, dropout_decodes: Optional[int] = None, device=None):
    """(scorer, run record) for scorer ``name`` of the run in ``run_dir``: the run's
    method (vqfast.methods) loads it. Prior scorers' token NLL threshold:
    ``token_threshold`` when given, else the ``percentile`` (default the paper's) of the
    prior's NLLs on the run's validation grids. ``decode_precision`` ("float32" or
    "bfloat16"): the VQ decoding of the regenerative and restoration scorers;
    ``prior_precision``: the prior's (and marker's) forwards of the prior scorers, their
    thresholds' validation NLLs included.
    ``marker``: a gpt2 / performer / pixelsnail run on the same VQ model whose NLLs mark
    the masked-context scorers' unusual tokens u (over the same percentile of its own
    validation NLLs), instead of the masked prior's neighbourhood NLLs. ``passes``: the
    masked restoration's in-painting passes (default: the masked run's setting).
    ``restorations``: the restoration scorers' S (default 5; the KDE maps of a run trained
    with preset=paper: the Performer paper's 20). ``dropout_decodes``: the KDE maps' decodes
    per restoration with the decoder's dropout on (default 1, none; preset=paper: 20)."""
    run_dir = Path(run_dir)
    run = open_run(run_dir, trained=False)
    method = registry.get(run.record["method"])
    entry = method.scorer(name)
    require_trained(run)
    options = ScoreOptions(percentile=percentile, token_threshold=token_threshold, restorations=restorations,
                           decode_precision=decode_precision, prior_precision=prior_precision,
                           marker=None if marker is None else Path(marker), passes=passes,
                           dropout_decodes=dropout_decodes,
                           device=torch.device(device or "cpu"))
    _check_options(method, entry, options)
    return entry.load(run, options), run.record


def _check_options(method, entry, options: ScoreOptions) -> None:
    """Refuses a flag the scorer has no use for, naming the scorers that take it."""
    def takers(flag: str) -> str:
        found = {s.name for m in map(registry.get, registry.names()) for s in m.scorers if getattr(s, flag)}
        return ", ".join(sorted(found))

    if options.decode_precision != "float32" and not entry.decodes:
        raise RunError(f"--decode-precision {options.decode_precision}: the {entry.name} scorer decodes no VQ tokens; "
                       f"it applies to {takers('decodes')}")
    if options.prior_precision != "float32" and not any(s.prior for s in method.scorers):
        owners = [m for m in registry.names() if any(s.prior for s in registry.get(m).scorers)]
        raise RunError(f"--prior-precision {options.prior_precision}: a {method.name} run has no token prior; it "
                       f"applies to the {', '.join(owners)} runs' scorers")
    if options.prior_precision != "float32" and not entry.prior:
        raise RunError(f"--prior-precision {options.prior_precision}: the {entry.name} scorer runs no prior")
    if options.passes is not None and not entry.in_paints:
        raise RunError(f"--passes: only {takers('in_paints')} in-paints in passes, not {entry.name}")
    if options.dropout_decodes is not None and not entry.dropout:
        raise RunError(f"--dropout-decodes: only {takers('dropout')} decodes with dropout, not {entry.name}")
    if options.marker is not None and not entry.marks:
        raise RunError(f"--marker: only the masked-context scorers ({takers('marks')}) mark unusual tokens, "
                       f"not {entry.name}")


def _read_records(path: Path) -> List[Dict]:
    """The complete records of a JSONL file; a torn last line is cut off the file."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    good = data[: data.rfind(b"\n") + 1]
    records = []
    for line in good.decode().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:  # a torn line can only be the last one; anything after it goes too
            break
    keep = "".join(json.dumps(r) + "\n" for r in records).encode()
    if keep != data:
        with open(path, "wb") as f:
            f.write(keep)
            f.flush()
            os.fsync(f.fileno())
    return records


def _append(f, line: str) -> None:
    f.write(line)
    f.flush()
    os.fsync(f.fileno())


MAP_FORMATS = ("npy", "png", "tiff")


def _save_map(path: Path, anomaly_map: np.ndarray, image: Optional[Path] = None) -> Optional[List[float]]:
    """Writes the map atomically; for a PNG returns its [low, high] range. A TIFF is float32
    at the resolution of ``image``, the source file (MVTec's evaluation compares maps with
    its masks pixel for pixel), resized bilinearly."""
    buf, span = io.BytesIO(), None
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(buf, anomaly_map)
    elif path.suffix == ".tiff":
        with Image.open(image) as im:
            width, height = im.size
        full = torch.from_numpy(np.ascontiguousarray(anomaly_map, dtype=np.float32))[None, None]
        if full.shape[-2:] != (height, width):
            full = F.interpolate(full, size=(height, width), mode="bilinear", align_corners=False)
        Image.fromarray(full[0, 0].numpy(), mode="F").save(buf, format="TIFF")
    else:
        low, high = float(anomaly_map.min()), float(anomaly_map.max())
        span = [low, high]
        scaled = (anomaly_map - low) / (high - low) if high > low else np.zeros_like(anomaly_map)
        Image.fromarray(np.round(scaled * 65535).astype(np.uint16)).save(buf, format="PNG")
    write_atomic(path, buf.getvalue())
    return span


def load_map(folder, record: Dict) -> np.ndarray:
    """The float32 (H, W) anomaly map of a score record in ``folder`` (any format; a TIFF's
    at its image's own resolution)."""
    path = Path(folder) / record["map"]
    if path.suffix == ".npy":
        return np.load(path)
    if path.suffix == ".tiff":
        with Image.open(path) as im:
            return np.asarray(im, dtype=np.float32)
    low, high = record["map_range"]
    return (low + np.asarray(Image.open(path), dtype=np.float64) / 65535 * (high - low)).astype(np.float32)


def score_images(scorer, dataset, out_dir, records_name: str = "scores.jsonl", *, maps: bool = True,
                 map_format: str = "npy", threshold: Optional[float] = None, batch_size: int = 8, device=None,
                 progress: bool = True, shard: Optional[tuple] = None, tiff_folder: str = "maps/images/test",
                 tiles: Optional[Callable] = None) -> List[Dict]:
    """Scores every image of ``dataset`` not yet in ``out_dir/records_name``, appending one
    record per image (see the module docstring); returns all records by index.

    map_format: "npy", "png" or "tiff" (see the module docstring); a TIFF goes to
    ``<tiff_folder>/<defect>/<image stem>.tiff`` (MVTec's layout with tiff_folder
    maps/<category>/test). Each batch's scoring time goes to ``<records file>.timings``
    (JSON lines {"images", "ms"}; timings are not results, so the records stay a pure
    function of the images).
    tiles: ``tiles(path) -> (score, map)`` scores an image from its file instead (vqfast
    score --tile: at its own resolution).

    shard: (rank, world): this process scores the images with index % world == rank into
    ``<records_name>.rank<r>`` (merged by the caller)."""
    if map_format not in MAP_FORMATS:
        raise ValueError(f"map_format must be one of {', '.join(MAP_FORMATS)}, got {map_format!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / records_name
    if shard is not None and shard[1] > 1:
        path = out_dir / f"{records_name}.rank{shard[0]}"
    done = {r["index"]: r for r in _read_records(path)}
    base, positions = unwrap_subset(dataset)
    labelled = getattr(base, "labelled", True)
    mine = [i for i in range(len(positions)) if shard is None or i % shard[1] == shard[0]]
    # Fixed batches, the same on a resume: a batch with any image left is scored whole, so
    # every image is computed in the company (and float rounding) of the uninterrupted run.
    batches = [mine[b:b + batch_size] for b in range(0, len(mine), batch_size)]
    pending = [b for b in batches if any(i not in done for i in b)]
    if maps:
        (out_dir / "maps").mkdir(exist_ok=True)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=pending)
    left = sum(i not in done for i in mine)
    bar = tqdm(total=len(mine), initial=len(mine) - left, desc=f"scoring {records_name.split('.')[0]}",
               disable=not progress, unit="image")
    names = _map_names([base.records[p] for p in positions], records_name.split(".")[0], map_format, tiff_folder)
    with open(path, "a") as f, open(f"{path}.timings", "a") as timings:
        for members, batch in zip(pending, loader):
            start = time.perf_counter()
            if tiles is None:
                out = scorer.score(batch["image"] if device is None else batch["image"].to(device))
                scores, amaps = out.pred_score.float().cpu().tolist(), list(out.anomaly_map.float().cpu().numpy())
            else:
                scores, amaps = zip(*(tiles(base.records[positions[i]].image) for i in members))
            new = sum(i not in done for i in members)
            _append(timings, json.dumps({"images": new, "ms": 1000 * (time.perf_counter() - start) * new / len(members)})
                    + "\n")
            for j, index in enumerate(members):
                if index in done:  # written before the interruption
                    continue
                record = base.records[positions[index]]
                score = float(scores[j])
                entry = {"index": index, "path": str(record.image.resolve()), "score": score,
                         "label": int(record.label) if labelled else None, "defect": record.defect,
                         "decision": None if threshold is None else int(score >= threshold),
                         "map": names[index] if maps else None}
                if maps:
                    span = _save_map(out_dir / entry["map"], amaps[j], record.image)
                    if span is not None:
                        entry["map_range"] = span
                _append(f, json.dumps(entry) + "\n")
                done[index] = entry
                bar.update(1)
    bar.close()
    return [done[i] for i in sorted(done)]


def ms_per_image(out: Path, records_name: str = "scores.jsonl") -> Optional[float]:
    """The scoring time per image of a score folder, over its (and its ranks') timings
    files; None when there are none (a folder scored before they were kept)."""
    images = ms = 0.0
    for path in Path(out).glob(f"{records_name}*.timings"):
        for line in path.read_text().splitlines():
            try:
                entry = json.loads(line)
                images, ms = images + entry["images"], ms + entry["ms"]
            except (ValueError, KeyError, TypeError):  # a torn last line from a kill
                continue
    return ms / images if images else None


def _map_names(records, stem: str, map_format: str, tiff_folder: str) -> List[str]:
    """Each image's map file, relative to the scores folder: ``maps/<stem>_<index>.<ext>``,
    or for TIFFs ``<tiff_folder>/<defect>/<image stem>.tiff``, a repeated name (two
    extensions of one stem) given its index."""
    if map_format != "tiff":
        return [f"maps/{stem}_{i:06d}.{map_format}" for i in range(len(records))]
    names, taken = [], set()
    for i, r in enumerate(records):
        name = f"{tiff_folder}/{r.defect or 'unlabelled'}/{r.image.stem}"
        name = f"{name}_{i:06d}" if name in taken else name
        taken.add(name)
        names.append(name + ".tiff")
    return names


def merge_shards(out_dir: Path, records_name: str, world: int) -> List[Dict]:
    """Rank 0, after a barrier: the ranks' records as one file, every image once, by index."""
    records = {}
    for rank in range(world):
        for r in _read_records(out_dir / f"{records_name}.rank{rank}"):
            records[r["index"]] = r
    merged = [records[i] for i in sorted(records)]
    write_atomic(out_dir / records_name, "".join(json.dumps(r) + "\n" for r in merged).encode())
    return merged


def write_csv(path: Path, records: List[Dict]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
    writer.writeheader()
    for r in records:
        writer.writerow({k: "" if r.get(k) is None else r[k] for k in CSV_FIELDS})
    # surrogateescape: a file name that is not UTF-8 goes back out as its own bytes
    write_atomic(path, buf.getvalue().encode("utf-8", errors="surrogateescape"))


def auto_threshold(records: List[Dict]) -> Dict:
    """The module docstring's rule over validation records."""
    scores = np.array([r["score"] for r in records], dtype=np.float64)
    labels = [r["label"] for r in records]
    if metrics.has_both_classes(labels):
        f1, value = metrics.best_f1(np.array(labels), scores)
        return {"value": float(value), "rule": f"best F1 ({f1:.3f}) on {len(records)} labelled validation images"}
    return {"value": float(np.percentile(scores, 99)),
            "rule": f"99th percentile of {len(records)} defect-free validation images' scores"}


def _validation_images(run: Dict, run_dir: Path, transform: ImageTransform) -> AnomalyDataset:
    """The run's held-out images; a relative path (runs before absolute ones were stored,
    export_run's callers) resolves against the run folder, never the working directory."""
    records = [Record(run_dir / p, None, 0, "good") for p in run["val_images"]]
    if not records:
        raise RunError("the run holds no validation images for --threshold auto: pass --threshold VALUE")
    return AnomalyDataset(records, transform, name="the run's validation images")


@owned("scores")
def score(scorer_name: str, run_dir, data, fmt: str, out, *, category: Optional[str] = None, split: str = "test",
          threshold="auto", percentile: Optional[float] = None, restorations: Optional[int] = None,
          decode_precision: str = "float32", prior_precision: str = "float32", marker=None,
          passes: Optional[int] = None, dropout_decodes: Optional[int] = None, resume: bool = False,
          skip_bad: bool = False, batch_size: int = 8, maps: bool = True, map_format: str = "npy", device=None,
          tile: Optional[int] = None, stride: Optional[int] = None, progress: bool = True,
          echo: Callable = print) -> Dict:
    """Scores ``data`` with a run's scorer into ``out``; returns the summary (also
    ``out/summary.json``): threshold, counts, ms per image and metrics where labels exist.
    ``map_format="tiff"``: maps in MVTec's layout, ``maps/<category>/<split>/<defect>/<id>.tiff``
    at each image's resolution (category: --category, else the data folder's name).
    ``tile``: every image, the validation images too, scored by tiles at its own resolution
    (vqfast.app.tiles; ``stride`` default tile / 2), its map at that resolution."""
    out, run_dir = Path(out), Path(run_dir)
    rank, world = distributed.rank_world()
    device = torch.device(device) if device else distributed.device()
    scorer, run = load_scorer(run_dir, scorer_name, percentile=percentile, restorations=restorations,
                              decode_precision=decode_precision, prior_precision=prior_precision, marker=marker,
                              passes=passes, dropout_decodes=dropout_decodes, device=device)
    transform = ImageTransform(size=int(run["transform"]["size"]), channels=int(run["transform"]["channels"]))
    dataset = open_data(data, fmt, split, transform, category=category, skip_bad=skip_bad)
    identity = {"run": str(run_dir.resolve()), "run_method": run["method"], "scorer": scorer_name,
                **{f"scorer.{k}": v for k, v in scorer_fingerprint(scorer).items()},
                "data": {"path": str(Path(data).resolve()), "format": fmt, "category": category, "split": split,
                         **data_identity(dataset)},
                "threshold": str(threshold), "maps": map_format if maps else False,
                "batch_size": batch_size,  # batches change float rounding: a resume keeps them
                **({} if tile is None else {"tile": tile, "stride": stride or max(1, tile // 2)})}
    _begin_scores(out, identity, resume, rank)
    distributed.barrier()
    shard = (rank, world) if world > 1 else None
    summary = {"scorer": scorer_name, "run": str(run_dir), "method": run["method"], "images": len(dataset),
               "skipped": [s[0] for s in dataset.skipped]}
    if getattr(scorer, "percentile", None) is not None:
        summary["nll_percentile"] = scorer.percentile
    if marker is not None:
        summary["marker"] = str(marker)
    by_tiles = None if tile is None else _tile_scorer(scorer, transform, tile, identity["stride"], device, batch_size)
    if threshold == "auto":
        val = _validation_images(run, run_dir.resolve(), transform)
        val_records = _gather(score_images(scorer, val, out, "val_scores.jsonl", maps=False, batch_size=batch_size,
                                           device=device, progress=progress and rank == 0, shard=shard,
                                           tiles=by_tiles), out, "val_scores.jsonl", world)
        summary["threshold"] = auto_threshold(val_records)
    else:
        summary["threshold"] = {"value": float(threshold), "rule": "given (--threshold)"}
    value = summary["threshold"]["value"]
    tiff_folder = f"maps/{category or Path(data).resolve().name}/{split}"
    records = _gather(score_images(scorer, dataset, out, "scores.jsonl", maps=maps, map_format=map_format,
                                   threshold=value, tiff_folder=tiff_folder, tiles=by_tiles,
                                   batch_size=batch_size, device=device, progress=progress and rank == 0,
                                   shard=shard), out, "scores.jsonl", world)
    if rank != 0:
        return summary
    write_csv(out / "scores.csv", records)
    labels = [r["label"] for r in records]
    summary["flagged"] = sum(r["decision"] for r in records)
    summary["ms_per_image"] = ms_per_image(out)
    if metrics.has_both_classes(labels):
        scores = np.array([r["score"] for r in records])
        y = np.array(labels)
        summary["metrics"] = {"image_auroc": metrics.auroc(y, scores), "image_ap": metrics.average_precision(y, scores),
                              "image_best_f1": metrics.best_f1(y, scores)[0],
                              "f1_at_threshold": metrics.f1_at_threshold(y, scores, value)}
    write_json(out / "summary.json", summary)
    echo(f"{len(records)} images scored into {out / 'scores.csv'}; threshold {value:.4g} "
         f"({summary['threshold']['rule']}); {summary['flagged']} flagged"
         + (f"; image AUROC {summary['metrics']['image_auroc']:.3f}" if "metrics" in summary else ""))
    return summary


def _tile_scorer(scorer, transform: ImageTransform, tile: int, stride: int, device, batch_size: int) -> Callable:
    """path -> (score, map at the image's resolution) by tiles; an image smaller than a
    tile is a RunError naming it."""
    def by_tiles(path):
        try:
            score, amap, _ = tiles.score_by_tiles(scorer, tiles.full_image(path, transform.channels), tile, stride,
                                                  transform.size, device, batch_size)
        except ValueError as exc:
            raise RunError(f"{path}: {exc} (--tile)") from None
        return score, amap
    return by_tiles


def _gather(records, out: Path, name: str, world: int) -> List[Dict]:
    if world == 1:
        return records
    distributed.barrier()
    merged = merge_shards(out, name, world) if distributed.rank_world()[0] == 0 else None
    return distributed.broadcast_object(merged)


def _begin_scores(out: Path, identity: Dict, resume: bool, rank: int) -> None:
    path = out / "score.json"
    if rank != 0:
        return
    if path.is_file() and resume:
        old = json.loads(path.read_text())
        changed = [f"{k} was {old.get(k)!r}, is {identity.get(k)!r}" for k in sorted(set(old) | set(identity))
                   if old.get(k) != identity.get(k)]
        if changed:
            raise RunError(f"{out}: cannot resume, the scoring changed: {'; '.join(changed)} "
                           "(score into another --out, or drop --resume to score again)")
        return
    if not resume:  # a fresh run replaces what an earlier one left, and only that
        remove_own(out, "scores")
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, identity)
