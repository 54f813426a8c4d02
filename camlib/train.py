"""Train a CIFAR-10 model with an Augmentation Lab pipeline.

    python -m camlib.train --arch resnet20 --data ../shared/data/cifar10 --augment pipeline.json \
        --epochs 30 --out runs/r20

Trains on the train split with the exported Albumentations pipeline (so the page's design is what the model learns
from), one-cycle learning rate (SGD, Nesterov momentum), evaluates on the test split after every epoch, shows a
progress bar with loss, accuracy and images/s, and resumes from the last finished epoch when run again with the same
``--out`` after an interruption. Writes ``model.safetensors`` and ``model_card.json`` into ``--out``.
Bad arguments, a missing data root or an invalid pipeline stop with one clear line before any training.

Launched by ``torchrun --nproc_per_node N -m camlib.train ...`` (its ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``), it trains with DistributedDataParallel: one process per device
(``cuda:LOCAL_RANK``, NCCL; or the CPU, gloo), ``--batch-size`` split evenly across them, each process's share of
every epoch from a ``DistributedSampler`` and its own augmentation seed, metrics summed across processes, and rank 0
alone writing the resume state, the weights and the card. Without those variables nothing changes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from torch.nn.parallel import DistributedDataParallel  # noqa: E402
from torch.utils.data.distributed import DistributedSampler  # noqa: E402
from tqdm import tqdm  # noqa: E402

from camlib.augment import (  # noqa: E402
    CIFAR10_TRAIN_PIPELINE,
    Pipeline,
    PipelineError,
    PipelineStep,
    augment_image,
    build_pipeline,
    pick_references,
    pipeline_from_json,
    pipeline_to_dict,
    reference_keys,
)
from camlib.cifar import CifarData, load_cifar10  # noqa: E402
from camlib.cifar_models import CIFAR_ARCHS, build_cifar_model, normalize_batch  # noqa: E402
from camlib.cli import run_command  # noqa: E402
from camlib.contracts import require_array, require_int, require_model, require_tensor  # noqa: E402
from camlib.device import default_device  # noqa: E402
from camlib.errors import CheckpointError, InputError, TrainingError  # noqa: E402
from camlib.models import load_state_strict, read_checkpoint  # noqa: E402

STATE_FILE = "last.pt"
# Settings a resumed run must share with the interrupted one (the schedule and the data order depend on them).
RESUME_KEYS = ("arch", "epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "seed", "limit_train", "init")
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"
DIGESTS_DIR = "digests"  # --write-digests: <out>/digests/rank<R>.jsonl
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
TORCHRUN_HINT = "launch with torchrun --nproc_per_node N -m camlib.train ..."


@dataclass(frozen=True)
class TrainConfig:
    arch: str
    data: str
    augment: str | None
    epochs: int
    out: str
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    seed: int = 0
    limit_train: int | None = None
    limit_test: int | None = None
    threads: int | None = None
    init: str | None = None
    write_digests: bool = False


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="python -m camlib.train", description=__doc__.splitlines()[0])
    parser.add_argument("--arch", required=True, choices=sorted(CIFAR_ARCHS))
    parser.add_argument(
        "--data", required=True, help="CIFAR-10 root: torchvision format or <root>/{train,test}/<class>/"
    )
    parser.add_argument(
        "--augment",
        default=None,
        help="pipeline JSON exported from the Augmentation Lab "
        "(default: pad+crop, flip, affine, colour jitter, cutout)",
    )
    parser.add_argument("--epochs", type=int, required=True)
    parser.add_argument("--out", required=True, help="output directory (also holds the resume state)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate of the one-cycle schedule")
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit-train", type=int, default=None, help="use only this many training images")
    parser.add_argument("--limit-test", type=int, default=None, help="evaluate on only this many test images")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--init",
        default=None,
        help="start from these weights (.safetensors of the same "
        "architecture), e.g. to fine-tune a trained model further",
    )
    parser.add_argument(
        "--write-digests",
        action="store_true",
        help=f"a check for distributed runs: after every optimizer step each process appends the SHA-256 of its "
        f"parameters to <out>/{DIGESTS_DIR}/rank<R>.jsonl (and of all its weights and buffers after each epoch)",
    )
    args = parser.parse_args(argv)
    config = TrainConfig(
        arch=args.arch,
        data=args.data,
        augment=args.augment,
        epochs=args.epochs,
        out=args.out,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        seed=args.seed,
        limit_train=args.limit_train,
        limit_test=args.limit_test,
        threads=args.threads,
        init=args.init,
        write_digests=args.write_digests,
    )
    _check_numbers(config)
    return config


def _check_numbers(config: TrainConfig) -> None:
    checks = [
        (config.epochs >= 1, f"--epochs must be at least 1, got {config.epochs}"),
        (config.batch_size >= 1, f"--batch-size must be at least 1, got {config.batch_size}"),
        (config.lr > 0, f"--lr must be positive, got {config.lr}"),
        (config.weight_decay >= 0, f"--weight-decay must be >= 0, got {config.weight_decay}"),
        (0 <= config.label_smoothing < 1, f"--label-smoothing must be in [0, 1), got {config.label_smoothing}"),
        (config.seed >= 0, f"--seed must be >= 0 (numpy's seed sequences), got {config.seed}"),
        (config.limit_train is None or config.limit_train >= 10, "--limit-train must be at least 10"),
        (config.limit_test is None or config.limit_test >= 10, "--limit-test must be at least 10"),
        (config.threads is None or config.threads >= 1, f"--threads must be at least 1, got {config.threads}"),
    ]
    for ok, message in checks:
        if not ok:
            raise TrainingError(message)


def load_pipeline(path: str | None) -> Pipeline:
    """The augmentation pipeline from an exported JSON file (or the default CIFAR-10 pipeline).

    Raises ``TrainingError`` when ``path`` is not a path or no file, ``PipelineError`` for an invalid export."""
    if path is None:
        return CIFAR10_TRAIN_PIPELINE
    if not isinstance(path, str | os.PathLike):
        raise TrainingError(f"the pipeline path must be a str or Path, got {type(path).__name__}")
    file = Path(path)
    if not file.is_file():
        raise TrainingError(f"pipeline file not found: {file}")
    return pipeline_from_json(file.read_text(encoding="utf-8"))


MAX_CHECKED_COMBINATIONS = 256


def _check_pipeline_output(pipeline: Pipeline, sample: np.ndarray) -> None:
    """Refuse a pipeline that can output anything but 32x32x3 uint8: try every combination of the steps that fire
    only sometimes (0 < p < 1), each forced on or off (a size change depends on which steps fire)."""
    enabled = [step for step in pipeline.steps if step.enabled and step.p > 0]
    optional = [i for i, step in enumerate(enabled) if step.p < 1]
    combinations = 1 << len(optional)
    for mask in range(min(combinations, MAX_CHECKED_COMBINATIONS)):
        off = {optional[bit] for bit in range(len(optional)) if not mask >> bit & 1}
        steps = tuple(PipelineStep(s.transform, s.params, 1.0, i not in off) for i, s in enumerate(enabled))
        out = augment_image(build_pipeline(Pipeline(steps, pipeline.seed)), sample, references=[sample])["image"]
        if out.shape != sample.shape or out.dtype != np.uint8:
            fired = ", ".join(s.transform for i, s in enumerate(enabled) if i not in off) or "no step"
            raise TrainingError(
                f"the pipeline must keep 32x32x3 uint8 images, but when {fired} fire(s) it gives "
                f"{out.dtype} {out.shape}; add a RandomCrop(32, 32) after padding, or a Resize"
            )


def augment_epoch(images: np.ndarray, order: np.ndarray, pipeline: Pipeline, seed: int) -> np.ndarray:
    """Augment ``images[order]`` with a Compose seeded for this epoch (deterministic for (pipeline, seed)).

    ``images`` is uint8 ``(N, H, W, 3)``, ``order`` 1-D integer indices into it. Steps that match an image to a
    second one (FDA, HistogramMatching, PixelDistributionAdaptation) draw it from ``images`` as the Lab's grid does
    (``camlib.augment.pick_references`` with this epoch's seed, the image itself left out). Raises ``InputError``
    for those, ``PipelineError`` for a bad ``pipeline`` or ``seed``."""
    require_array(images, "images", dtypes=(np.uint8,), ndim=4, channels=3, expected="uint8 images (N, H, W, 3)")
    require_array(order, "order", ndim=1, nonempty=False, expected="1-D integer index array")
    if order.dtype.kind not in "iu" or (order.size and (order.min() < 0 or order.max() >= len(images))):
        raise InputError(f"order must hold integer indices in 0..{len(images) - 1}, got {order.dtype} {order.shape}")
    if not isinstance(pipeline, Pipeline):
        raise PipelineError(f"the pipeline must be a camlib.augment.Pipeline, got {type(pipeline).__name__}")
    compose = build_pipeline(Pipeline(pipeline.steps, seed))
    second_image = bool(reference_keys(compose))
    out = np.empty((len(order), *images.shape[1:]), np.uint8)
    for i, index in enumerate(order):
        if second_image:
            references = pick_references(images, int(index), seed)
            out[i] = augment_image(compose, images[index], references=references)["image"]
        else:
            out[i] = compose(image=images[index])["image"]
    return out


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    label_smoothing: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a uint8 ``(N, H, W, 3)`` batch: normalise, forward, label-smoothed cross-entropy,
    backward, step. Returns the loss and the logits (detached).

    Raises ``InputError`` for a ``model`` that is not a module with weights, ``images`` or int64 ``labels`` (N,)
    that are not on the model's device or do not match, a class outside the logits, or ``label_smoothing`` outside
    [0, 1]."""
    device = require_model(model)
    require_tensor(images, "images", ndim=4, device=device, expected="uint8 tensor (N, H, W, 3)")
    require_tensor(labels, "labels", ndim=1, device=device, expected="int64 tensor (N,)")
    if labels.dtype != torch.int64 or len(labels) != len(images):
        raise InputError(f"labels must be int64 (N,) with N = {len(images)}, got {labels.dtype} {tuple(labels.shape)}")
    if (
        isinstance(label_smoothing, bool)
        or not isinstance(label_smoothing, int | float)
        or not 0.0 <= label_smoothing <= 1.0
    ):
        raise InputError(f"label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    logits = model(normalize_batch(images))
    if labels.min() < 0 or labels.max() >= logits.shape[1]:
        raise InputError(
            f"labels must be classes 0..{logits.shape[1] - 1}, got {int(labels.min())}..{int(labels.max())}"
        )
    loss = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), logits.detach()


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module, data: CifarData, device: torch.device, batch_size: int = 500
) -> tuple[float, list[float], np.ndarray]:
    """Accuracy, per-class accuracy and predictions of ``model`` on ``data``.

    Raises ``InputError`` for a ``model`` that is not a module with weights, ``data`` that is not ``CifarData``, a
    ``device`` that is not the model's or a ``batch_size`` below 1."""
    model_device = require_model(model)
    if not isinstance(data, CifarData):
        raise InputError(f"data must be the CifarData that load_cifar10 returns, got {type(data).__name__}")
    if (
        not isinstance(device, torch.device)
        or device.type != model_device.type
        or device.index not in (None, model_device.index)
    ):
        raise InputError(f"device must be the model's torch.device ({model_device}), got {device!r}")
    batch_size = require_int(batch_size, "batch_size", minimum=1)
    was_training = model.training
    model.eval()
    predictions = []
    for start in range(0, len(data.labels), batch_size):
        batch = torch.from_numpy(data.images[start : start + batch_size]).to(device)
        predictions.append(model(normalize_batch(batch)).argmax(dim=1).cpu())
    model.train(was_training)
    predicted = torch.cat(predictions).numpy()
    correct = predicted == data.labels
    per_class = [
        float(correct[data.labels == k].mean()) if (data.labels == k).any() else 0.0
        for k in range(len(data.class_names))
    ]
    return float(correct.mean()), per_class, predicted


