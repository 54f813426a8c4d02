"""Dataset-wide CAM and faithfulness jobs: ``python -m camlib.batch``.

    python -m camlib.batch --cifar10 test --model cifar10_resnet20 --methods gradcam,gradcam++ \
        --layers layer2,layer3 --metrics deletion_auc,insertion_auc --out runs/cams

Explains every image of an image folder (``class/xxx.jpg`` or flat), a CIFAR-10 split or a list file with one or
several CAM methods at one or several layers, and writes into ``--out``:

- ``table/part-NNNNN.parquet``: one Parquet table (a dataset directory, one file per shard; ``read_batch_table``
  reads it back) with a row per image x method x layer (``TABLE_SCHEMA``);
- ``maps/shard-NNNNN.npy``: the maps, ``float16 (rows, H, W)`` in [0, 1] at the model's input size, row ``map_index``
  of ``map_path`` for each table row;
- ``png/shard-NNNNN/*.png``: overlays, only with ``--png``;
- ``run.json``: the settings, the versions, the model's sha256 and the progress.

A shard is done when its table file exists (written last, durably: fsynced before its rename, the directory after)
and passes the checks of ``camlib.batch.files.part_problem``: a rerun skips finished shards, redoes a shard whose table
file is torn (0 bytes, cut short, other columns, a footer that does not parse, maps missing), and refuses changed
settings, as ``camlib.train`` does. Input files are checked by size before they are read, and every path stored in the
output is confined to ``--out`` when it is read back. Two engines compute the same shards with the same function:
``local`` (in-process, batched, DataLoader workers decoding, the GPU when there is one) and ``ray`` (Ray Data, an actor
pool with one model per actor; ``camlib.batch.ray_engine``, Ray is optional).
"""

from camlib.batch.job import (
    RUN_FILE,
    BatchConfig,
    BatchSummary,
    main,
    parse_args,
    read_batch_map,
    read_batch_table,
    read_run_record,
    run_batch,
)
from camlib.batch.shard import BATCH_METRICS, TABLE_DIR, TABLE_SCHEMA

__all__ = [
    "BATCH_METRICS",
    "RUN_FILE",
    "TABLE_DIR",
    "TABLE_SCHEMA",
    "BatchConfig",
    "BatchSummary",
    "main",
    "parse_args",
    "read_batch_map",
    "read_batch_table",
    "read_run_record",
    "run_batch",
]
