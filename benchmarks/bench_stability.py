"""Speed of ``camlib.stability`` against the model passes it cannot avoid, as ratios measured in one run.

Setting: the bundled CIFAR-10 ResNet-20 (``layer3``, Grad-CAM) on this machine's CPU (or CUDA when available), CIFAR-10
test images from the image-folder copy; every variant and its floor are timed in rotation (``bench_cam``'s timer) and
their medians compared.

1. Stability report of one image with 16 views (``augmentation_stability(n_views=16)``) against one batched forward +
   backward (``compute_cams``, the same layer and method) over 17 images: the original and its 16 views. Target: at
   most 3x. Rows: a one-step pipeline (Affine: shift, scale, rotate), whose report is that one pipeline; and the
   6-step CIFAR-10 training pipeline, whose report also holds the per-step breakdown, i.e. 7 pipelines of 16 views
   (its ratio is also given per pipeline measured).
2. Flip curve of 8 values x 64 images (``flip_curve(n_views=1)`` sweeping the training pipeline's Affine rotation
   limit from 0 to 90 degrees) against 512 images through the model in one no-grad batch. Target: at most 2x.

    python benchmarks/bench_stability.py [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_cam import interleaved_medians  # noqa: E402  (the shared rotation timer, ms)

from camlib.augment import CIFAR10_TRAIN_PIPELINE, Pipeline, PipelineStep  # noqa: E402
from camlib.cam import compute_cams  # noqa: E402
from camlib.cifar import load_cifar10  # noqa: E402
from camlib.device import default_device  # noqa: E402
from camlib.models import load_model, prepare_batch  # noqa: E402
from camlib.stability import Sweep, augmentation_stability, flip_curve  # noqa: E402

MODEL = "cifar10_resnet20"
LAYER = "layer3"
VIEWS = 16
CURVE_VALUES = 8
CURVE_IMAGES = 64
REPORT_TARGET = 3.0
CURVE_TARGET = 2.0
AFFINE = Pipeline(
    (PipelineStep("Affine", {"translate_percent": (-0.1, 0.1), "scale": (0.9, 1.1), "rotate": (-15.0, 15.0)}),), 0
)
DATA = Path(os.environ.get("CAMLIB_CIFAR10_ROOT", Path(__file__).resolve().parents[2] / "shared/data/cifar10"))


def report_rows(model: torch.nn.Module, images: np.ndarray, preprocessing, repeats: int, device) -> list[str]:
    """Section 1: the 16-view report of one image against one forward + backward over its 17 images."""
    image = images[:1]
    views = images[: VIEWS + 1]  # 17 images of the same size: the floor's cost does not depend on their content
    x = prepare_batch(views, preprocessing).to(device)
    times = interleaved_medians(
        {
            "floor": lambda: compute_cams(model, x, [LAYER]),
            "affine": lambda: augmentation_stability(
                model, image, AFFINE, LAYER, preprocessing=preprocessing, n_views=VIEWS
            ),
            "train": lambda: augmentation_stability(
                model, image, CIFAR10_TRAIN_PIPELINE, LAYER, preprocessing=preprocessing, n_views=VIEWS
            ),
        },
        repeats,
        device,
    )
    measured = 1 + len(CIFAR10_TRAIN_PIPELINE.steps)  # the whole pipeline and each step
    floor = times["floor"]
    return [
        "| report (1 image, 16 views) | report ms | forward + backward of 17 ms | ratio | target |",
        "|---|---|---|---|---|",
        f"| Affine (1 step) | {times['affine']:.1f} | {floor:.1f} | **{times['affine'] / floor:.2f}x** | "
        f"<= {REPORT_TARGET:.0f}x |",
        f"| CIFAR-10 training pipeline (6 steps + per-step breakdown: {measured} pipelines) | {times['train']:.1f} | "
        f"{floor:.1f} | **{times['train'] / floor:.2f}x** ({times['train'] / floor / measured:.2f}x per pipeline) | "
        f"<= {REPORT_TARGET:.0f}x per pipeline |",
    ]


def curve_rows(model: torch.nn.Module, images: np.ndarray, preprocessing, repeats: int, device) -> list[str]:
    """Section 2: a flip curve of 8 values x 64 images against 512 no-grad forwards in one batch."""
    batch = images[:CURVE_IMAGES]
    x = prepare_batch(np.concatenate([batch] * CURVE_VALUES), preprocessing).to(device)
    step = next(i for i, s in enumerate(CIFAR10_TRAIN_PIPELINE.steps) if s.transform == "Affine")
    sweep = Sweep(step, "rotate", tuple((-float(v), float(v)) for v in np.linspace(0, 90, CURVE_VALUES)))

    def forwards() -> None:
        with torch.no_grad():
            model(x)

    times = interleaved_medians(
        {
            "floor": forwards,
            "curve": lambda: flip_curve(
                model, batch, CIFAR10_TRAIN_PIPELINE, LAYER, preprocessing=preprocessing, sweep=sweep, n_views=1
            ),
        },
        repeats,
        device,
    )
    ratio = times["curve"] / times["floor"]
    return [
        "| flip curve | curve ms | 512 forwards ms | ratio | target |",
        "|---|---|---|---|---|",
        f"| Affine rotation 0-90 deg, {CURVE_VALUES} values x {CURVE_IMAGES} images | {times['curve']:.1f} | "
        f"{times['floor']:.1f} | **{ratio:.2f}x** | <= {CURVE_TARGET:.0f}x |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    loaded = load_model(MODEL, device=device)
    images = load_cifar10(DATA, "test", limit=CURVE_IMAGES).images
    preprocessing = loaded.spec.preprocessing
    for line in report_rows(loaded.model, images, preprocessing, args.repeats, device):
        print(line)
    print()
    for line in curve_rows(loaded.model, images, preprocessing, args.repeats, device):
        print(line)


if __name__ == "__main__":
    main()
