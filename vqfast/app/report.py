"""``vqfast report``: metrics, curves and per-image overlays of a ``vqfast score`` folder,
and one ``index.html`` that shows them.

Writes into the scores folder: ``metrics.json`` (image AUROC / AP / best F1 and, with
masks, pixel AUROC / AP and AUPRO), ``roc.png`` and ``pr.png`` (image level, when labels
exist), ``overlays/<index>.png`` (image | heat map over it | ground-truth contour |
predicted contour) for the ``max_overlays`` highest-scored images, and ``index.html``.

The predicted region is where the map exceeds a pixel threshold: with masks, the one of
best pixel F1 over the scored images (what the map could reach; labels are used); without,
the 99th percentile of the map values of the images the image threshold calls normal.
"""

import html
import json
from pathlib import Path
from typing import Callable, Dict, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from vqfast import metrics
from vqfast.app.data import open_data
from vqfast.app.score import load_map
from vqfast.data import ImageTransform
from vqfast.files import write_json
from vqfast.methods import RunError
from vqfast.methods.runs import read_run
from vqfast.scorers import reduce_map


def read_scores(folder: Path):
    """(score.json, summary.json, the records) of a finished ``vqfast score`` folder; a
    missing or damaged file is a RunError saying how to fix it."""
    try:
        identity = json.loads((folder / "score.json").read_text())
        summary = json.loads((folder / "summary.json").read_text())
    except FileNotFoundError as exc:
        raise RunError(f"{folder}: not a finished vqfast score folder ({Path(exc.filename).name} missing); "
                       "run vqfast score first (or finish it with --resume)") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunError(f"{folder}: score.json or summary.json is damaged ({exc}); score the folder again") from None
    try:
        records = [json.loads(line) for line in (folder / "scores.jsonl").read_text().splitlines()]
    except (OSError, ValueError) as exc:
        raise RunError(f"{folder}: scores.jsonl is missing or damaged ({exc}); score the folder again") from None
    if not isinstance(identity, dict) or not isinstance(summary, dict) or not all(isinstance(r, dict) for r in records):
        raise RunError(f"{folder}: not a vqfast score folder (score.json, summary.json or scores.jsonl malformed)")
    return identity, summary, records


def _curves(labels: np.ndarray, scores: np.ndarray, out: Path) -> None:
    import matplotlib  # deferred on purpose: seconds to import, needed only for drawing
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after use("Agg"): no display needed)

    tps, fps, _ = metrics._curve(labels, scores)
    tpr, fpr = tps / max(tps[-1], 1), fps / max(fps[-1], 1)
    precision, recall = tps / np.maximum(tps + fps, 1), tpr
    for name, (x, y, xl, yl, value) in {
            "roc": (np.r_[0, fpr], np.r_[0, tpr], "false positive rate", "true positive rate",
                    f"AUROC {metrics.auroc(labels, scores):.3f}"),
            "pr": (recall, precision, "recall", "precision", f"AP {metrics.average_precision(labels, scores):.3f}")}.items():
        fig, ax = plt.subplots(figsize=(4, 4), dpi=100)
        ax.plot(x, y, lw=2)
        ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1.02), title=f"image level: {value}")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png")
        plt.close(fig)


