"""``vqfast report --scores A B C --out DIR``: scorers side by side on one page.

Writes into DIR (a folder vqfast owns): ``comparison.json`` (each folder's metrics and ms
per image), ``roc.png`` and ``pr.png`` (the image-level curves overlaid), ``images/<k>.png``
(the same images' maps side by side, each scorer's map on its own colour scale, with the
ground-truth contour) and ``index.html``. The folders should score the same images:
the side-by-side images are the ones all of them scored.
"""

import html
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from vqfast import metrics
from vqfast.app.ownership import owned, remove_own
from vqfast.app.report import at_size, read_scores, scored_arrays, shown_name
from vqfast.app.score import ms_per_image
from vqfast.files import write_json
from vqfast.methods import RunError

COLUMNS = ("image_auroc", "image_ap", "image_best_f1", "pixel_auroc", "pixel_ap", "aupro", "ms_per_image")


def _entry(folder: Path) -> Dict:
    """One score folder: its name, records, maps / masks by path and metrics."""
    identity, summary, records = read_scores(folder)
    dataset, by_path, maps, masks = scored_arrays(folder, identity, records)
    labels = [r["label"] for r in records]
    scores = np.array([r["score"] for r in records], dtype=np.float64)
    found = {}
    if metrics.has_both_classes(labels):
        pixels = (masks, maps) if masks is not None and masks.any() else (None, None)
        found = metrics.evaluate(np.array(labels), scores, *pixels)
    found["ms_per_image"] = ms_per_image(folder)
    return {"folder": folder, "name": f"{summary['scorer']} ({Path(identity['run']).name})", "records": records,
            "record_of": {r["path"]: i for i, r in enumerate(records)},
            "dataset": dataset, "by_path": by_path, "maps": maps, "masks": masks, "metrics": found,
            "labels": labels, "scores": scores}


def _names(entries: List[Dict]) -> None:
    """Distinct labels: a repeated scorer-and-run name gets its folder's name too."""
    seen = [e["name"] for e in entries]
    for e in entries:
        if seen.count(e["name"]) > 1:
            e["name"] = f"{e['name']} [{e['folder'].name}]"


def _overlaid_curves(entries: List[Dict], out: Path) -> bool:
    import matplotlib  # deferred on purpose: seconds to import, needed only for drawing
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after use("Agg"): no display needed)

    labelled = [e for e in entries if metrics.has_both_classes(e["labels"])]
    if not labelled:
        return False
    for name in ("roc", "pr"):
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        for e in labelled:
            y = np.array(e["labels"])
            tps, fps, _ = metrics._curve(y, e["scores"])
            tpr, fpr = tps / max(tps[-1], 1), fps / max(fps[-1], 1)
            if name == "roc":
                ax.plot(np.r_[0, fpr], np.r_[0, tpr], lw=2, label=f"{e['name']}: {metrics.auroc(y, e['scores']):.3f}")
            else:
                ax.plot(tpr, tps / np.maximum(tps + fps, 1), lw=2,
                        label=f"{e['name']}: {metrics.average_precision(y, e['scores']):.3f}")
        xl, yl = ("false positive rate", "true positive rate") if name == "roc" else ("recall", "precision")
        ax.set(xlabel=xl, ylabel=yl, xlim=(0, 1), ylim=(0, 1.02), title=f"image level {name.upper()}")
        ax.legend(fontsize=7, loc="lower right" if name == "roc" else "lower left")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png")
        plt.close(fig)
    return True


