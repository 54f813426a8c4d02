"""Faithfulness benchmarks: the cost of deletion + insertion, and which method and layer to trust on
CIFAR-10.

Speed: for one 224x224 image on torchvision's ResNet-18 (seeded random weights, no download), on this machine's CPU
(or CUDA when available), it times ``camlib.metrics.deletion_insertion`` with 20 steps (42 perturbed inputs, blur
baseline, one batch of 64) against the floor: 42 inputs through the same model in one no-grad batch. The two are
timed in rotation; it prints the medians and their ratio (target: at most 1.5x).

Dataset: the grid of ``METHODS`` x ``LAYERS`` of the bundled CIFAR-10 ResNet-20 over the first ``--images`` test
images of a class-balanced subset (``camlib.cifar.load_cifar10(limit=N)``), each explaining the model's predicted
class. Per cell, ``camlib.metrics.faithfulness_scores`` (deletion and insertion AUC, 20 steps, blur baseline; ROAD
combined, noise 0.01, seed 0): the mean and standard error over the images, the time per image of the CAM (that cell
alone, ``compute_cams`` on the batch) and of the metrics, and whether the cell beats the seeded random, centred
Gaussian and Sobel-edge maps (``compare_with_baselines``; the baselines get their own rows). Prints a Markdown table,
best cell first (``rank_by_faithfulness``).

Dataset from a batch table: ``--table OUT`` reads the metric columns of a ``python -m camlib.batch ...
--metrics deletion_auc insertion_auc road`` job's output instead of recomputing them, and prints the same table per
method and layer (no baseline rows: a batch job scores the methods' maps only; rows with an error are left out).

    python benchmarks/bench_faithfulness.py [--section speed dataset] [--repeats 3] [--images 32] [--threads N]
    python benchmarks/bench_faithfulness.py --table runs/batch_out
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from bench_cam import interleaved_medians  # noqa: E402  (the shared rotation timer, ms)

from camlib.batch import read_batch_table  # noqa: E402
from camlib.cam import METHODS as CAM_METHODS  # noqa: E402
from camlib.cam import compute_cams  # noqa: E402
from camlib.cifar import load_cifar10  # noqa: E402
from camlib.device import default_device  # noqa: E402
from camlib.metrics import (  # noqa: E402
    BASELINE_KINDS,
    baseline_maps,
    compare_with_baselines,
    deletion_insertion,
    faithfulness_scores,
    rank_by_faithfulness,
)
from camlib.models import load_model, prepare_batch  # noqa: E402

STEPS = 20
INPUTS = 2 * STEPS + 2  # deletion and insertion, steps 0..STEPS each
MODEL = "cifar10_resnet20"
METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "eigencam", "scorecam", "randomcam")
LAYERS = ("layer1", "layer2", "layer3")  # ResNet-20's stages: 32x32, 16x16 and 8x8
SHORT = {"deletion_auc": "del", "insertion_auc": "ins", "road": "ROAD"}
DATA = Path(os.environ.get("CAMLIB_CIFAR10_ROOT", Path(__file__).resolve().parents[2] / "shared/data/cifar10"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--section", nargs="+", choices=("speed", "dataset"), default=["speed", "dataset"])
    parser.add_argument("--repeats", type=int, default=3, help="speed: timed rounds")
    parser.add_argument("--images", type=int, default=32, help="dataset: CIFAR-10 test images")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--table", default=None, help="a camlib.batch output directory: its metrics, not recomputed")
    args = parser.parse_args()
    if args.table:
        from_batch_table(args.table)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()}")
    if "speed" in args.section:
        speed(device, args.repeats)
    if "dataset" in args.section:
        dataset(device, args.images)


def speed(device: torch.device, repeats: int) -> None:
    """Deletion + insertion (20 steps) against 42 batched forwards, ResNet-18 at 224x224."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None).to(device).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    maps = baseline_maps(x, "gaussian")
    batch = x.expand(INPUTS, -1, -1, -1).contiguous()

    def floor() -> None:
        with torch.no_grad():
            model(batch)

    result = interleaved_medians(
        {
            "forward_42": floor,
            "deletion_insertion": lambda: deletion_insertion(model, x, maps, 0, steps=STEPS, batch_size=64),
        },
        repeats,
        device,
    )
    ratio = result["deletion_insertion"] / result["forward_42"]
    print(f"## speed (ResNet-18, 224x224, repeats={repeats})")
    print(f"42 batched forwards      {result['forward_42']:9.1f} ms (median)")
    print(f"deletion+insertion (20)  {result['deletion_insertion']:9.1f} ms (median)")
    print(f"ratio                    {ratio:9.2f}x (target <= 1.5x)")


