"""Reading a run folder's record (``run.json``): the method, its settings, the image
transform, the data's identity, the held-out validation images and the status."""

import json
from pathlib import Path
from typing import Dict, Tuple

from vqfast.methods import registry
from vqfast.methods.api import Run, RunError
from vqfast.methods.settings import SettingError, Settings


def read_run(run_dir) -> Dict:
    """The checked record of ``run_dir/run.json``; RunError names what is wrong."""
    return _read(run_dir)[0]


def _read(run_dir) -> Tuple[Dict, Settings]:
    """(the checked record of ``run_dir/run.json``, its typed settings)."""
    path = Path(run_dir) / "run.json"
    if not path.is_file():
        raise RunError(f"{run_dir}: not a vqfast run folder (no run.json); make one with vqfast train")
    try:
        run = json.loads(path.read_text(errors="replace"))
    except json.JSONDecodeError as exc:
        raise RunError(f"{path}: unreadable ({exc})") from None
    return run, _check_run(path, run)


def _check_run(path: Path, run) -> Settings:
    """The fields every reader of a run record relies on, with their types; returns the
    typed settings."""
    def bad(what: str):
        raise RunError(f"{path}: not a valid vqfast run record: {what} (train the run again, or restore its run.json)")

    if not isinstance(run, dict):
        bad("expected a JSON object")
    if not isinstance(run.get("method"), str) or not registry.known(run["method"]):
        bad(f"unknown method {run.get('method')!r}")
    if not isinstance(run.get("settings"), dict):
        bad("settings must be an object")
    transform = run.get("transform")
    whole = lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1  # noqa: E731
    if not isinstance(transform, dict) or not whole(transform.get("size")) or transform.get("channels") not in (1, 3):
        bad("transform must give a whole-number size >= 1 and channels 1 or 3")
    images = run.get("val_images", [])
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        bad("val_images must be a list of paths")
    settings_cls = registry.get(run["method"]).settings
    try:  # the typed rules of --set and config files; keys of older versions are ignored
        known = set(settings_cls.__dataclass_fields__)
        return settings_cls.parse({k: v for k, v in run["settings"].items() if k in known}, rules=False)
    except SettingError as exc:
        bad(str(exc))


def open_run(run_dir, *, trained: bool = True) -> Run:
    """The run in ``run_dir`` with its typed settings; ``trained``: refuse a run whose
    training did not finish (``require_trained``)."""
    record, settings = _read(run_dir)
    run = Run(Path(run_dir), record, settings)
    if trained:
        require_trained(run)
    return run


def require_trained(run: Run) -> None:
    if run.record.get("status") != "trained":
        raise RunError(f"{run.dir}: its training did not finish (status {run.record.get('status')!r}); "
                       "finish it with vqfast train ... --resume")
