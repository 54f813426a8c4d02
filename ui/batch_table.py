"""The Misclassification page's batch-table view (issue #15): accuracy, a confusion matrix, per-class accuracy and a
gallery of the misclassified images with their stored CAMs, all read from a ``python -m camlib.batch`` output
directory instead of computed.

The table has one row per image x method x layer; the view uses the rows of one method and layer (the prediction is
the same in each). A tile is the stored overlay PNG when the job wrote them (``--png``), else the stored map (float16
shard) over the image read again from its source (a CIFAR-10 split, or the file), else the map alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import streamlit as st

from camlib.batch import read_batch_table, read_run_record
from camlib.cifar import load_cifar10
from camlib.drawing import fast_png
from camlib.errors import CamlibError
from camlib.evaluation import confusion_matrix, per_class_accuracy
from camlib.imaging import decode_image
from camlib.models import Preprocessing, prepare_input
from camlib.overlay import colorize, overlay_heatmap, upscale_nearest
from ui import figures
from ui.cache import CACHE_TTL
from ui.text import md

PAGE_SIZE = 12
TILE_SIDE = 128


@dataclass(frozen=True)
class BatchTable:
    """A batch job's output as the page shows it: ``rows`` (the table as a DataFrame), its ``record`` (run.json) and
    the model's ``class_names``."""

    out: str
    rows: pd.DataFrame
    record: dict
    class_names: tuple[str, ...]


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
    return BatchTable(out, rows, record, tuple(record["model"]["classes"]))


@st.cache_data(max_entries=2, ttl=CACHE_TTL, show_spinner="Reading the CIFAR-10 images...")
def _cifar_images(root: str | None, split: str, limit: int | None) -> np.ndarray:
    return load_cifar10(root, split, limit=limit).images


def _image(table: BatchTable, image_id: str) -> np.ndarray | None:
    """What the model saw of ``image_id`` (uint8 ``(crop, crop, 3)``), or None when its source is not readable here."""
    settings = table.record["settings"]
    preprocessing = Preprocessing(**{**table.record["model"]["preprocessing"]})
    try:
        if settings.get("cifar10"):
            images = _cifar_images(settings.get("data"), settings["cifar10"], settings.get("limit"))
            image = images[int(image_id.rsplit("/", 1)[1])]
        elif settings.get("images"):
            image = decode_image((Path(settings["images"]) / image_id).read_bytes()).pixels
        else:
            return None
    except (OSError, ValueError, IndexError, CamlibError):
        return None
    return prepare_input(image, preprocessing).model_view


def _tile(table: BatchTable, stamp: int, row: pd.Series) -> bytes:
    png_path = row["png_path"] if isinstance(row["png_path"], str) else None
    where = {"map_path": row["map_path"], "map_index": int(row["map_index"]), "image_id": row["image_id"]}
    return _cached_tile(table, out=table.out, stamp=stamp, png_path=png_path, **where)


@st.cache_data(max_entries=64, ttl=CACHE_TTL, show_spinner=False)
def _cached_tile(  # noqa: PLR0913 (where the tile's map and image come from: its cache key)
    _table: BatchTable, *, out: str, stamp: int, map_path: str, map_index: int, png_path: str | None, image_id: str
) -> bytes:
    """One gallery tile as PNG, cached on where its map and image come from (``stamp``: the table's, so a resumed
    job's tiles are drawn again): a page change or a filter reruns the page, not 12 reads, blends and encodes."""
    directory = Path(out)
    if png_path is not None and (directory / png_path).is_file():
        return (directory / png_path).read_bytes()
    cam = np.load(directory / map_path, mmap_mode="r", allow_pickle=False)[map_index].astype(np.float32)
    image = _image(_table, image_id)
    tile = colorize(cam) if image is None else overlay_heatmap(image, cam)
    return fast_png(upscale_nearest(tile, TILE_SIDE))


def render(out: str) -> None:
    """Draw the batch-table view of ``out``; a camlib error (not a batch output) is shown with ``st.error``."""
    stamp = _stamp(out)
    try:
        table = open_batch_table(out, stamp)
    except CamlibError as error:
        st.error(md("{error}", error=error))
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
            out=out,
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
        columns[k % 4].image(_tile(table, stamp, row), width="stretch", output_format="PNG", caption=caption)
