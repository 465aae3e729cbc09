"""What vqfast may write and delete: only folders it created, one process at a time.

A run folder (``vqfast train --out``) or score folder (``vqfast score --out``) carries a
manifest, ``.vqfast.json``, naming its kind. vqfast writes into a folder only if it is
new, empty, or carries the manifest of the same kind (or the ``run.json`` / ``score.json``
of a folder an earlier vqfast wrote, which is then given the manifest); anything else is
refused before a byte is written. Replacing a run or a score (``--overwrite``, a fresh
score) deletes only the names vqfast writes there, never the rest. A lock file held with
``flock`` for the whole job keeps a second process off the same folder.
"""

import fcntl
import functools
import inspect
import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from vqfast.app import distributed
from vqfast.files import write_json


MANIFEST = ".vqfast.json"
LOCK = ".vqfast.lock"
# What each kind of folder holds that vqfast wrote there (a name, or a glob).
OWN = {
    "run": ("run.json", "model", "iltm", "stage1", "stage2", "stage3", "model.safetensors", "bank.safetensors",
            "tokens.safetensors", "vq.safetensors", "checkpoint.safetensors", "metrics.jsonl", "*.tmp"),
    "scores": ("score.json", "*scores.jsonl", "*scores.jsonl.*", "scores.csv", "summary.json", "maps/*.npy",
               "maps/*.png", "maps/*.tmp", "maps/**/*.tiff", "maps/**/*.tmp", "metrics.json", "index.html", "overlays", "*.tmp"),
    "comparison": ("comparison.json", "roc.png", "pr.png", "images", "index.html", "*.tmp"),
}
_LEGACY = {"run": "run.json", "scores": "score.json", "comparison": "comparison.json"}
_COMMAND = {"run": "vqfast train", "scores": "vqfast score", "comparison": "vqfast report --scores A B --out"}


class OutputError(ValueError):
    """An --out vqfast may not write into; names the folder and the way out."""


def claim(out: Path, kind: str) -> Path:
    """Makes ``out`` a ``kind`` folder vqfast owns, or refuses it. Returns it resolved."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"--out {out} is a file, not a folder: name a folder (new or empty)")
    manifest = out / MANIFEST
    if manifest.is_file():
        try:
            found = json.loads(manifest.read_text()).get("kind")
        except (OSError, ValueError, AttributeError):
            found = None
        if found != kind:
            raise OutputError(f"--out {out} is a vqfast {found or 'unknown'} folder, not a {kind} folder: "
                              "choose another --out")
    elif out.is_dir() and any(p.name != LOCK for p in out.iterdir()) and not (out / _LEGACY[kind]).is_file():
        raise OutputError(f"--out {out} is not empty and was not written by {_COMMAND[kind]}: choose a new or "
                          "empty folder (vqfast writes and deletes only in folders it created)")
    out.mkdir(parents=True, exist_ok=True)
    if not manifest.is_file():
        write_json(manifest, {"kind": kind, "written_by": "vqfast"})
    return out.resolve()


def remove_own(out: Path, kind: str) -> None:
    """Deletes what vqfast writes in a ``kind`` folder, and nothing else."""
    for pattern in OWN[kind]:
        for path in Path(out).glob(pattern):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
    maps = Path(out) / "maps"
    if kind == "scores" and maps.is_dir() and not maps.is_symlink():  # the TIFF layout's folders, once emptied
        for folder in sorted((p for p in maps.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
            if not any(folder.iterdir()):
                folder.rmdir()


def refuse_inside(data, out: Path, kind: str) -> None:
    """--data inside (or equal to) --out: replacing the output would reach the input."""
    if data is None:
        return
    data, out = Path(data).resolve(), Path(out).resolve()
    if data == out or out in data.parents:
        raise OutputError(f"--data {data} lies inside --out {out}: {_COMMAND[kind]} would write over its own input; "
                          "choose an --out outside the data")


@contextmanager
def locked(out: Path) -> Iterator[None]:
    """Holds ``out``'s lock for the block; a second process is refused at once."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise OutputError(f"--out {out} is in use by another vqfast process (pid {holder}): wait for it to "
                              "finish, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _remove_if_only_ours(out: Path) -> None:
    try:
        if {p.name for p in out.iterdir()} <= {MANIFEST, LOCK}:
            for name in (MANIFEST, LOCK):
                (out / name).unlink(missing_ok=True)
            out.rmdir()
    except OSError:
        pass


def owned(kind: str):
    """Decorates a job ``fn(..., out, ...)`` (with ``data`` if it reads a folder): on rank 0
    the output folder is checked, claimed and locked for the whole call; the other ranks
    write only their shards into the folder rank 0 holds. A folder the call created and
    left holding only the manifest and lock (a refusal) is removed again."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def job(*args, **kwargs):
            if distributed.rank_world()[0] != 0:
                return fn(*args, **kwargs)
            given = signature.bind(*args, **kwargs).arguments
            out = Path(given["out"])
            refuse_inside(given.get("data"), out, kind)
            created = not out.exists()
            claim(out, kind)
            try:
                with locked(out):
                    return fn(*args, **kwargs)
            except BaseException:
                if created:  # refused before writing anything: leave no empty folder behind
                    _remove_if_only_ours(out)
                raise

        return job

    return wrap
