"""Files vqfast writes: whole or not at all (a temporary file and a rename), and JSON
always valid."""

import json
import math
import os
import tempfile
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
    # a name of its own: two writers of one path (ranks, concurrent runs) never share a temp file
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would keep the file from its readers
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path, value) -> None:
    """``value`` as JSON, written whole; NaN and infinities as null."""
    write_atomic(path, (json.dumps(_finite(value), indent=2, allow_nan=False) + "\n").encode())
