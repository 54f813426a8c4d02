"""The Misclassification page's batch-table view: accuracy, a confusion matrix, per-class accuracy and a
gallery of the misclassified images with their stored CAMs, all read from a ``python -m camlib.batch`` output
directory instead of computed.

The table has one row per image x method x layer; the view uses the rows of one method and layer (the prediction is
the same in each). A tile is the stored overlay PNG when the job wrote them (``--png``), else the stored map (float16
shard) over the image read again from its source (a CIFAR-10 split, or the file), else the map alone.

A visitor names the folder, so everything is confined: the folder must lie inside one the operator shares
(``$CAMLIB_BATCH_ROOTS``, paths separated by ``os.pathsep``; by default the project's ``runs/``), every map and overlay
path stored in the table must stay inside that folder (``camlib.batch.files.confined``: no absolute path, no ``..``, no
symlink leading out), and images are read again only from an image folder or CIFAR-10 copy inside a shared folder (or
the operator's CIFAR-10 root). Messages name the folder as the visitor typed it, never a server path.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from camlib.batch import read_batch_map, read_batch_table, read_run_record
from camlib.batch.files import confined, read_capped, within
from camlib.cifar import default_root, load_cifar10
from camlib.drawing import fast_png
from camlib.errors import CamlibError, ImageTooLargeError, InputError
from camlib.evaluation import confusion_matrix, per_class_accuracy
from camlib.imaging import MAX_UPLOAD_BYTES, decode_image
from camlib.models import Preprocessing, prepare_input
from camlib.overlay import colorize, overlay_heatmap, upscale_nearest
from camlib.parsing import parse_int
from ui import figures
from ui.stores import CACHE_TTL
from ui.text import md

PAGE_SIZE = 12
TILE_SIDE = 128
BATCH_ROOTS_ENV = "CAMLIB_BATCH_ROOTS"
DEFAULT_BATCH_ROOT = Path(__file__).resolve().parents[1] / "runs"  # where the README's examples write --out


@dataclass(frozen=True)
class BatchTable:
    """A batch job's output as the page shows it: ``rows`` (the table as a DataFrame), its ``record`` (run.json) and
    the model's ``class_names``."""

    out: str
    rows: pd.DataFrame
    record: dict
    class_names: tuple[str, ...]


def batch_roots() -> tuple[Path, ...]:
    """The folders visitors may open batch tables from: ``$CAMLIB_BATCH_ROOTS`` (paths separated by ``os.pathsep``),
    else ``DEFAULT_BATCH_ROOT``. Read at each call, so the operator's setting applies without a restart of the page."""
    configured = os.environ.get(BATCH_ROOTS_ENV, "")
    roots = tuple(Path(part.strip()).expanduser() for part in configured.split(os.pathsep) if part.strip())
    return roots or (DEFAULT_BATCH_ROOT,)


def resolve_batch_folder(typed: str) -> Path | None:
    """The folder a visitor typed, resolved (symlinks followed), when it is a directory inside one of
    ``batch_roots()``: a relative name is looked up in each shared folder in turn, an absolute path must lie inside
    one. None otherwise (also for text no path can be made of, e.g. with a NUL)."""
    for root in batch_roots():
        try:
            folder = within(root, typed.strip())
            if folder is not None and folder.is_dir():
                return folder
        except (OSError, ValueError):
            return None
    return None


def _shared(path: object, *, also: tuple[Path, ...] = ()) -> Path | None:
    """``path`` (a folder recorded in run.json) resolved when it lies inside a shared folder or one of ``also``."""
    if not isinstance(path, str) or not path:
        return None
    try:
        return next((p for root in (*also, *batch_roots()) if (p := within(root, path)) is not None), None)
    except (OSError, ValueError):
        return None


def _stamp(out: str) -> int:
    """The newest modification time (ns) of ``out``'s run.json and table files: a job still running, or resumed,
    changes it, so the cached table is read again."""
    try:
        files = [Path(out) / "run.json", *(Path(out) / "table").glob("part-*.parquet")]
        return max((f.stat().st_mtime_ns for f in files if f.is_file()), default=0)
    except OSError:  # unreadable: open_batch_table says why
        return 0


