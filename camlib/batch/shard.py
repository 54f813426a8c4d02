"""One shard of a batch job, whatever the engine: its inputs, CAMs, metrics, table rows and files.

A job is cut into shards of ``--shard-size`` consecutive images (in input order). ``_read_shard`` reads a shard's
images as the model sees them (an unreadable one becomes an error), ``_explain_shard`` turns them into the shard's
table rows and maps, and ``_write_shard`` writes them: maps and overlays first, the table file last, each one durably
(``camlib.storage.write_durably``), so a table file means a finished shard; a rerun still checks it before trusting
it (``camlib.batch.files.part_problem``). The local engine (``camlib.batch.job``) and the Ray actors
(``camlib.batch.ray_engine``) call the same three functions, so both write the same table.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from camlib.batch.files import MAX_LIST_BYTES, read_capped
from camlib.cam import compute_cam_grid, layer_magnitudes
from camlib.cifar import IMAGE_SUFFIXES, default_root, load_cifar10
from camlib.errors import CamlibError, ImageTooLargeError, InputError
from camlib.imaging import MAX_UPLOAD_BYTES, decode_image
from camlib.models import (
    LoadedModel,
    Preprocessing,
    load_checkpoint,
    load_model,
    prepare_batch,
    prepare_input,
)
from camlib.parsing import int_or_none
from camlib.storage import fsync_directory, write_durably

if TYPE_CHECKING:
    from camlib.batch.job import BatchConfig

TABLE_DIR = "table"
MAPS_DIR = "maps"
PNG_DIR = "png"

# Per-image metric columns (float64), each from camlib.metrics on the row's map and explained class:
# deletion_auc / insertion_auc (deletion_insertion, blur baseline, 20 steps), road (ROAD combined, seeded noise),
# confidence_change (p(x * map) - p(x)), confidence_drop (max(0, p(x) - p(x * map)) / p(x): its mean x 100 is the
# Average Drop) and confidence_increased (1.0 where p(x * map) > p(x): its mean x 100 is the Increase in Confidence).
BATCH_METRICS = (
    "deletion_auc",
    "insertion_auc",
    "road",
    "confidence_change",
    "confidence_drop",
    "confidence_increased",
)

TABLE_SCHEMA = pa.schema(
    [
        pa.field("image_id", pa.string()),  # path relative to the folder, the list file's line, or "test/00042"
        pa.field("position", pa.int64()),  # the image's place in the input order
        pa.field("shard", pa.int32()),
        pa.field("label", pa.int32()),  # the true class index in the model's classes (null when unknown)
        pa.field("label_name", pa.string()),
        pa.field("predicted", pa.int32()),
        pa.field("predicted_name", pa.string()),
        pa.field("probability", pa.float32()),  # softmax probability of the predicted class
        pa.field("method", pa.string()),
        pa.field("layer", pa.string()),
        pa.field("class_idx", pa.int32()),  # the explained class
        pa.field("class_name", pa.string()),
        pa.field("class_probability", pa.float32()),
        pa.field("peak", pa.float32()),  # the layer's peak positive raw CAM value (camlib.cam.layer_magnitudes)
        pa.field("peak_y", pa.int32()),  # where the map is largest, in model-input pixels
        pa.field("peak_x", pa.int32()),
        pa.field("degenerate", pa.bool_()),  # the map carries no positive evidence (all zeros)
        pa.field("map_path", pa.string()),  # maps/shard-NNNNN.npy, relative to --out
        pa.field("map_index", pa.int32()),  # the map's row in that file
        pa.field("png_path", pa.string()),  # png/shard-NNNNN/....png with --png
        pa.field("error", pa.string()),  # why this image has no CAM (unreadable file...); null when it has one
    ]
)


@dataclass(frozen=True)
class _Item:
    """One input image: its id, the file to decode (None: a CIFAR-10 split's pixels) and its label if known."""

    image_id: str
    path: str | None
    label: int | None
    label_name: str | None


@dataclass(frozen=True)
class _Job:
    """What every shard of one job uses; picklable (Ray actors receive it)."""

    config: BatchConfig
    items: tuple[_Item, ...] = field(repr=False)
    layers: tuple[str, ...]
    class_names: tuple[str, ...]
    preprocessing: Preprocessing
    model_sha256: str

    @property
    def shards(self) -> int:
        return -(-len(self.items) // self.config.shard_size)

    def positions(self, shard: int) -> range:
        size = self.config.shard_size
        return range(shard * size, min((shard + 1) * size, len(self.items)))


# --- inputs --------------------------------------------------------------------------------------------------------


def _label_of(name: str, class_names: tuple[str, ...]) -> int | None:
    lowered = [c.lower() for c in class_names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    return int_or_none(name, minimum=0, maximum=len(class_names) - 1)


def _folder_items(root: Path, class_names: tuple[str, ...]) -> list[_Item]:
    """``root/<class>/*`` (labelled by the folder's name, a class name or index) or ``root/*`` (unlabelled), sorted.

    Every file with an image suffix is listed, readable or not: an unreadable one becomes an error row."""
    suffixes = {*IMAGE_SUFFIXES, ".webp", ".bmp", ".tif", ".tiff", ".gif"}
    flat = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in suffixes)
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    items = [_Item(p.name, str(p), None, None) for p in flat]
    for folder in folders:
        label = _label_of(folder.name, class_names)
        for path in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in suffixes):
            items.append(_Item(f"{folder.name}/{path.name}", str(path), label, folder.name))
    if not items:
        raise InputError(f"--images {root}: no image files ({', '.join(sorted(suffixes))}) in it or its subfolders")
    return items


def _list_items(file: Path, class_names: tuple[str, ...]) -> list[_Item]:
    """One image a line (relative paths from the list file's folder), optionally ``<TAB>label`` (name or index)."""
    try:
        text = read_capped(file, MAX_LIST_BYTES, f"--list {file}").decode("utf-8")
    except UnicodeDecodeError as error:
        raise InputError(f"--list {file} is not UTF-8 text (byte {error.start})") from error
    items = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        path_text, _, label_text = line.rstrip("\n").partition("\t")
        path = Path(path_text.strip())
        path = path if path.is_absolute() else file.parent / path
        label = _label_of(label_text.strip(), class_names) if label_text.strip() else None
        if label_text.strip() and label is None:
            raise InputError(f"--list {file} line {number}: label {label_text.strip()!r} is not one of the classes")
        items.append(_Item(path_text.strip(), str(path), label, class_names[label] if label is not None else None))
    if not items:
        raise InputError(f"--list {file} names no image")
    return items


def _inputs(config: BatchConfig, class_names: tuple[str, ...]) -> tuple[list[_Item], np.ndarray | None]:
    """The job's images in order, and the pixels of a CIFAR-10 split (None for files)."""
    if config.cifar10 is not None:
        data = load_cifar10(config.data or default_root(), config.cifar10, limit=config.limit)
        names = data.class_names
        items = [
            _Item(f"{config.cifar10}/{k:05d}", None, _label_of(names[label], class_names), names[label])
            for k, label in enumerate(data.labels.tolist())
        ]
        return items, data.images
    if config.images is not None:
        items = _folder_items(Path(config.images), class_names)
    else:
        items = _list_items(Path(config.list_file), class_names)
    return items[: config.limit], None


def _load_view(item: _Item, pixels: np.ndarray | None, preprocessing: Preprocessing) -> tuple[np.ndarray | None, str]:
    """What the model sees of one image, uint8 ``(crop, crop, 3)``, or None and why it cannot be read."""
    if item.path is None:
        image = pixels
    else:
        try:
            # The size is checked before any byte is read: a multi-GB file in the folder costs a stat, not its bytes.
            data = read_capped(item.path, MAX_UPLOAD_BYTES, "the file", ImageTooLargeError)
            image = decode_image(data, filename=Path(item.path).name).pixels
        except (OSError, CamlibError) as error:
            return None, f"{type(error).__name__}: {error}"
    return prepare_input(image, preprocessing).model_view, ""


# --- one shard -----------------------------------------------------------------------------------------------------


def _class_request(job: _Job, labels: list[int | None]) -> int | list[int] | None:
    target = job.config.target
    if target == "predicted":
        return None
    if target == "true":
        return [int(label) for label in labels]
    return int(target)


def _metric_columns(
    model: torch.nn.Module, x: torch.Tensor, maps: np.ndarray, classes: list[int], job: _Job
) -> dict[str, np.ndarray]:
    """The requested ``BATCH_METRICS`` of ``maps`` ``(B, H, W)``: ``{name: (B,) float64}``."""
    if not job.config.metrics:  # most jobs ask for none: then camlib.metrics (scipy.stats, ~2 s) is never imported
        return {}
    # Imported here: scipy.stats and scikit-image cost every Ray actor seconds at start (and the driver's dry run).
    from camlib.metrics import average_drop_increase, confidence_change, deletion_insertion, road

    wanted = set(job.config.metrics)
    out: dict[str, np.ndarray] = {}
    if wanted & {"deletion_auc", "insertion_auc"}:
        curves = deletion_insertion(model, x, maps, classes)
        out["deletion_auc"], out["insertion_auc"] = curves.deletion_auc, curves.insertion_auc
    if "road" in wanted:
        out["road"] = road(model, x, maps, classes, order="combined", seed=job.config.seed).scores
    if "confidence_change" in wanted:
        out["confidence_change"] = confidence_change(model, x, maps, classes)
    if wanted & {"confidence_drop", "confidence_increased"}:
        drop = average_drop_increase(model, x, maps, classes)
        out["confidence_drop"], out["confidence_increased"] = drop.drop, drop.increased
    return {name: np.asarray(out[name], dtype=np.float64) for name in job.config.metrics}


def _explain_chunk(loaded: LoadedModel, job: _Job, views: np.ndarray, labels: list[int | None]) -> list[dict]:
    """CAMs (every method x layer) and metrics of a chunk of views ``(B, crop, crop, 3)``: one record per image."""
    identity = dataclasses.replace(job.preprocessing, resize=job.preprocessing.crop)  # views are already cropped
    x = prepare_batch(views, identity).to(loaded.device)
    grid = compute_cam_grid(
        loaded.model,
        x,
        job.layers,
        job.config.methods,
        class_idx=_class_request(job, labels),
        seed=job.config.seed,
    )
    probabilities = grid[job.config.methods[0]].probabilities
    records = [{"probabilities": probabilities[b], "cells": {}} for b in range(len(views))]
    for method, result in grid.items():
        magnitudes = layer_magnitudes(result)
        for layer in job.layers:
            maps = result.maps[layer]
            metrics = _metric_columns(loaded.model, x, maps, result.class_idx, job)
            for b, record in enumerate(records):
                peak = np.unravel_index(int(np.argmax(maps[b])), maps[b].shape)
                record["cells"][method, layer] = {
                    "class_idx": int(result.class_idx[b]),
                    "map": maps[b],
                    "peak": float(magnitudes[layer][b]),
                    "peak_y": int(peak[0]),
                    "peak_x": int(peak[1]),
                    "degenerate": bool(result.degenerate[layer][b]),
                    **{name: float(values[b]) for name, values in metrics.items()},
                }
    return records


def _chunks(indices: list[int], size: int) -> Iterator[list[int]]:
    for start in range(0, len(indices), size):
        yield indices[start : start + size]


def _explain_shard(
    loaded: LoadedModel,
    job: _Job,
    shard: int,
    views: np.ndarray,
    errors: Sequence[str],
    *,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[pa.Table, np.ndarray, dict[str, bytes]]:
    """One shard's table, maps and overlays.

    Args:
        views: uint8 ``(n, crop, crop, 3)``, the shard's images as the model sees them (rows of unreadable images are
            ignored).
        errors: ``n`` strings, empty for a readable image, else why it is not.
        on_chunk: called with the number of images after each ``compute_cam_grid`` call (progress).

    Returns:
        The table (``_schema``), the maps ``float16 (rows with a map, crop, crop)`` in table order, and the overlay
        PNGs by path relative to ``--out``. An image whose CAMs raise a camlib error (e.g. non-finite logits) gets
        that error in its rows; other exceptions propagate.
    """
    positions = job.positions(shard)
    errors = list(errors)
    records: dict[int, dict] = {}
    readable = [k for k in range(len(positions)) if not errors[k]]
    for chunk in _chunks(readable, job.config.batch_size):
        labels = [job.items[positions[k]].label for k in chunk]
        try:
            found = _explain_chunk(loaded, job, views[chunk], labels)
        except CamlibError:  # find the image(s) at fault: each alone, the others keep their CAMs
            found = []
            for k, label in zip(chunk, labels):
                try:
                    found += _explain_chunk(loaded, job, views[k : k + 1], [label])
                except CamlibError as error:
                    errors[k] = f"{type(error).__name__}: {error}"
                    found.append(None)
        records.update({k: record for k, record in zip(chunk, found) if record is not None})
        if on_chunk is not None:
            on_chunk(len(chunk))
    return _shard_table(job, shard, views, errors, records)


def _shard_table(
    job: _Job, shard: int, views: np.ndarray, errors: list[str], records: dict[int, dict]
) -> tuple[pa.Table, np.ndarray, dict[str, bytes]]:
    rows, maps, pngs = [], [], {}
    map_path = f"{MAPS_DIR}/shard-{shard:05d}.npy"
    names = job.class_names
    for k, position in enumerate(job.positions(shard)):
        item, record = job.items[position], records.get(k)
        for method in job.config.methods:
            for layer in job.layers:
                row: dict[str, Any] = {
                    "image_id": item.image_id,
                    "position": position,
                    "shard": shard,
                    "label": item.label,
                    "label_name": item.label_name,
                    "method": method,
                    "layer": layer,
                }
                if record is None:
                    rows.append({**row, "error": errors[k] or "no CAM"})
                    continue
                cell = dict(record["cells"][method, layer])
                probabilities = record["probabilities"]
                predicted = int(np.argmax(probabilities))
                cam = cell.pop("map")
                png_path = None
                if job.config.png:
                    from camlib.drawing import fast_png  # OpenCV is imported only when overlays are asked for
                    from camlib.overlay import overlay_heatmap

                    png_path = f"{PNG_DIR}/shard-{shard:05d}/{position:07d}_{method}_{layer}.png"
                    pngs[png_path] = fast_png(overlay_heatmap(views[k], cam))
                rows.append(
                    {
                        **row,
                        **cell,
                        "predicted": predicted,
                        "predicted_name": names[predicted],
                        "probability": float(probabilities[predicted]),
                        "class_name": names[cell["class_idx"]],
                        "class_probability": float(probabilities[cell["class_idx"]]),
                        "map_path": map_path,
                        "map_index": len(maps),
                        "png_path": png_path,
                    }
                )
                maps.append(cam.astype(np.float16))
    crop = job.preprocessing.crop
    stacked = np.stack(maps) if maps else np.zeros((0, crop, crop), np.float16)
    return pa.Table.from_pylist(rows, schema=_schema(job.config.metrics)), stacked, pngs


def _schema(metrics: Sequence[str]) -> pa.Schema:
    """``TABLE_SCHEMA`` with the requested metric columns (float64) before ``error``."""
    fields = list(TABLE_SCHEMA)
    return pa.schema([*fields[:-1], *(pa.field(name, pa.float64()) for name in metrics), fields[-1]])


def _part_path(out: Path, shard: int) -> Path:
    return out / TABLE_DIR / f"part-{shard:05d}.parquet"


def _write_shard(out: Path, shard: int, table: pa.Table, maps: np.ndarray, pngs: dict[str, bytes]) -> None:
    """Maps and overlays first, the table file last, each durably: the table file marks the shard finished."""
    maps_file = out / MAPS_DIR / f"shard-{shard:05d}.npy"
    maps_file.parent.mkdir(parents=True, exist_ok=True)
    write_durably(maps_file, lambda file: np.save(file, maps, allow_pickle=False))
    for relative, png in pngs.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        write_durably(out / relative, lambda file, png=png: file.write(png), sync_directory=False)
    for folder in {(out / relative).parent for relative in pngs}:  # one directory fsync for a shard's overlays
        fsync_directory(folder)
    part = _part_path(out, shard)
    part.parent.mkdir(parents=True, exist_ok=True)
    write_durably(part, lambda file: pq.write_table(table, file))


def _load_model(config: BatchConfig, checkpoint: bytes | None) -> LoadedModel:
    """The registered model, or ``checkpoint``'s weights in its architecture (safetensors / weights-only: never
    unpickled)."""
    if checkpoint is None:
        return load_model(config.model, allow_download=False)
    return load_checkpoint(config.model, checkpoint, Path(config.checkpoint or "").name)


def _collate(job: _Job, views: list[tuple[np.ndarray | None, str]]) -> tuple[np.ndarray, list[str]]:
    """A shard's items as ``(uint8 (n, crop, crop, 3), errors)``; unreadable images are zeros."""
    crop = job.preprocessing.crop
    stacked = np.zeros((len(views), crop, crop, 3), np.uint8)
    for k, (view, _) in enumerate(views):
        if view is not None:
            stacked[k] = view
    return stacked, [error for _, error in views]


def _read_shard(job: _Job, shard: int, pixels: np.ndarray | None) -> tuple[np.ndarray, list[str]]:
    """One shard's views and read errors (``_collate``); ``pixels``: the shard's CIFAR-10 images, or None (files)."""
    positions = job.positions(shard)
    return _collate(
        job,
        [
            _load_view(job.items[p], None if pixels is None else pixels[k], job.preprocessing)
            for k, p in enumerate(positions)
        ],
    )
