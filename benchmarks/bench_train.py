"""Training and inference throughput of the CIFAR-10 ResNets on this machine (what ``camlib.train`` can expect).

Run from the repository root:  python benchmarks/bench_train.py [--threads N] [--steps S] [--r18-steps S]

For each architecture (ResNet-20, and CIFAR ResNet-18 with fewer steps) at batch 128 on 32x32 real CIFAR-10 training
images, after a few warm-up steps, it times:

- train: one ``camlib.train.train_step`` = normalise + forward + label-smoothed cross-entropy + backward + SGD
  step (Nesterov momentum, weight decay), as ``camlib.train`` runs it; the images are the raw training images;
- train + augmentation: the same step preceded by augmenting the batch with the training pipeline
  (``--augment`` JSON, default ``models/cifar10_resnet20/pipeline.json``) through ``camlib.train.augment_epoch``,
  on the same thread (``camlib.train`` augments each epoch up front on the main thread, so the costs add up);
- augmentation alone, for reference;
- inference: batch 500 under ``torch.inference_mode()`` in eval mode (``camlib.train.evaluate``'s setting).

Images/s are 128 (or 500) divided by the median step time; "best" uses the fastest step. Other processes only ever
slow a step down, so on a shared machine the best is the closer estimate of the machine, the median of what a run
sees now. The header says whether a ``camlib.train`` job is running beside it, and the load average.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from camlib.augment import Pipeline  # noqa: E402
from camlib.cifar import load_cifar10  # noqa: E402
from camlib.cifar_models import build_cifar_model, normalize_batch  # noqa: E402
from camlib.train import augment_epoch, load_pipeline, train_step  # noqa: E402

TRAIN_BATCH = 128
INFER_BATCH = 500
DEFAULT_PIPELINE = REPO / "models/cifar10_resnet20/pipeline.json"


def background_training_jobs() -> list[str]:
    """``pid: command`` of other processes running ``camlib.train`` (read from /proc; Linux only)."""
    jobs = []
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        if "camlib.train" in command and int(entry.name) != os.getpid():
            jobs.append(f"{entry.name}: {command}")
    return jobs


def timed(step: Callable[[int], object], warmup: int, steps: int) -> list[float]:
    """Seconds of each of ``steps`` calls ``step(i)``, after ``warmup`` untimed calls."""
    for i in range(warmup):
        step(i)
    times = []
    for i in range(warmup, warmup + steps):
        start = time.perf_counter()
        step(i)
        times.append(time.perf_counter() - start)
    return times


def rates(times: list[float], batch: int) -> tuple[float, float]:
    """(images/s from the median step, images/s from the fastest step)."""
    return batch / statistics.median(times), batch / min(times)


def bench_arch(
    arch: str, images: np.ndarray, labels: np.ndarray, pipeline: Pipeline, *, warmup: int, steps: int, infer_steps: int
) -> list[tuple[str, str, int, float, float]]:
    """Rows ``(arch, mode, timed steps, median images/s, best images/s)`` for one architecture."""
    torch.manual_seed(0)
    model = build_cifar_model(arch)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    n_batches = len(images) // TRAIN_BATCH
    all_labels = torch.from_numpy(labels)

    def batch_of(i: int) -> slice:
        k = i % n_batches
        return slice(k * TRAIN_BATCH, (k + 1) * TRAIN_BATCH)

    def sgd_step(batch: np.ndarray, y: torch.Tensor) -> None:
        model.train()
        train_step(model, optimizer, torch.from_numpy(batch), y, label_smoothing=0.1)

    def plain(i: int) -> None:
        sgd_step(images[batch_of(i)], all_labels[batch_of(i)])

    def augment(i: int) -> np.ndarray:
        part = batch_of(i)
        return augment_epoch(images, np.arange(part.start, part.stop), pipeline, seed=i)

    def augmented(i: int) -> None:
        sgd_step(augment(i), all_labels[batch_of(i)])

    @torch.inference_mode()
    def infer(i: int) -> None:
        model.eval()
        start = (i * INFER_BATCH) % max(1, len(images) - INFER_BATCH + 1)
        model(normalize_batch(torch.from_numpy(images[start : start + INFER_BATCH]))).argmax(dim=1)

    rows = []
    for mode, step, count, batch in (
        ("train", plain, steps, TRAIN_BATCH),
        ("train + augmentation", augmented, steps, TRAIN_BATCH),
        ("inference (eval, inference_mode)", infer, infer_steps, INFER_BATCH),
    ):
        times = timed(step, warmup if mode != "inference (eval, inference_mode)" else 1, count)
        rows.append((arch, f"{mode}, batch {batch}", count, *rates(times, batch)))
        print(f"  {arch:<15} {mode:<34} done", file=sys.stderr, flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's default)")
    parser.add_argument("--augment", default=str(DEFAULT_PIPELINE), help="pipeline JSON (Augmentation Lab export)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed training steps first (ResNet-20)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps for ResNet-20")
    parser.add_argument("--r18-steps", type=int, default=3, help="timed training steps for ResNet-18 (0: skip it)")
    parser.add_argument("--infer-steps", type=int, default=6, help="timed inference batches for ResNet-20")
    args = parser.parse_args()
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)

    pipeline = load_pipeline(args.augment)
    needed = TRAIN_BATCH * (args.warmup + args.steps)
    started = time.perf_counter()
    data = load_cifar10(split="train", limit=max(needed, INFER_BATCH))
    load_s = time.perf_counter() - started

    jobs = background_training_jobs()
    load1, load5, _ = os.getloadavg()
    print(
        f"CIFAR-10 train split: {len(data.images):,} images from {data.root} ({data.source}), loaded in {load_s:.1f} s"
    )
    print(
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"torch threads {torch.get_num_threads()}, device cpu; pipeline {args.augment}"
    )
    print(f"load average {load1:.2f} (1 min), {load5:.2f} (5 min)")
    if jobs:
        print(
            "NOTE: competing with a background training job on the same cores, so these numbers are lower "
            "than an idle machine's:"
        )
        for job in jobs:
            print(f"  {job}")
    print()

    rows = bench_arch(
        "resnet20",
        data.images,
        data.labels,
        pipeline,
        warmup=args.warmup,
        steps=args.steps,
        infer_steps=args.infer_steps,
    )
    if args.r18_steps > 0:
        rows += bench_arch(
            "resnet18_cifar",
            data.images,
            data.labels,
            pipeline,
            warmup=1,
            steps=args.r18_steps,
            infer_steps=max(1, args.r18_steps // 2),
        )

    # augmentation alone, on the same thread, per batch of 128 (for reference: what it adds to each step)
    def augment_only(i: int) -> None:
        k = i % (len(data.images) // TRAIN_BATCH)
        augment_epoch(data.images, np.arange(k * TRAIN_BATCH, (k + 1) * TRAIN_BATCH), pipeline, seed=i)

    rows.append(
        (
            "-",
            f"augmentation only, batch {TRAIN_BATCH}",
            args.steps,
            *rates(timed(augment_only, 2, args.steps), TRAIN_BATCH),
        )
    )

    header = ("model", "mode", "steps", "img/s median", "img/s best")
    table = [header] + [(a, m, str(s), f"{med:,.0f}", f"{best:,.0f}") for a, m, s, med, best in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    for i, row in enumerate(table):
        print("  ".join(cell.ljust(w) if c < 2 else cell.rjust(w) for c, (cell, w) in enumerate(zip(row, widths))))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    epoch = next(med for a, m, _, med, _ in rows if a == "resnet20" and m.startswith("train + augmentation"))
    print(
        f"\nAt the median train + augmentation rate, one ResNet-20 epoch of 50,000 images takes "
        f"{50_000 / epoch / 60:.1f} min on this machine now."
    )


if __name__ == "__main__":
    main()
