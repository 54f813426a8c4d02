"""The batch job: arguments, checks before any work, run.json and resuming, the local engine, reading the output.

The shards themselves (inputs, CAMs, metrics, rows, files) are ``camlib.batch.shard``'s: the local engine here and the
Ray engine (``camlib.batch.ray_engine``) run the same functions.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
import torchvision
from tqdm import tqdm

from camlib.batch.files import (
    MAX_PART_BYTES,
    MAX_RUN_BYTES,
    MAX_TABLE_BYTES,
    MAX_TABLE_ROWS,
    READ_ERRORS,
    confined,
    part_problem,
    read_capped,
    within,
)
from camlib.batch.shard import (
    BATCH_METRICS,
    TABLE_DIR,
    TABLE_SCHEMA,
    _collate,
    _explain_chunk,
    _explain_shard,
    _inputs,
    _Item,
    _Job,
    _load_model,
    _load_view,
    _part_path,
    _schema,
    _write_shard,
)
from camlib.cam import METHODS
from camlib.cli import run_command
from camlib.errors import CheckpointError, InputError
from camlib.layers import default_layer, list_candidate_layers
from camlib.models import (
    DEFAULT_CIFAR_MODEL,
    MAX_CHECKPOINT_BYTES,
    MODELS,
    LoadedModel,
)
from camlib.parsing import int_or_none
from camlib.prediction_cache import weights_digest
from camlib.storage import write_durably

RUN_FILE = "run.json"
RUN_FORMAT = 1
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
        shards: shards in the job; ``skipped``: those already finished by an earlier run; ``redone``: those whose
            table file an earlier run left that could not be trusted (0 bytes, cut short, other columns...), done
            again.
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
    redone: int = 0


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
            config.target in CLASS_CHOICES or int_or_none(config.target, minimum=0) is not None,
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
    if config.engine == "ray" and importlib.util.find_spec("ray") is None:
        raise InputError("--engine ray needs Ray: pip install -r requirements-ray.txt")


# --- the job -------------------------------------------------------------------------------------------------------


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
        previous = json.loads(read_capped(run_file, MAX_RUN_BYTES, RUN_FILE))
        saved = previous["settings"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as error:
        reason = str(error) if isinstance(error, InputError) else type(error).__name__
        raise InputError(f"{run_file} is not a batch job's {RUN_FILE} ({reason}); use another --out") from error
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
    text = json.dumps(record, indent=2).encode("utf-8")
    write_durably(out / RUN_FILE, lambda file: file.write(text))


@dataclass(frozen=True)
class _Prepared:
    job: _Job
    loaded: LoadedModel
    pixels: np.ndarray | None
    checkpoint: bytes | None
    record: dict[str, Any]
    pending: list[int]
    redone: tuple[tuple[int, str], ...] = ()


def _prepare(config: BatchConfig) -> _Prepared:
    """Everything checked and loaded before any work: arguments, model, layers, a dry run, inputs, resume state."""
    _check_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    checkpoint = (
        read_capped(config.checkpoint, MAX_CHECKPOINT_BYTES, f"--checkpoint {config.checkpoint}", CheckpointError)
        if config.checkpoint
        else None
    )
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
    pending, redone = _pending_shards(out, job)
    return _Prepared(job, loaded, pixels, checkpoint, record, pending, redone)


def _pending_shards(out: Path, job: _Job) -> tuple[list[int], tuple[tuple[int, str], ...]]:
    """The shards to compute: those without a table file, and those whose table file cannot be trusted
    (``part_problem``: a crash can leave one 0 bytes or cut short), which are removed so that no reader sees them.
    Returns the pending shards and, for the removed files, the shard and why."""
    pending, redone = [], []
    schema = _schema(job.config.metrics)
    cells = len(job.config.methods) * len(job.layers)
    for shard in range(job.shards):
        part = _part_path(out, shard)
        if not part.exists():
            pending.append(shard)
            continue
        problem = part_problem(out, part, schema, job.positions(shard), cells)
        if problem is not None:
            part.unlink()
            pending.append(shard)
            redone.append((shard, problem))
    return pending, tuple(redone)


class _Views(torch.utils.data.Dataset):
    """The DataLoader's dataset: a shard's views and read errors per item (a batch of the sampler is one shard)."""

    def __init__(self, job: _Job, pixels: np.ndarray | None) -> None:
        self.job, self.pixels = job, pixels

    def __len__(self) -> int:
        return len(self.job.items)

    def __getitem__(self, position: int) -> tuple[np.ndarray | None, str]:
        pixels = None if self.pixels is None else self.pixels[position]
        return _load_view(self.job.items[position], pixels, self.job.preprocessing)


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
        "shards_redone": [{"shard": shard, "why": why} for shard, why in prepared.redone],
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
        redone=len(prepared.redone),
    )


def read_batch_table(out: str | os.PathLike[str]) -> pa.Table:
    """The table a batch job wrote into ``out``: every finished shard's rows, in input order (image, method, layer).

    Every file is checked before its rows are read: that it lies inside ``out`` (symlinks followed), its size
    (``MAX_PART_BYTES``), its footer, the rows and the uncompressed bytes it declares (at most ``MAX_TABLE_ROWS``
    and ``MAX_TABLE_BYTES`` for the whole table) and its columns (``TABLE_SCHEMA``'s, plus metric columns).

    Raises:
        InputError: ``out`` is not a path to a directory holding ``table/part-*.parquet`` files of one schema, or a
            file is torn (0 bytes, cut short, a footer that does not parse), too large, or of other columns: the
            message names the file and says to rerun the job, which redoes that shard. Never a pyarrow error. A
            file that leads outside ``out`` (a symlink) is refused.
    """
    if not isinstance(out, str | os.PathLike):
        raise InputError(f"out must be a batch job's output directory (str or Path), got {type(out).__name__}")
    parts = sorted((Path(out) / TABLE_DIR).glob("part-*.parquet"))
    if not parts:
        raise InputError(f"out {out}: no batch table (table/part-*.parquet) in it")
    rows = declared = 0
    for part in parts:
        rerun, size = f"out {out}: its table file {part.name}", -1
        if within(out, Path(TABLE_DIR, part.name)) is None:
            raise InputError(f"{rerun} leads outside its folder (a symlink); refused")
        try:
            size = part.stat().st_size
            if size > MAX_PART_BYTES:
                raise InputError(f"{rerun} is too large ({size / 1e6:.0f} MB > {MAX_PART_BYTES / 1e6:.0f} MB)")
            metadata = pq.read_metadata(part)
            schema = metadata.schema.to_arrow_schema()
        except READ_ERRORS as error:
            if isinstance(error, InputError):
                raise
            raise InputError(
                f"{rerun} is torn or not Parquet ({'0 bytes' if size == 0 else type(error).__name__}); rerun the "
                "job with the same settings to redo its shard"
            ) from error
        rows += metadata.num_rows
        declared += sum(metadata.row_group(k).total_byte_size for k in range(metadata.num_row_groups))
        if (problem := _columns_problem(schema)) is not None:
            raise InputError(f"{rerun} {problem}")
        if rows > MAX_TABLE_ROWS or declared > MAX_TABLE_BYTES:
            raise InputError(
                f"out {out}: its table declares more than {MAX_TABLE_ROWS:,} rows or "
                f"{MAX_TABLE_BYTES / 1e9:.0f} GB; not read"
            )
    _check_decoded_size(out, parts)
    try:
        tables = [pq.read_table(part) for part in parts]
    except READ_ERRORS as error:
        raise InputError(
            f"out {out}: a table file cannot be read ({type(error).__name__}); rerun the job to redo its shard"
        ) from error
    if any(t.schema != tables[0].schema for t in tables):
        raise InputError(f"out {out}: its table files have different columns; not one job's output")
    return pa.concat_tables(tables)


def _columns_problem(schema: pa.Schema) -> str | None:
    """Why a table file's columns are not a batch table's, or None: each of ``TABLE_SCHEMA``'s, of its type, and
    only float64 metric columns besides (what ``--metrics`` adds)."""
    wrong = [f.name for f in TABLE_SCHEMA if f.name not in schema.names or schema.field(f.name).type != f.type]
    if wrong:
        return f"lacks the batch table's columns {', '.join(wrong[:5])}"
    extra = [f.name for f in schema if f.name not in TABLE_SCHEMA.names and f.type != pa.float64()]
    return f"has columns no batch table holds: {', '.join(extra[:5])}" if extra else None


def _check_decoded_size(out: str | os.PathLike[str], parts: list[Path]) -> None:
    """Refuse table files whose rows take more than ``MAX_TABLE_BYTES`` once read: fixed-width columns at their width,
    and each string column's value lengths summed over its rows.

    A footer's sizes are those of the encoded pages: a dictionary page of one long string that every row references
    holds little and reads as rows x its length (a 2.3 MB file of 1,000,000 rows of nine such 1,000-character strings
    reads as 9 GB). So each string column is first read dictionary-encoded, which takes its indices and distinct
    values only (5 MB and 0.1 s for that file).

    Raises:
        InputError: more than ``MAX_TABLE_BYTES`` once read, or a file cannot be read (pyarrow's errors), naming
            ``out``.
    """
    size = 0
    try:
        for part in parts:
            schema = pq.read_schema(part)
            widths = sum(
                f.type.bit_width // 8 for f in schema if pa.types.is_primitive(f.type) and f.type.bit_width > 1
            )
            size += pq.read_metadata(part).num_rows * widths
            for name in (f.name for f in schema if pa.types.is_string(f.type)):
                column = pq.read_table(part, columns=[name], read_dictionary=[name]).column(name)
                for chunk in column.chunks:
                    size += pc.sum(pc.take(pc.binary_length(chunk.dictionary), chunk.indices)).as_py() or 0
    except READ_ERRORS as error:
        raise InputError(
            f"out {out}: a table file cannot be read ({type(error).__name__}); rerun the job to redo its shard"
        ) from error
    if size > MAX_TABLE_BYTES:
        raise InputError(
            f"out {out}: its table holds {size / 1e6:,.1f} MB once read, more than {MAX_TABLE_BYTES / 1e6:,.1f} MB; "
            "not read"
        )


def read_batch_map(out: str | os.PathLike[str], map_path: object, map_index: object) -> np.ndarray:
    """One stored map: row ``map_index`` of the maps file ``map_path`` (a table row's columns) of ``out``, float32
    ``(H, W)`` in [0, 1]. Only that row is read (a memory map).

    Raises:
        InputError: ``out`` is not a path, ``map_path`` is not confined to ``out`` (absolute, ``..``, a symlink
            leading out: ``camlib.batch.files.confined``), the file is not a float16 ``(rows, H, W)`` ``.npy``
            (torn, pickled, other), ``map_index`` is not one of its rows, or the map holds values outside [0, 1] (NaN
            included).
    """
    if not isinstance(out, str | os.PathLike):
        raise InputError(f"out must be a batch job's output directory (str or Path), got {type(out).__name__}")
    try:
        path = confined(out, map_path)
    except InputError as error:
        raise InputError(f"map_path: {error}") from error
    if isinstance(map_index, bool) or not isinstance(map_index, int | np.integer):
        raise InputError(f"map_index must be an integer, got {type(map_index).__name__}")
    try:
        maps = np.load(path, mmap_mode="r", allow_pickle=False)
    except READ_ERRORS as error:
        raise InputError(f"the maps file {map_path} cannot be read ({type(error).__name__})") from error
    if maps.dtype != np.float16 or maps.ndim != 3:
        raise InputError(f"the maps file {map_path} holds {maps.dtype} {maps.shape}, not float16 (rows, H, W)")
    if not 0 <= map_index < maps.shape[0]:
        raise InputError(f"the maps file {map_path} has no row {map_index} (it has {maps.shape[0]})")
    cam = np.asarray(maps[map_index], dtype=np.float32)
    if not (cam.min() >= 0 and cam.max() <= 1):  # False for NaN as well
        raise InputError(f"the map at row {map_index} of {map_path} holds values outside [0, 1]")
    return cam


def read_run_record(out: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``run.json`` a batch job wrote into ``out``: ``settings``, ``model`` (key, sha256, preprocessing, classes),
    ``inputs``, ``columns``, ``versions``, ``runs`` and ``status``.

    Raises:
        InputError: ``out`` is not a path to a directory holding a batch job's ``run.json``, or its ``run.json``
            leads outside it (a symlink).
    """
    if not isinstance(out, str | os.PathLike):
        raise InputError(f"out must be a batch job's output directory (str or Path), got {type(out).__name__}")
    run_file = Path(out) / RUN_FILE
    if within(out, RUN_FILE) is None:
        raise InputError(f"out {out}: its {RUN_FILE} leads outside its folder (a symlink); refused")
    try:
        record = json.loads(read_capped(run_file, MAX_RUN_BYTES, RUN_FILE))
    except (OSError, ValueError, RecursionError) as error:
        reason = str(error) if isinstance(error, InputError) else type(error).__name__
        raise InputError(f"out {out}: no readable {RUN_FILE} ({reason}); not a batch job's output") from error
    model = record.get("model") if isinstance(record, dict) else None
    if (
        not isinstance(record, dict)
        or not {"settings", "model", "inputs"} <= record.keys()
        or not isinstance(record["settings"], dict)
        or not isinstance(model, dict)
        or not isinstance(model.get("label"), str)
        or not isinstance(model.get("preprocessing"), dict)
        or not isinstance(model.get("classes"), list)
        or not all(isinstance(name, str) for name in model["classes"])
    ):
        raise InputError(f"out {out}: {RUN_FILE} is not a batch job's record")
    return record


def main(argv: list[str] | None = None) -> int:
    status, summary = run_command(
        lambda: run_batch(parse_args(argv)), resume="run the same command again to resume from the finished shards"
    )
    if summary is None:
        return status
    print(
        f"{summary.images} images, {summary.rows} rows ({summary.errors} images with errors), "
        f"{summary.skipped} of {summary.shards} shards were already done"
        + (f" ({summary.redone} more had a torn table file and were redone)" if summary.redone else "")
        + f"; wrote {Path(summary.out) / TABLE_DIR}"
    )
    return 0
