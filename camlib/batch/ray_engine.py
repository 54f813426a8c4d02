"""The Ray engine of ``python -m camlib.batch --engine ray`` (Ray is optional: ``pip install -r requirements-ray.txt``).

The pending shards are a Ray Dataset: a ``map`` stage reads each shard's images (decoding files in Ray tasks, or the
CIFAR-10 pixels the driver put in the dataset), then ``map_batches`` runs an actor pool, one model per actor
(``num_gpus`` per actor when the cluster has GPUs), where each actor explains a shard with the same
``_explain_shard`` as the local engine and writes its table file and maps itself: the table is written in parallel,
one file per shard, and a shard whose file exists is finished (resuming works as for the local engine). On a cluster,
``--out`` must be storage every node can write (NFS, a mounted bucket). ``ray`` is imported only when this engine
runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from camlib.errors import InputError

if TYPE_CHECKING:
    from tqdm import tqdm

    from camlib.batch.job import _Prepared
    from camlib.batch.shard import _Job


def _read_shard_row(row: dict[str, Any], job: _Job) -> dict[str, Any]:
    """The read stage: ``{"shard"[, "pixels"]}`` -> the shard's views (uint8 ``(n, crop, crop, 3)``) and errors."""
    from camlib.batch.shard import _read_shard

    shard = int(row["shard"])
    views, errors = _read_shard(job, shard, row.get("pixels"))
    return {"shard": shard, "views": views, "errors": json.dumps(errors)}


class _ShardWorker:
    """One actor of the pool: loads the model once, then explains and writes one shard per call."""

    def __init__(self, job: _Job, checkpoint: bytes | None) -> None:
        from camlib.batch.shard import _load_model
        from camlib.prediction_cache import weights_digest

        self.job = job
        self.loaded = _load_model(job.config, checkpoint)
        if weights_digest(self.loaded.model) != job.model_sha256:  # another node's copy of the weights differs
            raise InputError(f"the model {job.config.model} on this Ray worker has other weights than the driver's")

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from camlib.batch.shard import _explain_shard, _write_shard

        started = time.time()  # wall clock: comparable between the actors' processes on one machine
        shard = int(batch["shard"][0])
        views = np.asarray(batch["views"][0], dtype=np.uint8)
        errors = json.loads(str(batch["errors"][0]))
        table, maps, pngs = _explain_shard(self.loaded, self.job, shard, views, errors)
        _write_shard(Path(self.job.config.out), shard, table, maps, pngs)
        return {
            "shard": np.array([shard]),
            "images": np.array([len(errors)]),
            "started": np.array([started]),
            "finished": np.array([time.time()]),
        }


def _gpus_per_actor(workers: int) -> float:
    import ray

    gpus = float(ray.cluster_resources().get("GPU", 0))
    return 0.0 if gpus == 0 else min(1.0, gpus / workers)


def run_ray(prepared: _Prepared, bar: tqdm) -> float:
    """Explain ``prepared.pending`` shards on Ray: ``--address``, else ``$RAY_ADDRESS``, else a local cluster started
    (and shut down) here; an already initialised Ray (e.g. a test's ``ray.init``) is used as it is.

    Returns the seconds of shard work: from the first shard's start in an actor to the last shard's end (0 when no
    shard was pending).

    Raises:
        InputError: ``prepared`` is not what ``run_batch`` prepares, or Ray is not installed. An actor's exception
            propagates (wrapped by Ray).
    """
    from camlib.batch.job import _Prepared

    if not isinstance(prepared, _Prepared):
        raise InputError(f"prepared must be the job run_batch prepares, got {type(prepared).__name__}")
    try:
        import ray
    except ImportError as error:
        raise InputError("--engine ray needs Ray: pip install -r requirements-ray.txt") from error
    job = prepared.job
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=job.config.address, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    try:
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False  # the job's own tqdm bar counts images
        rows = []
        for shard in prepared.pending:
            row: dict[str, Any] = {"shard": shard}
            if prepared.pixels is not None:
                positions = job.positions(shard)
                row["pixels"] = prepared.pixels[positions.start : positions.stop]
            rows.append(row)
        dataset = ray.data.from_items(rows, override_num_blocks=max(1, len(rows)))
        dataset = dataset.map(_read_shard_row, fn_kwargs={"job": job})
        dataset = dataset.map_batches(
            _ShardWorker,
            fn_constructor_kwargs={"job": job, "checkpoint": prepared.checkpoint},
            batch_size=1,
            batch_format="numpy",
            # One shard in flight per actor: the pool starts work as soon as its first actor is ready, and no shard
            # waits queued behind an actor that is still starting (importing torch) while another one is idle.
            compute=ray.data.ActorPoolStrategy(size=job.config.workers, max_tasks_in_flight_per_actor=1),
            num_cpus=1,
            num_gpus=_gpus_per_actor(job.config.workers),
        )
        window = [float("inf"), float("-inf")]
        for done in dataset.iter_rows():
            bar.update(int(done["images"]))
            window = [min(window[0], float(done["started"])), max(window[1], float(done["finished"]))]
        return max(0.0, window[1] - window[0]) if prepared.pending else 0.0
    finally:
        if started_here:
            ray.shutdown()
