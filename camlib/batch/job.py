"""The batch job: arguments, inputs, one shard's CAMs and metrics, its files, resuming, and the local engine.

A job is cut into shards of ``--shard-size`` consecutive images (in input order). ``_explain_shard`` turns one
shard's images into its table rows and maps, whatever the engine; ``_write_shard`` writes them (maps and overlays
first, the table file last and atomically, so a table file means a finished shard). The local engine runs the shards
in this process; ``camlib.batch.ray_engine`` runs the same two functions in Ray actors.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torchvision
from tqdm import tqdm

from camlib.cam import METHODS, compute_cam_grid, layer_magnitudes
from camlib.cifar import IMAGE_SUFFIXES, default_root, load_cifar10
from camlib.errors import CamlibError, InputError
from camlib.imaging import decode_image
from camlib.layers import default_layer, list_candidate_layers
from camlib.models import (
    DEFAULT_CIFAR_MODEL,
    MODELS,
    LoadedModel,
    Preprocessing,
    load_checkpoint,
    load_model,
    prepare_batch,
    prepare_input,
)
from camlib.prediction_cache import weights_digest

RUN_FILE = "run.json"
TABLE_DIR = "table"
MAPS_DIR = "maps"
PNG_DIR = "png"
RUN_FORMAT = 1
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
CLASS_CHOICES = ("predicted", "true")
ENGINES = ("local", "ray")
# Settings a rerun must share with the run that wrote --out (they change the table's numbers or its rows).
RESUME_KEYS = (
    "model",
    "checkpoint",
    "images",
    "cifar10",
    "data",
    "list_file",
    "limit",
    "methods",
    "layers",
    "target",
    "metrics",
    "shard_size",
    "png",
    "seed",
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
class BatchConfig:
    """A batch job's arguments (build one with ``parse_args``; ``run_batch`` checks it)."""

    out: str
    model: str = DEFAULT_CIFAR_MODEL
    checkpoint: str | None = None
    images: str | None = None
    cifar10: str | None = None
    data: str | None = None
    list_file: str | None = None
    limit: int | None = None
    methods: tuple[str, ...] = ("gradcam",)
    layers: tuple[str, ...] = ()
    target: str = "predicted"
    metrics: tuple[str, ...] = ()
    shard_size: int = 256
    batch_size: int = 64
    workers: int = 2
    engine: str = "local"
    address: str | None = None
    png: bool = False
    seed: int = 0
    threads: int | None = None


@dataclass(frozen=True)
class BatchSummary:
    """What one ``run_batch`` call did.

    Attributes:
        out: the output directory.
        images: images in the job; ``rows``: table rows in all (images x methods x layers).
        shards: shards in the job; ``skipped``: those already finished by an earlier run.
        errors: images with an error row (in all finished shards).
        elapsed_s: wall time of this call's shard work (s): local, the engine's loop (reading, CAMs, files); Ray, from
            the first shard's start in an actor to the last one's end (the actors' start, their model loading, is
            left out as the local engine's model loading is). ``images_per_s``: images computed per second of it.
        call_s: wall time of the engine call (s); for Ray it includes connecting and starting the actors.
    """

    out: str
    images: int
    rows: int
    shards: int
    skipped: int
    errors: int
    elapsed_s: float
    images_per_s: float
    call_s: float


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


# --- arguments -----------------------------------------------------------------------------------------------------