def _common_images(entries: List[Dict], count: int) -> List[str]:
    """Up to ``count`` paths every folder scored: half defective, half good where labels
    exist, each half the highest-scored by the first folder."""
    common = set.intersection(*(set(e["record_of"]) for e in entries))
    first = [entries[0]["records"][entries[0]["record_of"][p]] for p in sorted(common)]
    order = sorted(first, key=lambda r: -r["score"])
    bad = [r["path"] for r in order if r["label"] == 1]
    good = [r["path"] for r in order if r["label"] != 1]
    take = min(len(bad), max(count - len(good), count // 2))
    return bad[:take] + good[:count - take]


def _side_by_side(entries: List[Dict], path: str, title: str, out: Path) -> None:
    import matplotlib  # deferred on purpose: seconds to import, needed only for drawing
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # (after use("Agg"): no display needed)

    first = entries[0]
    item = first["dataset"][first["by_path"][path]]
    image = item["image"].numpy()
    grey = image.shape[0] == 1
    shown = image[0] if grey else image.transpose(1, 2, 0)
    mask = item["mask"].numpy() if first["masks"] is not None else None
    fig, axes = plt.subplots(1, len(entries) + 1, figsize=(2.4 * (len(entries) + 1), 2.8), dpi=80)
    axes[0].imshow(shown, cmap="gray" if grey else None, vmin=0, vmax=1)
    axes[0].set_title("image", fontsize=8)
    for ax, e in zip(axes[1:], entries):
        k = e["record_of"][path]
        ax.imshow(at_size(e["maps"][k], image.shape[-2:]), cmap="jet")  # runs of other input sizes line up
        ax.set_title(f"{e['name']}\nscore {e['records'][k]['score']:.4g}", fontsize=7)
    for ax in axes:
        if mask is not None and mask.any():
            ax.contour(mask.astype(float), levels=[0.5], colors="lime", linewidths=1)
        ax.axis("off")
    fig.suptitle(title, fontsize=8, parse_math=False)
    fig.tight_layout(rect=(0, 0, 1, 0.92))  # room for the title above the panels' own
    fig.savefig(out)
    plt.close(fig)


@owned("comparison")
def compare(folders: Sequence, out, *, max_images: int = 8, echo: Callable = print) -> Dict:
    """Writes the module docstring's files into ``out``; returns {name: metrics}."""
    if len(folders) < 2:
        raise RunError("a comparison takes two or more --scores folders")
    out = Path(out)
    entries = [_entry(Path(f)) for f in folders]
    remove_own(out, "comparison")  # an earlier comparison's images go; the folder is vqfast's
    _names(entries)
    result = {e["name"]: {"folder": str(e["folder"]), **e["metrics"]} for e in entries}
    write_json(out / "comparison.json", result)
    curves = _overlaid_curves(entries, out)
    shown = []
    if all(e["maps"] is not None for e in entries):
        (out / "images").mkdir(exist_ok=True)
        for k, path in enumerate(_common_images(entries, max_images)):
            record = entries[0]["records"][entries[0]["record_of"][path]]
            label = {None: "label unknown", 0: "normal", 1: f"defective ({record['defect']})"}[record["label"]]
            _side_by_side(entries, path, f"{shown_name(Path(path).name)}: {label}", out / "images" / f"{k:03d}.png")
            shown.append(f"images/{k:03d}.png")
    _page(out, result, curves, shown)
    echo(f"comparison of {len(entries)} scorers: {out / 'index.html'}")
    return result


def _page(out: Path, result: Dict[str, Dict], curves: bool, shown: List[str]) -> None:
    def cell(v):
        return "<td>n/a</td>" if v is None else f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{v}</td>"

    columns = [c for c in COLUMNS if any(c in m for m in result.values())]
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in ["scorer", *columns])
    rows = "".join(f"<tr><td>{html.escape(shown_name(name))}</td>" + "".join(cell(m.get(c)) for c in columns) + "</tr>"
                   for name, m in result.items())
    plots = '<p><img src="roc.png"> <img src="pr.png"></p>' if curves else "<p>No labels: no curves.</p>"
    figures = "".join(f'<figure><img src="{p}"></figure>' for p in shown)
    (out / "index.html").write_text(f"""<!doctype html>
<html><head><meta charset="utf-8"><title>vqfast: {len(result)} scorers compared</title>
<style>body{{font-family:sans-serif;margin:2em}} td,th{{padding:2px 12px;text-align:left}}</style></head>
<body><h1>{len(result)} scorers compared</h1>
<table><tr>{head}</tr>{rows}</table>
<p>ms per image: each folder's scoring time per image, as vqfast score measured it on its own machine.</p>
{plots}
<h2>The same images, side by side</h2>
<p>Each map on its own colour scale; the ground-truth contour in green.</p>
{figures}</body></html>
""")