@st.cache_data(max_entries=4, ttl=CACHE_TTL, show_spinner="Reading the batch table...")
def open_batch_table(out: str, stamp: int = 0) -> BatchTable:
    """The table and run.json of ``out`` (``stamp``: ``_stamp(out)``, part of the cache key only). Raises
    ``InputError`` (camlib) when ``out`` is not a batch job's output."""
    record = read_run_record(out)
    rows = read_batch_table(out).to_pandas()
    names = tuple(record["model"]["classes"])
    for column in ("label", "predicted"):  # pages index the class names with them
        values = rows[column].dropna()
        if not values.empty and (values.min() < 0 or values.max() >= len(names)):
            raise InputError(f"the table's {column} column holds indices outside its model's {len(names)} classes")
    return BatchTable(out, rows, record, names)


@st.cache_data(max_entries=2, ttl=CACHE_TTL, show_spinner="Reading the CIFAR-10 images...")
def _cifar_images(root: str | None, split: str, limit: int | None) -> np.ndarray:
    return load_cifar10(root, split, limit=limit).images


def _image(table: BatchTable, image_id: str) -> np.ndarray | None:
    """What the model saw of ``image_id`` (uint8 ``(crop, crop, 3)``), or None when its source is not readable here
    or not shared: an image folder or CIFAR-10 root recorded in run.json is used only inside the table's folder or a
    shared one (a CIFAR-10 root also when it is the operator's, ``camlib.cifar.default_root``), and the image's id must
    stay inside its folder."""
    settings = table.record["settings"]
    try:
        preprocessing = Preprocessing(**{**table.record["model"]["preprocessing"]})
        if settings.get("cifar10") in ("train", "test"):
            operator = default_root()
            recorded = settings.get("data") or (str(operator) if operator else None)
            root = _shared(recorded, also=(Path(table.out), *((operator,) if operator else ())))
            if root is None or not isinstance(settings.get("limit"), int | None):
                return None
            images = _cifar_images(str(root), settings["cifar10"], settings.get("limit"))
            # "test/00042": its position in the split, strictly parsed (int() would take "-1", the last image).
            image = images[parse_int(image_id.rpartition("/")[2], "the image id", minimum=0, maximum=len(images) - 1)]
        elif (folder := _shared(settings.get("images"), also=(Path(table.out),))) is not None:
            data = read_capped(confined(folder, image_id), MAX_UPLOAD_BYTES, "the image", ImageTooLargeError)
            image = decode_image(data).pixels
        else:
            return None
        return prepare_input(image, preprocessing).model_view
    except (OSError, ValueError, TypeError, IndexError, CamlibError):
        return None


def _tile(table: BatchTable, stamp: int, row: pd.Series) -> bytes:
    png_path = row["png_path"] if isinstance(row["png_path"], str) else None
    index = row["map_index"]  # pandas gives a float when the column has nulls
    map_index = int(index) if isinstance(index, int | float | np.number) and np.isfinite(index) else -1
    where = {"map_path": row["map_path"], "map_index": map_index, "image_id": row["image_id"]}
    return _cached_tile(table, out=table.out, stamp=stamp, png_path=png_path, **where)


@st.cache_data(max_entries=64, ttl=CACHE_TTL, show_spinner=False)
def _cached_tile(  # noqa: PLR0913 (where the tile's map and image come from: its cache key)
    _table: BatchTable, *, out: str, stamp: int, map_path: str, map_index: int, png_path: str | None, image_id: str
) -> bytes:
    """One gallery tile as PNG, cached on where its map and image come from (``stamp``: the table's, so a resumed
    job's tiles are drawn again): a page change or a filter reruns the page, not 12 reads, blends and encodes.

    A stored overlay is decoded like an upload (caps, typed errors) and drawn again, never sent as the file's bytes.
    Raises ``InputError`` when the stored map cannot be used (outside the folder, torn, not a map)."""
    directory = Path(out)
    if png_path is not None:
        try:
            data = read_capped(confined(directory, png_path), MAX_UPLOAD_BYTES, "an overlay", ImageTooLargeError)
            return fast_png(upscale_nearest(decode_image(data).pixels, TILE_SIDE))
        except (OSError, CamlibError):
            pass  # missing, refused or unreadable: drawn from the map instead
    cam = read_batch_map(directory, map_path, map_index)
    image = _image(_table, image_id)
    tile = colorize(cam) if image is None else overlay_heatmap(image, cam)
    return fast_png(upscale_nearest(tile, TILE_SIDE))