def _pixel_threshold(maps, masks, decisions) -> float:
    if masks is not None and masks.any():
        step = max(1, maps.size // 2_000_000)  # a subsample keeps this fast; the curve barely moves
        return metrics.best_f1(masks.ravel()[::step], maps.ravel()[::step])[1]
    normal = maps[np.asarray(decisions) == 0] if (np.asarray(decisions) == 0).any() else maps
    return float(np.percentile(normal, 99))


def _overlay(image: np.ndarray, amap: np.ndarray, mask, pixel_threshold: float, title: str, path: Path) -> None:
    import matplotlib  # deferred on purpose: seconds to import, needed only for drawing
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after use("Agg"): no display needed)

    grey = image.shape[0] == 1
    shown = image[0] if grey else image.transpose(1, 2, 0)
    fig, axes = plt.subplots(1, 4, figsize=(10, 2.8), dpi=80)
    panels = ("image", "anomaly map", "ground truth", "prediction")
    for ax, name in zip(axes, panels):
        ax.imshow(shown, cmap="gray" if grey else None, vmin=0, vmax=1)
        ax.set_title(name, fontsize=9)
        ax.axis("off")
    axes[1].imshow(amap, cmap="jet", alpha=0.5)
    if mask is not None and mask.any():
        axes[2].contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=1.2)
    else:
        axes[2].text(0.5, 0.5, "no defect marked", ha="center", va="center", transform=axes[2].transAxes,
                     color="white", fontsize=8, bbox={"facecolor": "black", "alpha": 0.5})
    if (amap > pixel_threshold).any():
        axes[3].contour((amap > pixel_threshold).astype(float), levels=[0.5], colors="red", linewidths=1.2)
    fig.suptitle(title, fontsize=8, parse_math=False)  # a $ in a file name is text, not mathtext
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def scored_arrays(folder: Path, identity: Dict, records):
    """(dataset, index by path, maps (N, H, W) or None, masks (N, H, W) bool or None) of
    a scores folder's records, the images opened with the run's transform."""
    run = read_run(identity["run"])
    data = identity["data"]
    transform = ImageTransform(size=int(run["transform"]["size"]), channels=int(run["transform"]["channels"]))
    dataset = open_data(data["path"], data["format"], data["split"], transform, category=data["category"],
                        skip_bad=True)
    by_path = {str(r.image.resolve()): i for i, r in enumerate(dataset.records)}
    gone = [r["path"] for r in records if r["path"] not in by_path]
    if gone:
        raise RunError(f"{folder}: {len(gone)} scored images are no longer readable in {data['path']} "
                       f"(e.g. {shown_name(gone[0])}): restore them, or score the folder again")
    size = (transform.size, transform.size) if isinstance(transform.size, int) else tuple(transform.size)
    maps = np.stack([at_size(load_map(folder, r), size) for r in records]) if records and records[0]["map"] else None
    masks = None
    if maps is not None and dataset.has_masks:
        masks = np.stack([dataset[by_path[r["path"]]]["mask"].numpy() for r in records])
    return dataset, by_path, maps, masks