def _mean_se(values: np.ndarray) -> str:
    se = values.std(ddof=1) / math.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():.3f} ± {se:.3f}"


def dataset(device: torch.device, images: int) -> None:
    """The methods x layers grid of ResNet-20 over ``images`` CIFAR-10 test images: a Markdown table."""
    loaded = load_model(MODEL, allow_download=False, device=device)
    data = load_cifar10(DATA, "test", limit=images)
    x = prepare_batch(data.images, loaded.spec.preprocessing).to(device)
    with torch.no_grad():
        predicted = loaded.model(x).argmax(dim=1).tolist()
    accuracy = float(np.mean(np.array(predicted) == data.labels))
    rows: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    times: dict[tuple[str, str], tuple[float, float]] = {}
    start = time.perf_counter()
    for kind in BASELINE_KINDS:
        begin = time.perf_counter()
        scores = faithfulness_scores(loaded.model, x, baseline_maps(x, kind, seed=0), predicted)
        rows[(f"baseline: {kind}", "-")] = scores.summary
        times[(f"baseline: {kind}", "-")] = (0.0, time.perf_counter() - begin)
    baselines = {kind: rows[(f"baseline: {kind}", "-")] for kind in BASELINE_KINDS}
    for method in METHODS:
        for layer in LAYERS:
            begin = time.perf_counter()
            maps = compute_cams(loaded.model, x, [layer], method=method, class_idx=predicted).maps[layer]
            cam_s = time.perf_counter() - begin
            scores = faithfulness_scores(loaded.model, x, maps, predicted)
            rows[(method, layer)] = scores.summary
            times[(method, layer)] = (cam_s, time.perf_counter() - begin - cam_s)
    total = time.perf_counter() - start
    print(
        f"## dataset: {MODEL} on {images} CIFAR-10 test images ({DATA.name}, class-balanced, accuracy {accuracy:.1%}),"
        f" predicted class; {total:.0f} s in all"
    )
    print_table(rows, baselines, {key: (1000 * c / images, 1000 * m / images) for key, (c, m) in times.items()})


def from_batch_table(out: str) -> None:
    """The dataset table from a batch job's metric columns (``camlib.batch.read_batch_table``), not recomputed."""
    frame = read_batch_table(out).to_pandas()
    frame = frame[frame["error"].isna()] if "error" in frame else frame
    missing = [m for m in SHORT if m not in frame or frame[m].isna().all()]
    if missing:
        raise SystemExit(f"error: {out}: the batch job computed no {', '.join(missing)} (run it with --metrics)")
    rows = {
        (method, layer): {m: group[m].to_numpy(np.float64) for m in SHORT}
        for (method, layer), group in frame.groupby(["method", "layer"], sort=False)
    }
    print(f"## dataset from the batch table {out}: {frame['image_id'].nunique()} images, {len(rows)} cells")
    print_table(rows, None, None)


def print_table(
    rows: dict[tuple[str, str], dict[str, np.ndarray]],
    baselines: dict[str, dict[str, np.ndarray]] | None,
    times_ms: dict[tuple[str, str], tuple[float, float]] | None,
) -> None:
    """The Markdown table, best cell first (``rank_by_faithfulness``): mean ± standard error per metric, the CAM and
    metrics time per image (when known) and whether the cell beats the baselines (when they were scored)."""
    order = rank_by_faithfulness({key: {m: float(v.mean()) for m, v in row.items()} for key, row in rows.items()})
    print(
        "| rank | method | layer | deletion AUC ↓ | insertion AUC ↑ | ROAD ↑ | CAM ms/img | metrics ms/img "
        "| beats baselines |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for rank, key in enumerate(order, 1):
        method, layer = key
        row = rows[key]
        if method.startswith("baseline") or baselines is None:
            verdict = "-"
        else:
            failures = compare_with_baselines(row, baselines).failures
            verdict = "yes" if not failures else "no: " + ", ".join(f"{SHORT[m]} vs {k}" for m, k in failures)
        label = CAM_METHODS[method].label if method in CAM_METHODS else method
        cam_ms, metrics_ms = times_ms[key] if times_ms else (float("nan"), float("nan"))
        print(
            f"| {rank} | {label} | {layer} | {_mean_se(row['deletion_auc'])} | {_mean_se(row['insertion_auc'])} | "
            f"{_mean_se(row['road'])} | {cam_ms:.1f} | {metrics_ms:.0f} | {verdict} |"
        )


if __name__ == "__main__":
    main()
