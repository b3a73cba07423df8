"""Atomic file writes: a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on success rename it onto ``target``.

    On an exception the temporary file is removed and ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def atomic_write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


@contextmanager
def atomic_dir(target: str | Path, *, replace: bool = False, complete_marker: str = "config.json") -> Iterator[Path]:
    """Yield a temporary folder next to ``target``; on success move it onto ``target``, so a reader
    sees the folder complete or not at all. On an exception ``target`` is left as it was.

    ``replace=False`` (caches): if another process finished ``target`` first (it holds
    ``complete_marker``), its folder is kept. ``replace=True`` (results): an existing ``target`` is
    replaced, and only once the new folder is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield tmp
        if replace and target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            os.replace(target, old / target.name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            os.replace(tmp, target)
        except OSError:
            if replace or not (target / complete_marker).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(target: str | Path, payload: object, *, indent: int | None = 2) -> None:
    """Write ``payload`` as JSON (one trailing newline), atomically."""
    atomic_write_text(target, json.dumps(payload, indent=indent) + "\n")


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))