def _versions() -> dict[str, str]:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "albumentations": A.__version__,
        "numpy": np.__version__,
    }


def _load_init(model: torch.nn.Module, path: str, arch: str) -> dict[str, Any]:
    """Load starting weights (safely: safetensors or weights-only) and describe them for the model card."""
    file = Path(path)
    if not file.is_file():
        raise TrainingError(f"--init file not found: {file}")
    data = file.read_bytes()
    try:
        load_state_strict(model, read_checkpoint(data, file.name), arch)
    except CheckpointError as error:
        raise TrainingError(f"--init {file}: {error}") from error
    card = file.with_name(CARD_FILE)
    previous = json.loads(card.read_text(encoding="utf-8")) if card.is_file() else {}
    return {
        "file": file.name,
        "sha256": hashlib.sha256(data).hexdigest(),
        "epochs": previous.get("epochs"),
        "test_accuracy": previous.get("final_test_accuracy"),
        "training": previous.get("training"),
        "history": previous.get("history"),
        "initialised_from": previous.get("initialised_from"),
    }  # the whole chain of earlier runs


@dataclass(frozen=True)
class _Distributed:
    """This process's place in a torchrun launch."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def backend(self) -> str:
        return "nccl" if self.device.type == "cuda" else "gloo"


def _distributed_from_env() -> _Distributed | None:
    """torchrun's settings for this process, or None when none of ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` is set.

    Raises ``TrainingError`` for incomplete or inconsistent settings, before any process group exists (a process
    group created from them would wait for processes that never come)."""
    present = [name for name in TORCHRUN_VARIABLES if name in os.environ]
    if not present:
        return None
    needed = (*TORCHRUN_VARIABLES, "MASTER_ADDR", "MASTER_PORT")
    missing = [name for name in needed if not os.environ.get(name, "").strip()]
    if missing:
        raise TrainingError(f"{', '.join(present)} set but not {', '.join(missing)}: {TORCHRUN_HINT}")
    values = {}
    for name in TORCHRUN_VARIABLES:
        text = os.environ[name].strip()
        if not text.isdecimal():
            raise TrainingError(f"{name}={text!r} is not a non-negative integer: {TORCHRUN_HINT}")
        values[name] = int(text)
    rank, world_size, local_rank = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world_size < 1 or rank >= world_size or local_rank > rank:
        raise TrainingError(
            f"RANK={rank}, LOCAL_RANK={local_rank} and WORLD_SIZE={world_size} do not fit together "
            f"(need LOCAL_RANK <= RANK < WORLD_SIZE): {TORCHRUN_HINT}"
        )
    return _Distributed(rank, local_rank, world_size, _process_device(local_rank))


def _process_device(local_rank: int) -> torch.device:
    """The device of one torchrun process: ``cuda:LOCAL_RANK`` when CUDA is available, else the CPU;
    ``CAMLIB_DEVICE=cpu`` keeps every process on the CPU (gloo), ``CAMLIB_DEVICE=cuda`` requires CUDA."""
    requested = os.environ.get("CAMLIB_DEVICE", "").strip()
    if requested not in ("", "cpu", "cuda"):
        raise TrainingError(
            f"CAMLIB_DEVICE={requested!r}: under torchrun each process uses cuda:LOCAL_RANK or the CPU; "
            "set CAMLIB_DEVICE to cuda or cpu, or unset it"
        )
    if requested == "cpu" or (not requested and not torch.cuda.is_available()):
        return torch.device("cpu")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if local_rank >= count:
        raise TrainingError(
            f"LOCAL_RANK={local_rank}, but this machine has {count} CUDA device(s): start at most {count} "
            "processes per machine (--nproc_per_node), or set CAMLIB_DEVICE=cpu"
        )
    return torch.device("cuda", local_rank)


@contextmanager
def _process_group(distributed: _Distributed | None) -> Iterator[None]:
    """Join torchrun's process group for the block (nothing without torchrun); leave it at the end, also on error."""
    if distributed is None:
        yield
        return
    if distributed.device.type == "cuda":
        torch.cuda.set_device(distributed.device)
    dist.init_process_group(
        distributed.backend,
        rank=distributed.rank,
        world_size=distributed.world_size,
        device_id=distributed.device if distributed.device.type == "cuda" else None,
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def _weights_digest(module: torch.nn.Module, *, buffers: bool) -> str:
    """SHA-256 over the names and bytes of ``module``'s parameters (and buffers): equal digests, equal weights."""
    digest = hashlib.sha256()
    tensors = module.state_dict() if buffers else dict(module.named_parameters())
    for name, tensor in tensors.items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _save_state(path: Path, state: dict[str, Any]) -> None:
    partial = path.with_suffix(".partial")
    torch.save(state, partial)
    partial.replace(path)  # atomic: an interruption never leaves a half-written resume state


@dataclass(frozen=True)
class _Run:
    """What every epoch of one training run uses."""

    config: TrainConfig
    model: torch.nn.Module  # what trains: the network, or its DistributedDataParallel wrapper under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    device: torch.device
    steps_per_epoch: int
    progress: bool
    distributed: _Distributed | None = None

    @property
    def network(self) -> torch.nn.Module:
        """The network itself (its state dict has no ``module.`` prefix)."""
        return self.model.module if isinstance(self.model, DistributedDataParallel) else self.model

    @property
    def world_size(self) -> int:
        return 1 if self.distributed is None else self.distributed.world_size

    @property
    def writes(self) -> bool:
        """Whether this process writes files: the only process, or rank 0."""
        return self.distributed is None or self.distributed.rank == 0


def _resume(state_path: Path, run: _Run) -> tuple[int, float, list[dict[str, Any]]]:
    """Load a resume state into the run's model, optimizer and scheduler: ``(next epoch, elapsed s, history)``.

    Raises:
        TrainingError: the file is not a resume state of this command, or it was written with other settings.
    """
    config = run.config
    try:
        state = torch.load(state_path, map_location=run.device, weights_only=True)
        saved = state["config"]
    except Exception as error:  # torch's own message suggests switching the safe loader off: never show it
        raise TrainingError(
            f"cannot resume: {state_path} is not a resume state written by this command "
            f"({type(error).__name__}); delete it or use another --out"
        ) from error
    changed = [
        f"--{key.replace('_', '-')} {saved.get(key)} -> {getattr(config, key)}"
        for key in RESUME_KEYS
        if saved.get(key) != getattr(config, key)
    ]
    if int(state.get("world_size", 1)) != run.world_size:
        changed.append(f"processes {int(state.get('world_size', 1))} -> {run.world_size}")
    if changed:
        raise TrainingError(
            f"{state_path} is from a different run ({'; '.join(changed)}); rerun with the same "
            "settings (and torchrun --nproc_per_node) to resume, or use another --out"
        )
    run.network.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    start_epoch = int(state["epoch"])
    if run.writes:
        print(f"resuming from epoch {start_epoch} of {config.epochs} ({state_path})", file=sys.stderr)
    return start_epoch, float(state["elapsed_s"]), json.loads(state["history"])


def _epoch_share(run: _Run, epoch: int, train_data: CifarData) -> tuple[np.ndarray, int]:
    """This process's training images of ``epoch``, in order, and its augmentation seed. Without torchrun: the whole
    split, shuffled with ``(seed, epoch)``. Under torchrun: the rank's share from a ``DistributedSampler`` shuffled
    with the run's seed (the same permutation on every rank, ``set_epoch`` for a new one each epoch; padded by
    repeating images so every rank takes the same number of steps), and a seed derived from (seed, epoch, rank), so
    the ranks draw different augmentations."""
    config, distributed = run.config, run.distributed
    if distributed is None:
        order = np.random.default_rng([config.seed, epoch]).permutation(len(train_data.labels))
        return order, (config.seed * 1009 + epoch) % 2**31
    sampler = DistributedSampler(
        train_data, num_replicas=distributed.world_size, rank=distributed.rank, shuffle=True, seed=config.seed
    )
    sampler.set_epoch(epoch)
    order = np.fromiter(iter(sampler), dtype=np.int64)
    seed = np.random.SeedSequence([config.seed, epoch, distributed.rank]).generate_state(1)[0]
    return order, int(seed) % 2**31


def _append_digest(run: _Run, record: dict[str, Any]) -> None:
    """``--write-digests``: one JSON line in ``<out>/digests/rank<R>.jsonl``."""
    folder = Path(run.config.out) / DIGESTS_DIR
    folder.mkdir(exist_ok=True)
    rank = 0 if run.distributed is None else run.distributed.rank
    with (folder / f"rank{rank}.jsonl").open("a", encoding="utf-8") as file:
        file.write(json.dumps(record) + "\n")


def _end_distributed_epoch(run: _Run, epoch: int, seen: int, loss_sum: float, correct: int) -> tuple[int, float, int]:
    """Under torchrun: the epoch's image count, loss sum and correct count summed over the ranks, and rank 0's
    BatchNorm running statistics given to every rank (each rank's last forward updated them from its own batch), so
    that every rank evaluates, and rank 0 saves, the same model. Without torchrun: the numbers as they are."""
    if run.distributed is None:
        return seen, loss_sum, correct
    totals = torch.tensor([seen, loss_sum, correct], dtype=torch.float64, device=run.device)
    dist.all_reduce(totals)
    for buffer in run.network.buffers():
        dist.broadcast(buffer, src=0)
    if run.config.write_digests:
        _append_digest(run, {"epoch": epoch + 1, "state": _weights_digest(run.network, buffers=True)})
    return int(totals[0]), float(totals[1]), int(totals[2])


def _evaluate_run(run: _Run, data: CifarData) -> tuple[float, list[float]]:
    """Test accuracy and per-class accuracy of the run's network. Under torchrun each rank evaluates every
    WORLD_SIZE-th image and the per-class counts are summed over the ranks (every rank gets the totals)."""
    if run.distributed is None:
        accuracy, per_class, _ = evaluate(run.network, data, run.device)
        return accuracy, per_class
    rank, world_size, classes = run.distributed.rank, run.distributed.world_size, len(data.class_names)
    share = replace(data, images=data.images[rank::world_size], labels=data.labels[rank::world_size])
    counts = np.zeros((2, classes), np.int64)  # correct, images per class
    if len(share):
        _, _, predicted = evaluate(run.network, share, run.device)
        counts[0] = np.bincount(share.labels[predicted == share.labels], minlength=classes)
        counts[1] = np.bincount(share.labels, minlength=classes)
    totals = torch.from_numpy(counts).to(run.device)
    dist.all_reduce(totals)
    correct, total = totals.cpu().tolist()
    return sum(correct) / sum(total), [c / n if n else 0.0 for c, n in zip(correct, total)]


def _train_epoch(
    run: _Run, epoch: int, pipeline: Pipeline, train_data: CifarData, test_data: CifarData
) -> dict[str, Any]:
    """One epoch (seeded order and augmentation, progress bar) and its test evaluation: the history record."""
    config, model, device = run.config, run.model, run.device
    started = time.perf_counter()
    order, augment_seed = _epoch_share(run, epoch, train_data)
    images = augment_epoch(train_data.images, order, pipeline, seed=augment_seed)
    labels = torch.from_numpy(train_data.labels[order])
    batch_size = config.batch_size // run.world_size
    model.train()
    seen, loss_sum, correct = 0, 0.0, 0
    bar = tqdm(
        range(run.steps_per_epoch),
        desc=f"epoch {epoch + 1}/{config.epochs}",
        disable=not (run.progress and run.writes),
        file=sys.stderr,
        dynamic_ncols=True,
    )
    for step in bar:
        batch = slice(step * batch_size, (step + 1) * batch_size)
        y = labels[batch].to(device)
        loss, logits = train_step(
            model, run.optimizer, torch.from_numpy(images[batch]).to(device), y, config.label_smoothing
        )
        run.scheduler.step()
        seen += len(y)
        loss_sum += float(loss) * len(y)
        correct += int((logits.argmax(dim=1) == y).sum())
        rate = seen / (time.perf_counter() - started)
        bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}", img_s=f"{rate:.0f}")
        if config.write_digests:
            _append_digest(
                run, {"epoch": epoch + 1, "step": step + 1, "parameters": _weights_digest(run.network, buffers=False)}
            )
    seen, loss_sum, correct = _end_distributed_epoch(run, epoch, seen, loss_sum, correct)
    train_time = time.perf_counter() - started
    eval_started = time.perf_counter()
    accuracy, _ = _evaluate_run(run, test_data)
    eval_time = time.perf_counter() - eval_started
    if run.writes:
        print(
            f"epoch {epoch + 1}/{config.epochs}: loss {loss_sum / seen:.4f}, train acc {correct / seen:.4f}, "
            f"test acc {accuracy:.4f}, {seen / train_time:.0f} img/s",
            file=sys.stderr,
        )
    return {
        "epoch": epoch + 1,
        "train_loss": loss_sum / seen,
        "train_accuracy": correct / seen,
        "test_accuracy": accuracy,
        "train_images_per_s": seen / train_time,
        "test_images_per_s": len(test_data.labels) / eval_time,
        "lr": run.scheduler.get_last_lr()[0],
    }


