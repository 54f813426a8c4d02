"""The files of a batch job: written durably, read with sizes checked before any byte is read, trusted only once
checked, and every path stored in them confined to the job's folder.

A crash or a power loss must never leave a file that looks finished: each file is written to a temporary name,
flushed and fsynced, renamed over its final name, and the directory is fsynced so the rename itself survives (without
the fsyncs a rename can reach the disk before the data, leaving a 0-byte or short file under the final name). A table
file found on a rerun is still checked before its shard counts as finished (``part_problem``).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePath

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from camlib.contracts import require_path
from camlib.errors import CamlibError, InputError

MAX_LIST_BYTES = 64 * 1024 * 1024  # a --list file: about 500,000 lines of 128 characters
MAX_RUN_BYTES = 16 * 1024 * 1024  # run.json: settings, versions and one entry of ~300 bytes per run
MAX_PART_BYTES = 256 * 1024 * 1024  # one shard's table file (a shard of 256 images x 20 cells is about 1 MB)
MAX_MAPS_BYTES = 2 * 1024 * 1024 * 1024  # one shard's maps file, read through a memory map (only the rows shown)
MAX_TABLE_ROWS = 20_000_000  # rows a table may declare in all (its footers' counts), before any row is read
MAX_TABLE_BYTES = 4 * 1024 * 1024 * 1024  # uncompressed bytes a table may declare in all (its row groups' sizes)
# What reading a Parquet or .npy file raises on a torn or crafted file: pyarrow's errors (ArrowInvalid is a ValueError,
# ArrowIOError an OSError), numpy's header errors (ValueError), and EOF.
READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError)


def _megabytes(size: int) -> str:
    return f"{size / 1e9:.1f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def read_capped(path: str | os.PathLike[str], limit: int, what: str, error: type[CamlibError] = InputError) -> bytes:
    """The bytes of ``path``, read only after its size (``stat``) is within ``limit``; memory at most ``limit``.

    Args:
        path: a regular file (a FIFO or a device is refused: reading one could block or never end).
        limit: the largest accepted size, bytes.
        what: how messages name the file (e.g. "--checkpoint model.pt").
        error: the ``CamlibError`` class raised (e.g. ``ImageTooLargeError`` for an image).

    Raises:
        ``error``: not a regular file, or larger than ``limit`` (also when the file grew after the ``stat``: at most
            ``limit + 1`` bytes are read). ``OSError`` when it cannot be opened or read. ``InputError``: an argument
            of another type (``limit`` not a positive integer).
    """
    path = require_path(path, "path")
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InputError(f"limit must be a positive integer (bytes), got {limit!r}")
    if not isinstance(what, str) or not (isinstance(error, type) and issubclass(error, CamlibError)):
        raise InputError("what must be a string and error a CamlibError class")
    # Opened without blocking (a FIFO would wait for a writer), then the open file is measured: the file read is the
    # file whose size was checked.
    with os.fdopen(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} is not a regular file")
        if info.st_size > limit:
            raise error(f"{what} is too large ({_megabytes(info.st_size)} > {_megabytes(limit)})")
        data = file.read(limit + 1)
    if len(data) > limit:
        raise error(f"{what} is too large (it grew past {_megabytes(limit)} while being read)")
    return data


def within(root: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path | None:
    """``path`` (relative to ``root``, or absolute) resolved, symlinks followed, if it lies inside ``root`` (itself
    resolved); None if it leaves it, or if its symlinks loop.

    Raises:
        InputError: ``root`` or ``path`` is not a path (str or Path without NUL).
    """
    root, path = require_path(root, "root"), require_path(path, "path")
    try:
        base = root.resolve()
        resolved = (base / path).resolve()
    except RuntimeError:  # a symlink loop, before Python 3.13: where it leads cannot be known
        return None
    return resolved if resolved.is_relative_to(base) else None


def confined(folder: str | os.PathLike[str], stored: object) -> Path:
    """A path stored in a job's files (a map, an overlay, an image id), resolved inside ``folder``.

    Returns:
        The resolved path, inside ``folder`` after every symlink is followed.

    Raises:
        InputError: ``folder`` is not a path; ``stored`` is not a non-empty string, is absolute (also a Windows
            drive or UNC path), has a ``..`` part, holds a NUL, or resolves (through a symlink) outside ``folder``.
            The message names the stored path only, never ``folder``.
    """
    require_path(folder, "folder")
    if not isinstance(stored, str) or not stored or "\x00" in stored:
        raise InputError(f"a stored path must be a non-empty string, got {stored!r:.80}")
    parts = PurePath(stored.replace("\\", "/")).parts
    if Path(stored).is_absolute() or stored.startswith(("/", "\\")) or ":" in stored or ".." in parts:
        raise InputError(f"the stored path {stored!r:.200} is not relative to its folder; refused")
    resolved = within(folder, stored)
    if resolved is None:
        raise InputError(f"the stored path {stored!r:.200} leads outside its folder (a symlink); refused")
    return resolved


def _maps_rows(path: Path) -> tuple[int, ...]:
    """The shape of a maps file (``.npy``), from its header only: a memory map reads no data."""
    size = path.stat().st_size
    if size > MAX_MAPS_BYTES:
        raise InputError(f"{path.name} is too large ({_megabytes(size)} > {_megabytes(MAX_MAPS_BYTES)})")
    maps = np.load(path, mmap_mode="r", allow_pickle=False)
    return tuple(maps.shape) if maps.dtype == np.float16 and maps.ndim == 3 else ()


def part_problem(out: Path, part: Path, schema: pa.Schema, positions: range, cells: int) -> str | None:
    """Why the table file ``part`` of a shard cannot be trusted as finished, or None when it can.

    A trusted part: non-empty and within ``MAX_PART_BYTES``; its footer parses; its columns are ``schema``; it holds
    ``len(positions) * cells`` rows whose positions are ``positions``; every map it names is a row of a whole maps file
    inside ``out``, and every overlay it names is a file inside ``out``.

    Raises:
        InputError: an argument of another type (``schema`` a ``pyarrow.Schema``, ``positions`` a ``range``, ``cells``
            a positive integer).
    """
    out, part = require_path(out, "out"), require_path(part, "part")
    if not isinstance(schema, pa.Schema) or not isinstance(positions, range):
        raise InputError("schema must be a pyarrow.Schema and positions a range of image positions")
    if isinstance(cells, bool) or not isinstance(cells, int) or cells < 1:
        raise InputError(f"cells must be a positive integer (methods x layers), got {cells!r}")
    return _table_problem(part, schema, positions, cells) or _stored_files_problem(out, part)


def _table_problem(  # noqa: PLR0911 (one return per reason a part is not trusted)
    part: Path, schema: pa.Schema, positions: range, cells: int
) -> str | None:
    try:
        size = part.stat().st_size
        if size == 0:
            return "0 bytes"
        if size > MAX_PART_BYTES:
            return f"{_megabytes(size)}, more than a shard can hold"
        metadata = pq.read_metadata(part)
        if not metadata.schema.to_arrow_schema().equals(schema):
            return "other columns than this job's"
        if metadata.num_rows != len(positions) * cells:
            return f"{metadata.num_rows} rows where the shard has {len(positions) * cells}"
        table = pq.read_table(part).to_pydict()
    except READ_ERRORS as error:
        return f"unreadable ({type(error).__name__})"
    if sorted(set(table["position"])) != list(positions):
        return "rows of other images than the shard's"
    return None


def _stored_files_problem(out: Path, part: Path) -> str | None:
    """Why the maps or overlays a (whole) table file names cannot be used, or None."""
    try:
        table = pq.read_table(part, columns=["map_path", "map_index", "png_path"]).to_pydict()
        shapes = {path: _maps_rows(confined(out, path)) for path in set(table["map_path"]) if path is not None}
        for path, index in zip(table["map_path"], table["map_index"]):
            if path is not None and (not shapes[path] or index is None or not 0 <= index < shapes[path][0]):
                return f"a map row ({path} row {index}) that its maps file does not hold"
        for path in table["png_path"]:
            if path is not None and not confined(out, path).is_file():
                return f"an overlay ({path}) that is missing"
    except (InputError, *READ_ERRORS) as error:
        return f"maps or overlays that cannot be read ({type(error).__name__})"
    return None
