"""Durable file replacement: one implementation of "temp file, fsync, rename, fsync the directory".

A reader of ``path`` sees either the old content or the new one, never a torn file, and after a crash
the rename itself is durable (the directory entry was fsynced).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(tmp: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename an already written and fsynced ``tmp`` over ``target`` and fsync the directory."""
    os.replace(tmp, target)
    fsync_dir(Path(target).parent)


def temp_path(path: Path) -> Path:
    """The temporary sibling ``path`` is written through (same directory, so the rename is atomic)."""
    return path.with_name(path.name + ".tmp")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
    """Write ``path`` through a temporary sibling; it replaces ``path`` only if the block completes."""
    target = Path(path)
    tmp = temp_path(target)
    try:
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike[str], data: bytes | str) -> None:
    """Replace ``path`` with ``data`` (str is written as UTF-8) durably and atomically."""
    with atomic_file(path) as f:
        f.write(data.encode() if isinstance(data, str) else data)
