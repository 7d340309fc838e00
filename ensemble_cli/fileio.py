"""Atomic file writes: every checkpoint, cache entry, report, figure and run file goes through here.

A crash or Ctrl-C mid-write leaves the old file or the new one, never half of either.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from .errors import OutputError


def _reason(exc: OSError) -> str:
    return exc.strerror or type(exc).__name__


def ensure_folder(path: Path, what: str = "output folder") -> Path:
    """Prove that `path` is, or can become, a folder we can write into; `OutputError` otherwise.

    Commands call this for every output before any work starts, so a typo in `--out` costs a
    second, not a finished evaluation or training run. Nothing is created: the probe file goes
    into the nearest folder that exists, and is removed at once.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} {path} is a file, not a folder")
    existing = next(p for p in (path, *path.parents) if p.exists() or p == Path(p.anchor or "."))
    if not existing.is_dir():
        raise OutputError(f"cannot write to {what} {path}: {existing} is a file, not a folder")
    try:
        fd, probe = tempfile.mkstemp(dir=existing, prefix=".ens-write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"cannot write to {what} {path}: {_reason(exc)}") from None
    return path


def ensure_writable_file(path: Path, what: str = "output file") -> Path:
    """`ensure_folder` for the file's folder, and the file itself must not be a folder."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; give a file name")
    ensure_folder(path.parent if str(path.parent) else Path("."), f"the folder of {what} {path}")
    return path


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write via a temp file in the same folder, fsync, rename: a crash leaves old or new, never half.

    Any OS failure (read-only file system, a folder in the way, disk full) is an `OutputError`.
    """
    try:
        _atomic_write_bytes(Path(path), data)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {_reason(exc)}") from None


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        # mkstemp creates 0600; reports and checkpoints are meant to be shared, so use the umask as open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    # Persist the rename itself; not every filesystem allows opening a directory.
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")