def train(config: TrainConfig, *, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a training; returns the model card. Raises ``TrainingError`` unless ``config`` is a
    ``TrainConfig`` (build one with ``parse_args``)."""
    if not isinstance(config, TrainConfig):
        raise TrainingError(f"config must be a TrainConfig (see parse_args), got {type(config).__name__}")
    distributed = _distributed_from_env()
    world_size = 1 if distributed is None else distributed.world_size
    if config.batch_size % world_size:
        raise TrainingError(
            f"--batch-size {config.batch_size} must be a multiple of the number of processes ({world_size}): "
            "each process takes an equal share of every batch"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    pipeline = load_pipeline(config.augment)
    train_data = load_cifar10(config.data, "train", limit=config.limit_train)
    test_data = load_cifar10(config.data, "test", limit=config.limit_test)
    _check_pipeline_output(pipeline, train_data.images[0])
    out = Path(config.out)
    if out.exists() and not out.is_dir():
        raise TrainingError(f"--out {out} is a file; give a directory")
    images_per_process = -(-len(train_data.labels) // world_size)  # DistributedSampler pads the last share
    steps_per_epoch = -(-images_per_process // (config.batch_size // world_size))
    if steps_per_epoch * config.epochs < 4:
        raise TrainingError("fewer than 4 optimizer steps in all: use more images, more epochs or a smaller batch")
    out.mkdir(parents=True, exist_ok=True)
    with _process_group(distributed):
        return _run_training(
            config, distributed, pipeline, train_data, test_data, steps_per_epoch=steps_per_epoch, progress=progress
        )


def _run_training(
    config: TrainConfig,
    distributed: _Distributed | None,
    pipeline: Pipeline,
    train_data: CifarData,
    test_data: CifarData,
    *,
    steps_per_epoch: int,
    progress: bool,
) -> dict[str, Any]:
    """Build, train (or resume) and save the model (the files on rank 0 alone); returns the model card."""
    device = default_device() if distributed is None else distributed.device
    torch.manual_seed(config.seed)
    model = build_cifar_model(config.arch, len(train_data.class_names))
    init = _load_init(model, config.init, config.arch) if config.init else None
    model = model.to(device)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )
    # Warm-up on the first quarter, at least 2 steps (OneCycleLR divides by the warm-up length minus one).
    pct_start = max(0.25, 2.0 / (steps_per_epoch * config.epochs))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch, pct_start=pct_start
    )
    if distributed is not None:  # the wrapper broadcasts rank 0's weights, then averages gradients every step
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run = _Run(config, model, optimizer, scheduler, device, steps_per_epoch, progress, distributed)
    out = Path(config.out)
    state_path = out / STATE_FILE
    start_epoch, elapsed, history = _resume(state_path, run) if state_path.exists() else (0, 0.0, [])

    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        record = _train_epoch(run, epoch, pipeline, train_data, test_data)
        elapsed += time.perf_counter() - started
        history.append(record)
        if not run.writes:
            continue
        _save_state(
            state_path,
            {
                "model": run.network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch + 1,
                "elapsed_s": elapsed,
                "history": json.dumps(history),
                "config": vars(config),
                "world_size": run.world_size,
            },
        )

    accuracy, per_class = _evaluate_run(run, test_data)
    card = {
        "architecture": config.arch,
        "description": CIFAR_ARCHS[config.arch].description,
        "parameters": sum(p.numel() for p in run.network.parameters()),
        "classes": list(train_data.class_names),
        "epochs": config.epochs,
        "final_test_accuracy": accuracy,
        "best_test_accuracy": max(h["test_accuracy"] for h in history),
        "per_class_test_accuracy": dict(zip(train_data.class_names, per_class)),
        "augmentation": pipeline_to_dict(pipeline),
        "initialised_from": init,
        "data": {
            "source": train_data.source,
            "root": train_data.root,
            "train_images": len(train_data.labels),
            "test_images": len(test_data.labels),
            "note": "the image-folder copy is JPEG-decoded: accuracy is measured on that copy"
            if train_data.source == "folder"
            else "official CIFAR-10 release",
        },
        "training": {
            "optimizer": "SGD nesterov momentum 0.9",
            "lr_schedule": "one-cycle",
            "peak_lr": config.lr,
            "batch_size": config.batch_size,
            "weight_decay": config.weight_decay,
            "label_smoothing": config.label_smoothing,
            "seed": config.seed,
            "device": str(device),
            "world_size": run.world_size,
            "distributed": None
            if distributed is None
            else {
                "launcher": "torchrun",
                "backend": distributed.backend,
                "batch_size_per_process": config.batch_size // distributed.world_size,
                "sampler": "DistributedSampler shuffled with the seed, set_epoch every epoch",
                "augmentation_seed": "per process, from (seed, epoch, rank)",
                "batchnorm_statistics": "rank 0's",
            },
            "threads": torch.get_num_threads(),
            "time_s": round(elapsed, 1),
            "train_images_per_s": round(float(np.median([h["train_images_per_s"] for h in history])), 1),
            "test_images_per_s": round(float(np.median([h["test_images_per_s"] for h in history])), 1),
        },
        "history": history,
        "versions": _versions(),
    }
    if run.writes:
        state = run.network.state_dict()
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(out / WEIGHTS_FILE))
        (out / CARD_FILE).write_text(json.dumps(card, indent=2), encoding="utf-8")
    if distributed is not None:
        dist.barrier()  # the other ranks leave once rank 0 has written its files
    return card


def main(argv: list[str] | None = None) -> int:
    status, done = run_command(
        lambda: (config := parse_args(argv), train(config)),
        resume="run the same command again to resume from the last finished epoch",
    )
    if done is None:
        return status
    config, card = done
    if card["training"]["distributed"] is not None and os.environ["RANK"].strip() != "0":
        return 0
    print(
        f"final test accuracy {card['final_test_accuracy']:.4f} (best {card['best_test_accuracy']:.4f}); "
        f"wrote {Path(config.out) / WEIGHTS_FILE} and {Path(config.out) / CARD_FILE}"
    )
    return 0
    print(
        f"final test accuracy {card['final_test_accuracy']:.4f} (best {card['best_test_accuracy']:.4f}); "
        f"wrote {Path(config.out) / WEIGHTS_FILE} and {Path(config.out) / CARD_FILE}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
