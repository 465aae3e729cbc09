"""Files the command line writes: whole or not at all (a temporary file and a rename), and
JSON always valid."""

import json
import math
import os
from pathlib import Path


def _finite(value):
    """NaN and infinities become null: json.dumps would write NaN / Infinity, which no
    strict JSON reader takes."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def write_atomic(path, data: bytes) -> None:
    """Writes ``data`` to ``path`` through a temporary file and a rename, so a reader (or a
    kill) sees the old file or the new one, never half of one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(path, value) -> None:
    """``value`` as JSON, written whole; NaN and infinities as null."""
    write_atomic(path, (json.dumps(_finite(value), indent=2, allow_nan=False) + "\n").encode())
