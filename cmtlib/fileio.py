"""Atomic file writes (write to a temporary file beside the target, then rename: a crash or a kill
mid-write leaves the previous file intact, never a truncated one) and the one JSON reader.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

from cmtlib.errors import DataFileError


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path in the target's folder; rename it onto `target` on success.

    The temporary file is removed if the block raises, so the target keeps its old content.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix or target.suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the result the permissions a plain open() would.
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(target: str | os.PathLike, text: str) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | os.PathLike, obj: Any) -> Path:
    """Write `obj` as JSON; NaN and infinities become null (JSON has no NaN)."""
    text = json.dumps(finite(obj), indent=2, allow_nan=False, default=_json_default)
    return write_text(target, text + "\n")


def finite(obj: Any, digits: int | None = None) -> Any:
    """`obj` as JSON holds it, recursively through dicts, lists and tuples: NaN and infinities as None,
    numpy scalars as Python numbers, and floats rounded to `digits` when given."""
    if isinstance(obj, float):
        if not math.isfinite(obj):
            return None
        return obj if digits is None else round(float(obj), digits)
    if isinstance(obj, dict):
        return {k: finite(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v, digits) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:
        return finite(obj.item(), digits)
    return obj


def _json_default(obj: Any) -> Any:
    # numpy scalars and paths appear in metrics and configs; plain json cannot encode them.
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    """The JSON in `path`, or `default` when the file does not exist.

    Raises:
        DataFileError: the file exists but is not valid JSON (truncated, edited by hand): a file the
            project wrote must never be read as silently empty, so the message names it.
    """
    path = Path(path)
    if not path.is_file():
        return default
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataFileError(f"{path} is not valid JSON ({err}); restore it or delete it to have it made again") from err


@contextlib.contextmanager
def locked(folder: str | os.PathLike) -> Iterator[None]:
    """An exclusive lock on `folder` (a `.lock` file in it) for a read-modify-write of its files;
    blocks until another process or thread holding it is done. The kernel drops it when its holder
    dies, however it dies. No lock where the system has no flock (not POSIX)."""
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:
        yield
        return
    with open(path / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