def render(typed: str) -> None:
    """Draw the batch-table view of the folder a visitor ``typed``: refused with ``st.error`` unless it lies inside a
    shared folder (``resolve_batch_folder``); a camlib error (not a batch output, a torn or crafted table) is shown
    with ``st.error``, naming the folder as typed, never its server path."""
    folder = resolve_batch_folder(typed)
    if folder is None:
        st.error(
            md(
                "No batch output folder {name} among the folders this server shares (the operator lists them in "
                "{env}).",
                name=typed.strip(),
                env=BATCH_ROOTS_ENV,
            )
        )
        return
    out, shown = str(folder), typed.strip()
    stamp = _stamp(out)
    try:
        table = open_batch_table(out, stamp)
    except CamlibError as error:
        st.error(md("{error}", error=str(error).replace(out, shown)))
        return
    rows, names = table.rows, table.class_names
    pick = st.columns(2)
    method = pick[0].selectbox("Method", list(dict.fromkeys(rows["method"].dropna())))
    layer = pick[1].selectbox("Layer", list(dict.fromkeys(rows["layer"].dropna())))
    cells = rows[(rows["method"] == method) & (rows["layer"] == layer)]
    errors = int(cells["error"].notna().sum())
    labelled = cells[cells["error"].isna() & cells["label"].notna()]
    st.markdown(
        md(
            "**{n:,} images** in {out} ({model}); {errors:,} could not be read.",
            n=len(cells),
            out=shown,
            model=table.record["model"]["label"],
            errors=errors,
        )
    )
    if labelled.empty:
        st.info("No image of this table has a known label: there is nothing to score.")
        return
    labels = labelled["label"].to_numpy(np.int64)
    predicted = labelled["predicted"].to_numpy(np.int64)
    matrix = confusion_matrix(labels, predicted, len(names))
    st.markdown(
        md(
            "**Accuracy {accuracy:.2%}** on {n:,} labelled images.",
            accuracy=float(np.trace(matrix) / matrix.sum()),
            n=len(labels),
        )
    )
    left, right = st.columns([3, 2])
    left.plotly_chart(figures.confusion_figure(matrix, names))
    right.plotly_chart(figures.per_class_figure(per_class_accuracy(matrix), names))
    wrong = labelled[labels != predicted]
    true_filter = st.multiselect("True class", names, placeholder="any")
    if true_filter:
        wrong = wrong[wrong["label"].isin([names.index(c) for c in true_filter])]
    if wrong.empty:
        st.info("No misclassified images match these filters.")
        return
    pages = -(-len(wrong) // PAGE_SIZE)
    page = st.number_input(md("Page (1..{pages}) of {n} images", pages=pages, n=len(wrong)), 1, pages, 1)
    columns = st.columns(4)
    for k, (_, row) in enumerate(wrong.iloc[(page - 1) * PAGE_SIZE : page * PAGE_SIZE].iterrows()):
        caption = md(
            "{image}: {truth} → {guess} ({p:.0%})",
            image=row["image_id"],
            truth=names[int(row["label"])],
            guess=row["predicted_name"],
            p=row["probability"],
        )
        try:
            tile = _tile(table, stamp, row)
        except CamlibError as error:  # a torn, crafted or missing map: this tile says why, the others are drawn
            columns[k % 4].error(
                md(
                    "{image}: {error}",
                    image=row["image_id"],
                    error=str(error).replace(out, shown),
                )
            )
            continue
        columns[k % 4].image(tile, width="stretch", output_format="PNG", caption=caption)
