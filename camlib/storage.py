"""Files camlib writes so that a crash or power loss leaves the old file or the whole new one, never a part.

The recipe is POSIX's: write a temporary file in the same directory, fsync it, rename it over the target
(``os.replace`` is atomic), then fsync the directory so that the rename itself survives (without it, ext4 and XFS can
leave a 0-byte file after a power loss). Standard library only: the gallery's prediction cache imports it on start.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from camlib.contracts import require_path
from camlib.errors import InputError


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make a rename in ``directory`` durable (POSIX: fsync the directory). Windows has no directory handles to
    fsync, and some filesystems refuse it (EINVAL): there the rename is as durable as the system makes it.

    Raises:
        InputError: ``directory`` is not a path. OSError: it cannot be opened.
    """
    directory = require_path(directory, "directory")
    if os.name != "posix":
        return
    handle = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        with contextlib.suppress(OSError):
            os.fsync(handle)
    finally:
        os.close(handle)


def write_durably(path: Path, write: Callable[[BinaryIO], None], *, sync_directory: bool = True) -> None:
    """Write ``path`` so that after a crash or power loss it is either the old file or the whole new one.

    ``write`` fills a temporary file in the same directory (a leading dot: Parquet readers skip it), which is flushed
    and fsynced, renamed over ``path`` (``os.replace``, atomic), and the directory is fsynced (``sync_directory=False``
    leaves that to the caller, which fsyncs a directory once after writing many files into it). The temporary file is
    removed if anything fails.

    Raises:
        InputError: ``path`` is not a path or ``write`` not callable. What ``write`` or the filesystem raise.
    """
    path = require_path(path, "path")
    if not callable(write):
        raise InputError(f"write must be a callable that fills the file, got {type(write).__name__}")
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    if sync_directory:
        fsync_directory(path.parent)
