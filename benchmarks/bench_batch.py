"""Throughput of ``python -m camlib.batch`` against a tight ``compute_cams`` loop, as ratios in one run.

Setting: the bundled CIFAR-10 ResNet-20 (``layer3``, Grad-CAM, the predicted class) on 1,000 CIFAR-10 test images
(the image-folder copy), batch size 64, shards of 128 images, on this machine's CPU (or CUDA when available). In each
round, in rotation so that machine noise hits all alike:

- loop: the floor, ``compute_cams(model, prepare_batch(images[batch]), ["layer3"])`` over the 1,000 images already in
  memory, batch after batch;
- local: ``run_batch`` with the local engine into a fresh ``--out``; its throughput is the images over the time of
  the shard work (``BatchSummary.elapsed_s``: views, CAMs, rows, map and table files), the one-off start (model and
  data loading, the dry run) is printed apart. Target: at least 0.8x the loop;
- ray: ``run_batch --engine ray --workers 2`` against a local Ray (``num_cpus=2``) started once before the rounds,
  as a running cluster would be; its throughput is the images over its shard work (from the first shard's start in
  an actor to the last one's end: the actors' start, importing torch and loading one model each, is left out as the
  local engine's model loading is, and printed apart as the whole call). Target: at least 0.7x local.

Then the whole calls, start-up included, from the same rounds: each engine's call split into start-up (the call less
its shard work: loading the model and the data, the dry run, the table read back; for Ray also planning the Dataset
and starting the actors, each importing torch and camlib and loading its model) and shard work; Ray's whole call as a
ratio of the local engine's whole call; and the job size at which Ray's whole call would break even with local's on
this machine, ``(Ray's start-up - local's) / (local's cost per image - Ray's)`` from the measured medians (none when
Ray's shard work costs more per image than local's: then a larger job only widens the gap).

The loop and the local engine run on ``--threads`` torch threads (default 1: on this 2-core machine, shared with
other jobs, one thread ran ResNet-20's CAMs 2-3x faster than two), each Ray actor on one (Ray's ``num_cpus=1``).
Also prints the per-image cost of each, from which docs/batch.md's per-GPU scaling is estimated.

    python benchmarks/bench_batch.py [--repeats 3] [--images 1000] [--no-ray] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1])]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import torch  # noqa: E402

from camlib.batch import parse_args, run_batch  # noqa: E402
from camlib.cam import compute_cams  # noqa: E402
from camlib.cifar import load_cifar10  # noqa: E402
from camlib.device import default_device  # noqa: E402
from camlib.models import load_model, prepare_batch  # noqa: E402

MODEL = "cifar10_resnet20"
LAYER = "layer3"
BATCH = 64
SHARD = 128  # 64 + 64: the same 16 compute_cams calls per 1,000 images as the loop
LOCAL_TARGET = 0.8
RAY_TARGET = 0.7
DATA = Path(os.environ.get("CAMLIB_CIFAR10_ROOT", Path(__file__).resolve().parents[2] / "shared/data/cifar10"))


def loop_seconds(model: torch.nn.Module, images, preprocessing, device: torch.device) -> float:
    """The floor: one ``compute_cams`` call per batch of 64, nothing else."""
    started = time.perf_counter()
    for start in range(0, len(images), BATCH):
        x = prepare_batch(images[start : start + BATCH], preprocessing).to(device)
        compute_cams(model, x, [LAYER])
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - started


def job_seconds(images: int, engine: str, scratch: Path, threads: int) -> tuple[float, float]:
    """``(shard work s, whole run_batch call s)`` of one fresh batch job: ``BatchSummary.elapsed_s``, and the call with
    loading the model and the data, the dry run, writing run.json, reading the table back (Ray: starting the actors)."""
    out = Path(tempfile.mkdtemp(dir=scratch))
    argv = ["--cifar10", "test", "--data", str(DATA), "--limit", str(images), "--out", str(out)]
    argv += ["--layers", LAYER, "--batch-size", str(BATCH), "--shard-size", str(SHARD), "--engine", engine]
    argv += ["--workers", "2" if engine == "ray" else "0", "--threads", str(threads)]
    started = time.perf_counter()
    summary = run_batch(parse_args(argv), progress=False)
    return summary.elapsed_s, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray engine")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads of the loop and the local engine (a Ray actor has 1)"
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = default_device()
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} cpus={os.cpu_count()}")
    loaded = load_model(MODEL, device=device)
    images = load_cifar10(DATA, "test", limit=args.images).images
    ray = None
    if not args.no_ray:
        import ray

        ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
    times: dict[str, list[float]] = {"loop": [], "local": [], "local_call": [], "ray": [], "ray_call": []}
    with tempfile.TemporaryDirectory() as scratch:
        loop_seconds(loaded.model, images[:BATCH], loaded.spec.preprocessing, device)  # warm-up
        for _ in range(args.repeats):
            times["loop"].append(loop_seconds(loaded.model, images, loaded.spec.preprocessing, device))
            work, call = job_seconds(args.images, "local", Path(scratch), args.threads)
            times["local"].append(work)
            times["local_call"].append(call)
            if ray is not None:
                work, call = job_seconds(args.images, "ray", Path(scratch), args.threads)
                times["ray"].append(work)
                times["ray_call"].append(call)
    if ray is not None:
        ray.shutdown()
    median = {name: statistics.median(values) for name, values in times.items() if values}
    rate = {name: args.images / seconds for name, seconds in median.items()}
    print(f"\n{args.images} CIFAR-10 images, {MODEL} {LAYER} Grad-CAM, batch {BATCH}; medians of {args.repeats}")
    print("| run | s | images/s | ms per image | ratio | target |")
    print("|---|---|---|---|---|---|")
    print(f"| compute_cams loop | {median['loop']:.2f} | {rate['loop']:.0f} | {1e3 / rate['loop']:.2f} | 1 | - |")
    local_ratio = rate["local"] / rate["loop"]
    print(
        f"| local engine (shard work; whole run_batch call {median['local_call']:.2f} s) | {median['local']:.2f} | "
        f"{rate['local']:.0f} | {1e3 / rate['local']:.2f} | **{local_ratio:.2f}x** the loop | >= {LOCAL_TARGET}x |"
    )
    if "ray" in median:
        ray_ratio = rate["ray"] / rate["local"]
        print(
            f"| Ray engine, 2 actors (shard work; whole run_batch call {median['ray_call']:.2f} s) | "
            f"{median['ray']:.2f} | {rate['ray']:.0f} | {1e3 / rate['ray']:.2f} | **{ray_ratio:.2f}x** local | "
            f">= {RAY_TARGET}x |"
        )
        whole_calls(args.images, median)


def break_even_images(start: dict[str, float], per_image: dict[str, float]) -> float | None:
    """The job size (images) at which Ray's whole call takes as long as local's: start-ups plus per-image costs;
    None when Ray's per-image cost is not below local's (no job size makes up its longer start)."""
    saved = per_image["local"] - per_image["ray"]
    if saved <= 0:
        return None
    return max(0.0, (start["ray"] - start["local"]) / saved)


def whole_calls(images: int, median: dict[str, float]) -> None:
    """The whole run_batch calls: start-up and shard work, Ray's ratio to local, and the break-even job size."""
    start = {name: median[f"{name}_call"] - median[name] for name in ("local", "ray")}  # the median call less its work
    per_image = {"local": median["local"] / images, "ray": median["ray"] / images}
    print("\nwhole run_batch calls (medians): start-up = the whole call less the shard work")
    print("| engine | whole call s | start-up s | shard work s | ms per image (shard work) |")
    print("|---|---|---|---|---|")
    for name, label in (("local", "local engine"), ("ray", "Ray engine, 2 actors")):
        print(
            f"| {label} | {median[f'{name}_call']:.2f} | {start[name]:.2f} | {median[name]:.2f} | "
            f"{1e3 * per_image[name]:.2f} |"
        )
    print(
        f"\nwhole calls: Ray **{median['local_call'] / median['ray_call']:.2f}x** local's speed on {images} images "
        f"(Ray's start-up {start['ray']:.2f} s, {start['ray'] - start['local']:+.2f} s over local's)"
    )
    even = break_even_images(start, per_image)
    if even is None:
        print(
            f"break-even: none on this machine (Ray's shard work costs {1e3 * per_image['ray']:.2f} ms per image, "
            f"local's {1e3 * per_image['local']:.2f}: a larger job only widens the gap)"
        )
    else:
        print(
            f"break-even: Ray's whole call would match local's at about {even:,.0f} images on this machine "
            f"({start['ray'] - start['local']:.2f} s more start-up / "
            f"{1e3 * (per_image['local'] - per_image['ray']):.2f} ms saved per image)"
        )


if __name__ == "__main__":
    main()