def _names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def parse_args(argv: list[str] | None = None) -> BatchConfig:
    parser = argparse.ArgumentParser(prog="python -m camlib.batch", description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", help="image folder: <dir>/<class>/*.jpg (labelled) or <dir>/*.jpg (flat)")
    source.add_argument("--cifar10", choices=("train", "test"), help="a CIFAR-10 split (root: --data)")
    source.add_argument("--list", dest="list_file", help="text file: one image path a line, optionally TAB label")
    parser.add_argument("--data", default=None, help="CIFAR-10 root (default: $CAMLIB_CIFAR10_ROOT)")
    parser.add_argument("--out", required=True, help="output directory (also what a rerun resumes)")
    parser.add_argument("--model", default=DEFAULT_CIFAR_MODEL, choices=sorted(MODELS), help="registry key")
    parser.add_argument("--checkpoint", default=None, help="weights for --model's architecture (.safetensors/.pt)")
    parser.add_argument("--methods", default="gradcam", help=f"comma-separated, of: {', '.join(METHODS)}")
    parser.add_argument("--layers", default="", help="comma-separated dotted names (default: the model's default)")
    parser.add_argument("--class", dest="target", default="predicted", help="predicted, true or a class index")
    parser.add_argument("--metrics", default="", help=f"comma-separated, of: {', '.join(BATCH_METRICS)}")
    parser.add_argument("--limit", type=int, default=None, help="only the first N images (CIFAR-10: class-balanced)")
    parser.add_argument("--shard-size", type=int, default=256, help="images per shard (the unit of resuming)")
    parser.add_argument("--batch-size", type=int, default=64, help="images per compute_cams call")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (local) or actors (ray)")
    parser.add_argument("--engine", choices=ENGINES, default="local")
    parser.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local)")
    parser.add_argument("--png", action="store_true", help="also write overlay PNGs")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampling methods and of ROAD's noise")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args(argv)
    return BatchConfig(
        out=args.out,
        model=args.model,
        checkpoint=args.checkpoint,
        images=args.images,
        cifar10=args.cifar10,
        data=args.data,
        list_file=args.list_file,
        limit=args.limit,
        methods=_names(args.methods),
        layers=_names(args.layers),
        target=args.target.strip(),
        metrics=_names(args.metrics),
        shard_size=args.shard_size,
        batch_size=args.batch_size,
        workers=args.workers,
        engine=args.engine,
        address=args.address,
        png=args.png,
        seed=args.seed,
        threads=args.threads,
    )


def _check_config(config: BatchConfig) -> None:
    """Refuse arguments that cannot work, before anything is loaded (``InputError`` naming the option)."""
    if not isinstance(config, BatchConfig):
        raise InputError(f"config must be a BatchConfig (see parse_args), got {type(config).__name__}")
    sources = [s for s in (config.images, config.cifar10, config.list_file) if s is not None]
    unknown_methods = [m for m in config.methods if m not in METHODS]
    unknown_metrics = [m for m in config.metrics if m not in BATCH_METRICS]
    checks = [
        (len(sources) == 1, "give exactly one input: --images, --cifar10 or --list"),
        (config.model in MODELS, f"--model {config.model!r} is not a registered model ({', '.join(MODELS)})"),
        (bool(config.methods), "--methods names no method"),
        (not unknown_methods, f"--methods: unknown {', '.join(unknown_methods)}; choose from {', '.join(METHODS)}"),
        (
            not unknown_metrics,
            f"--metrics: unknown {', '.join(unknown_metrics)}; choose from {', '.join(BATCH_METRICS)}",
        ),
        (
            config.target in CLASS_CHOICES or config.target.isdigit(),
            f"--class must be predicted, true or an index, got {config.target!r}",
        ),
        (config.limit is None or config.limit >= 1, f"--limit must be at least 1, got {config.limit}"),
        (config.shard_size >= 1, f"--shard-size must be at least 1, got {config.shard_size}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.workers >= 0, f"--workers must be 0 or more, got {config.workers}"),
        (config.engine in ENGINES, f"--engine must be one of {', '.join(ENGINES)}, got {config.engine!r}"),
        (config.seed >= 0, f"--seed must be 0 or more, got {config.seed}"),
        (config.threads is None or config.threads >= 1, f"--threads must be at least 1, got {config.threads}"),
        (config.engine != "ray" or config.workers >= 1, "--engine ray needs --workers 1 or more (actors)"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(message)
    if config.images is not None and not Path(config.images).is_dir():
        raise InputError(f"--images {config.images} is not a directory")
    if config.list_file is not None and not Path(config.list_file).is_file():
        raise InputError(f"--list {config.list_file} is not a file")
    if config.checkpoint is not None and not Path(config.checkpoint).is_file():
        raise InputError(f"--checkpoint {config.checkpoint} is not a file")
    if Path(config.out).exists() and not Path(config.out).is_dir():
        raise InputError(f"--out {config.out} is a file; give a directory")


# --- inputs --------------------------------------------------------------------------------------------------------


def _label_of(name: str, class_names: tuple[str, ...]) -> int | None:
    lowered = [c.lower() for c in class_names]
    if name.lower() in lowered:
        return lowered.index(name.lower())
    return int(name) if name.isdigit() and int(name) < len(class_names) else None


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
    items = []
    for number, line in enumerate(file.read_text(encoding="utf-8").splitlines(), start=1):
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
            data = Path(item.path).read_bytes()
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
    # Imported here: scipy and scikit-image cost every Ray actor seconds at start, and most jobs ask for no metric.
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


def _replace_atomically(path: Path, write: Callable[[Path], None]) -> None:
    temporary = path.with_name(f".{path.name}.tmp")  # a leading dot: Parquet readers skip it
    write(temporary)
    temporary.replace(path)


def _part_path(out: Path, shard: int) -> Path:
    return out / TABLE_DIR / f"part-{shard:05d}.parquet"


def _write_shard(out: Path, shard: int, table: pa.Table, maps: np.ndarray, pngs: dict[str, bytes]) -> None:
    """Maps and overlays first, the table file last: its existence marks the shard finished."""
    maps_file = out / MAPS_DIR / f"shard-{shard:05d}.npy"
    maps_file.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(maps_file, lambda p: p.write_bytes(_npy_bytes(maps)))
    for relative, png in pngs.items():
        (out / relative).parent.mkdir(parents=True, exist_ok=True)
        (out / relative).write_bytes(png)
    part = _part_path(out, shard)
    part.parent.mkdir(parents=True, exist_ok=True)
    _replace_atomically(part, lambda p: pq.write_table(table, p))


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


# --- the job -------------------------------------------------------------------------------------------------------


def _load_model(config: BatchConfig, checkpoint: bytes | None) -> LoadedModel:
    """The registered model, or ``checkpoint``'s weights in its architecture (safetensors / weights-only: never
    unpickled)."""
    if checkpoint is None:
        return load_model(config.model, allow_download=False)
    return load_checkpoint(config.model, checkpoint, Path(config.checkpoint or "").name)


def _versions(engine: str) -> dict[str, str]:
    versions = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "numpy": np.__version__,
        "pyarrow": pa.__version__,
    }
    if engine == "ray":
        import ray

        versions["ray"] = ray.__version__
    return versions


def _settings(config: BatchConfig, layers: tuple[str, ...]) -> dict[str, Any]:
    values = {key: getattr(config, key) for key in RESUME_KEYS}
    values["layers"] = list(layers)
    for key in ("images", "list_file", "checkpoint", "data"):
        if values[key] is not None:
            values[key] = str(Path(values[key]).resolve())
    return {key: list(v) if isinstance(v, tuple) else v for key, v in values.items()}


def _inputs_digest(items: Sequence[_Item]) -> str:
    digest = hashlib.sha256()
    for item in items:
        digest.update(f"{item.image_id}\t{item.label}\n".encode())
    return digest.hexdigest()


def _check_resume(out: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """The earlier run.json of ``out`` when it is this job's; ``InputError`` when it is another's."""
    run_file = out / RUN_FILE
    if not run_file.exists():
        if (out / TABLE_DIR).exists():
            raise InputError(f"--out {out} holds a table but no {RUN_FILE}: not a batch job's output; use another")
        return None
    try:
        previous = json.loads(run_file.read_text(encoding="utf-8"))
        saved = previous["settings"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(
            f"{run_file} is not a batch job's {RUN_FILE} ({type(error).__name__}); use another --out"
        ) from error
    changed = [
        f"--{key.replace('_', '-')} {saved.get(key)} -> {record['settings'][key]}"
        for key in RESUME_KEYS
        if saved.get(key) != record["settings"][key]
    ]
    if previous.get("model", {}).get("sha256") != record["model"]["sha256"]:
        changed.append("the model's weights (sha256)")
    if previous.get("inputs", {}).get("sha256") != record["inputs"]["sha256"]:
        changed.append("the input images (their list or labels)")
    if changed:
        raise InputError(
            f"{out} is from a different run ({'; '.join(changed)}); rerun with the same settings to resume, "
            "or use another --out"
        )
    return previous


def _write_run(out: Path, record: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(record, indent=2)
    _replace_atomically(out / RUN_FILE, lambda p: p.write_text(text, encoding="utf-8"))


@dataclass(frozen=True)
class _Prepared:
    job: _Job
    loaded: LoadedModel
    pixels: np.ndarray | None
    checkpoint: bytes | None
    record: dict[str, Any]
    pending: list[int]


def _prepare(config: BatchConfig) -> _Prepared:
    """Everything checked and loaded before any work: arguments, model, layers, a dry run, inputs, resume state."""
    _check_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint = Path(config.checkpoint).read_bytes() if config.checkpoint else None
    loaded = _load_model(config, checkpoint)
    pre = loaded.spec.preprocessing
    class_names = loaded.class_names
    if config.target.isdigit() and int(config.target) >= len(class_names):
        raise InputError(f"--class {config.target} is not a class of {config.model} (0..{len(class_names) - 1})")
    layers = config.layers or (
        default_layer(list_candidate_layers(loaded.model, (pre.crop, pre.crop)), loaded.spec.default_layers).name,
    )
    blank = np.zeros((1, pre.crop, pre.crop, 3), np.uint8)  # a dry run: unknown layers, methods that cannot apply
    dry = dataclasses.replace(config, target="0" if config.target == "true" else config.target, metrics=())
    _explain_chunk(loaded, _Job(dry, (), tuple(layers), class_names, pre, ""), blank, [0])
    items, pixels = _inputs(config, class_names)
    if config.target == "true":
        unlabelled = [item.image_id for item in items if item.label is None]
        if unlabelled:
            raise InputError(
                f"--class true needs a label for every image; {len(unlabelled)} have none (e.g. {unlabelled[0]}): "
                "use class folders named after the model's classes, or --class predicted"
            )
    job = _Job(config, tuple(items), tuple(layers), class_names, pre, weights_digest(loaded.model))
    out = Path(config.out)
    record = {
        "format": RUN_FORMAT,
        "settings": _settings(config, job.layers),
        "model": {
            "key": config.model,
            "label": loaded.spec.label,
            "sha256": job.model_sha256,
            "sha256_of": "camlib.prediction_cache.weights_digest: architecture and every state_dict tensor",
            "checkpoint_file_sha256": hashlib.sha256(checkpoint).hexdigest() if checkpoint else None,
            "preprocessing": dataclasses.asdict(pre),
            "classes": list(class_names),
        },
        "inputs": {"images": len(items), "shards": job.shards, "sha256": _inputs_digest(items)},
        "columns": _schema(config.metrics).names,
        "versions": _versions(config.engine),
    }
    previous = _check_resume(out, record)
    record["runs"] = previous.get("runs", []) if previous else []
    pending = [k for k in range(job.shards) if not _part_path(out, k).exists()]
    return _Prepared(job, loaded, pixels, checkpoint, record, pending)


class _Views(torch.utils.data.Dataset):
    """The DataLoader's dataset: a shard's views and read errors per item (a batch of the sampler is one shard)."""

    def __init__(self, job: _Job, pixels: np.ndarray | None) -> None:
        self.job, self.pixels = job, pixels

    def __len__(self) -> int:
        return len(self.job.items)

    def __getitem__(self, position: int) -> tuple[np.ndarray | None, str]:
        pixels = None if self.pixels is None else self.pixels[position]
        return _load_view(self.job.items[position], pixels, self.job.preprocessing)


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


def _run_local(prepared: _Prepared, bar: tqdm) -> None:
    job, out = prepared.job, Path(prepared.job.config.out)
    workers = 0 if prepared.pixels is not None else job.config.workers  # in-memory pixels need no reader processes
    loader = torch.utils.data.DataLoader(
        _Views(job, prepared.pixels),
        batch_sampler=[list(job.positions(k)) for k in prepared.pending],
        num_workers=workers,
        collate_fn=lambda views: _collate(job, views),
        multiprocessing_context="fork" if workers else None,
    )
    for shard, (views, errors) in zip(prepared.pending, loader):
        table, maps, pngs = _explain_shard(prepared.loaded, job, shard, views, errors, on_chunk=bar.update)
        bar.update(sum(1 for e in errors if e))  # unreadable images count as done
        _write_shard(out, shard, table, maps, pngs)


def run_batch(config: BatchConfig, *, progress: bool = True) -> BatchSummary:
    """Run (or resume) a batch job; returns what it did.

    Args:
        config: the job (``parse_args``).
        progress: show a tqdm bar (images, images/s) on stderr.

    Raises:
        InputError: bad or inconsistent arguments, or ``--out`` written by a run with other settings (before any
            work); ``UnknownModelError``, ``CheckpointError``, ``WeightsUnavailableError``, ``DatasetError``,
            ``LayerError``, ``MethodError`` and ``ClassIndexError`` as loading and the dry run find them.
    """
    prepared = _prepare(config)
    job, out = prepared.job, Path(config.out)
    started = time.perf_counter()
    run = {
        "engine": config.engine,
        "workers": config.workers,
        "batch_size": config.batch_size,
        "device": str(prepared.loaded.device),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "shards_pending": len(prepared.pending),
    }
    record = {**prepared.record, "status": "running", "runs": [*prepared.record["runs"], run]}
    _write_run(out, record)
    todo = sum(len(job.positions(k)) for k in prepared.pending)
    with tqdm(total=todo, unit="img", desc="camlib.batch", disable=not progress, file=sys.stderr) as bar:
        if config.engine == "ray":
            from camlib.batch.ray_engine import run_ray

            work_s = run_ray(prepared, bar)
        else:
            _run_local(prepared, bar)
    call_s = time.perf_counter() - started
    elapsed = work_s if config.engine == "ray" else call_s
    table = read_batch_table(out)
    errors = len(set(table.filter(pc.is_valid(table["error"]))["position"].to_pylist()))
    run.update(
        elapsed_s=round(elapsed, 3),
        call_s=round(call_s, 3),
        images=todo,
        images_per_s=round(todo / elapsed, 2) if elapsed else 0.0,
    )
    _write_run(out, {**record, "status": "finished", "rows": table.num_rows, "error_images": errors})
    return BatchSummary(
        out=str(out),
        images=len(job.items),
        rows=table.num_rows,
        shards=job.shards,
        skipped=job.shards - len(prepared.pending),
        errors=errors,
        elapsed_s=elapsed,
        images_per_s=todo / elapsed if elapsed else 0.0,
        call_s=call_s,
    )


def read_batch_table(out: str | os.PathLike[str]) -> pa.Table:
    """The table a batch job wrote into ``out``: every finished shard's rows, in input order (image, method, layer).

    Raises:
        InputError: ``out`` is not a path to a directory holding ``table/part-*.parquet`` files (all of one schema).
    """
    if not isinstance(out, str | os.PathLike):
        raise InputError(f"out must be a batch job's output directory (str or Path), got {type(out).__name__}")
    parts = sorted((Path(out) / TABLE_DIR).glob("part-*.parquet"))
    if not parts:
        raise InputError(f"out {out}: no batch table (table/part-*.parquet) in it")
    tables = [pq.read_table(part) for part in parts]
    if any(t.schema != tables[0].schema for t in tables):
        raise InputError(f"out {out}: its table files have different columns; not one job's output")
    return pa.concat_tables(tables)


def read_run_record(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` a batch job wrote into ``out``: ``settings``, ``model`` (key, sha256, preprocessing, classes),
    ``inputs``, ``columns``, ``versions``, ``runs`` and ``status``.

    Raises:
        InputError: ``out`` is not a path to a directory holding a batch job's ``run.json``.
    """
    if not isinstance(out, str | os.PathLike):
        raise InputError(f"out must be a batch job's output directory (str or Path), got {type(out).__name__}")
    run_file = Path(out) / RUN_FILE
    try:
        record = json.loads(run_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise InputError(
            f"out {out}: no readable {RUN_FILE} ({type(error).__name__}); not a batch job's output"
        ) from error
    if not isinstance(record, dict) or not {"settings", "model", "inputs"} <= record.keys():
        raise InputError(f"out {out}: {RUN_FILE} is not a batch job's record")
    return record


def main(argv: list[str] | None = None) -> int:
    try:
        config = parse_args(argv)
        summary = run_batch(config)
    except CamlibError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume from the finished shards", file=sys.stderr)
        return 130
    print(
        f"{summary.images} images, {summary.rows} rows ({summary.errors} images with errors), "
        f"{summary.skipped} of {summary.shards} shards were already done; wrote {Path(summary.out) / TABLE_DIR}"
    )
    return 0