def at_size(amap: np.ndarray, size) -> np.ndarray:
    """A map at the masks' size (H, W): TIFF and tiled maps are at the image's own."""
    if amap.shape == tuple(size):
        return amap
    t = torch.tensor(amap, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def evaluate_scores(folder, *, reductions: Sequence[str] = (), exclude: Iterable[str] = (),
                    pixel: bool = True) -> Dict[str, Dict]:
    """``metrics.evaluate`` of a labelled ``vqfast score`` folder: under "score" the
    records' own scores, and under each name in ``reductions`` (``reduce_map``'s) that
    image score of the saved maps; pixel metrics from the maps and masks where both exist
    (``pixel=False``: image level only). Images whose path is in ``exclude`` (e.g. ones
    carved off for validation) are left out."""
    folder = Path(folder)
    identity, _, records = read_scores(folder)
    _, _, maps, masks = scored_arrays(folder, identity, records)
    skip = {str(Path(p).resolve()) for p in exclude}
    keep = np.array([r["path"] not in skip for r in records], dtype=bool)
    labels = np.array([r["label"] for r in records])[keep]
    if not metrics.has_both_classes(labels.tolist()):
        raise RunError(f"{folder}: evaluating needs images of both classes with labels")
    maps = None if maps is None else maps[keep]
    masks = None if masks is None or not pixel else masks[keep]
    with_pixels = (masks, maps) if masks is not None and masks.any() else (None, None)
    out = {"score": metrics.evaluate(labels, np.array([r["score"] for r in records])[keep], *with_pixels)}
    for name in reductions:
        if maps is None:
            raise RunError(f"{folder}: no anomaly maps saved, so no {name} reduction of them")
        image = reduce_map(torch.from_numpy(maps), name, 0.01).numpy()
        out[name] = metrics.evaluate(labels, image, *with_pixels)
    return out


def report(folder, *, max_overlays: int = 48, progress: bool = True, echo: Callable = print) -> Dict:
    """Writes the module docstring's files into ``folder``; returns the metrics."""
    folder = Path(folder)
    identity, summary, records = read_scores(folder)
    dataset, by_path, maps, masks = scored_arrays(folder, identity, records)
    labels = [r["label"] for r in records]
    labelled = metrics.has_both_classes(labels)
    scores = np.array([r["score"] for r in records], dtype=np.float64)
    result = {"images": len(records), "threshold": summary["threshold"], "scorer": summary["scorer"],
              "run": identity["run"]}
    if labelled:
        y = np.array(labels)
        pixels = (masks, maps) if masks is not None and masks.any() else (None, None)
        result.update(metrics.evaluate(y, scores, *pixels))
        result["per_class"] = metrics.evaluate_per_class(y, scores, [r["defect"] for r in records], *pixels)
        _curves(y, scores, folder)
    write_json(folder / "metrics.json", result)
    shown = []
    if maps is not None:
        (folder / "overlays").mkdir(exist_ok=True)
        pixel_threshold = _pixel_threshold(maps, masks, [r["decision"] for r in records])
        result["pixel_threshold"] = pixel_threshold
        order = np.argsort(-scores, kind="stable")[:max_overlays]
        for k in tqdm(order, desc="overlays", disable=not progress):
            r = records[k]
            item = dataset[by_path[r["path"]]]
            name = f"overlays/{r['index']:06d}.png"
            label = {None: "label unknown", 0: "normal", 1: f"defective ({r['defect']})"}[r["label"]]
            _overlay(item["image"].numpy(), maps[k], masks[k] if masks is not None else None, pixel_threshold,
                     f"{shown_name(Path(r['path']).name)}: score {r['score']:.4g}, {label}, "
                     f"{'flagged' if r['decision'] else 'passed'}", folder / name)
            shown.append((name, r))
    write_json(folder / "metrics.json", result)
    _html(folder, result, shown, labelled, len(records))
    echo(f"report: {folder / 'index.html'}" + (f" (image AUROC {result['image_auroc']:.3f})" if labelled else ""))
    return result


def shown_name(name: str) -> str:
    """A path as text for people: bytes that are not UTF-8 (kept by Python as surrogates,
    and written back as themselves in scores.csv) become U+FFFD."""
    return str(name).encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")


def _html(folder: Path, result: Dict, shown, labelled: bool, n: int) -> None:
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4f}</td></tr>" for k, v in result.items()
                   if isinstance(v, float))
    curves = '<p><img src="roc.png"> <img src="pr.png"></p>' if labelled else "<p>No labels: no curves.</p>"
    curves += _per_class_table(result.get("per_class", {}))
    cards = "".join(
        f'<figure><img src="{name}" width="760"><figcaption>{html.escape(shown_name(Path(r["path"]).name))} '
        f'score {r["score"]:.4g}</figcaption></figure>' for name, r in shown)
    (folder / "index.html").write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vqfast report: {html.escape(result['scorer'])}</title>
<style>body{{font-family:sans-serif;margin:2em}} td{{padding:2px 12px}} figure{{margin:1em 0}}</style></head>
<body><h1>vqfast report: {html.escape(result['scorer'])}</h1>
<p>Run {html.escape(shown_name(result['run']))}; {n} images; threshold {result['threshold']['value']:.4g}
({html.escape(result['threshold']['rule'])}).</p>
<table>{rows}</table>{curves}
<h2>The {len(shown)} highest-scored images</h2>
<p>Each row: the image, its anomaly map, the ground-truth contour (green) and the predicted contour (red).</p>
{cards}</body></html>
""")


def _per_class_table(per_class: Dict[str, Dict]) -> str:
    """Each defect class's metrics against the good images, as an HTML table."""
    if not per_class:
        return ""
    names = [k for k in ("image_auroc", "image_ap", "pixel_auroc", "aupro") if any(k in v for v in per_class.values())]
    head = "".join(f"<th>{n}</th>" for n in ["defect class", "images", *names])
    rows = "".join(f"<tr><td>{html.escape(shown_name(c))}</td><td>{v['images']}</td>" +
                   "".join(f"<td>{v[n]:.4f}</td>" if n in v else "<td></td>" for n in names) + "</tr>"
                   for c, v in per_class.items())
    return f"<h2>Per defect class (each against the good images)</h2><table><tr>{head}</tr>{rows}</table>"
