"""CAM speed: camlib against pytorch-grad-cam, side by side in one run.

For resnet18 (torchvision) and efficientnet_lite0 (timm) at 224x224, batch 1, on this machine's CPU (or CUDA when
available), it times: a plain no-grad forward, camlib Grad-CAM with 1 layer and with 4 layers (one pass), and
pytorch-grad-cam 1.5.7 with 1 layer and producing the same 4 per-layer maps (4 calls: it averages the layers of one
call, so per-layer maps cost one call each). It checks that both libraries' maps agree, then prints medians and ratios.

The grid: 5 gradient methods (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM) x the 4 layers from one
``camlib.cam.compute_cam_grid`` call (one forward, one autograd.grad), against pytorch-grad-cam's 20 calls (one per
method and layer) and against the plain forward. Targets: at least 20x faster than pytorch-grad-cam; at most 2.5x a
no-grad forward.

    python benchmarks/bench_cam.py [--repeats 15] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import timm  # noqa: E402
import torch  # noqa: E402
import torchvision  # noqa: E402
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus, HiResCAM, LayerCAM, XGradCAM  # noqa: E402

from camlib.cam import compute_cam_grid, compute_cams  # noqa: E402
from camlib.device import default_device  # noqa: E402

GRID = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
}
CASES = {
    "resnet18": (lambda: torchvision.models.resnet18(weights=None), ["layer1", "layer2", "layer3", "layer4"]),
    "efficientnet_lite0": (
        lambda: timm.create_model("efficientnet_lite0", pretrained=False),
        ["blocks.2", "blocks.4", "blocks.5", "bn2"],
    ),
}


def interleaved_medians(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device) -> dict[str, float]:
    """Median ms of each function, timed in rotation (one call of each per round) so that machine noise hits all
    of them alike and the ratios stay meaningful."""
    for fn in fns.values():  # warm-up
        fn()
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            fn()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def bench(name: str, repeats: int, device: torch.device) -> dict[str, float]:
    build, layers = CASES[name]
    torch.manual_seed(0)
    model = build().to(device).eval()
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1)).to(device)
    modules = dict(model.named_modules())

    def forward() -> None:
        with torch.no_grad():
            model(x)

    def pgc(target_layers: list[str], reference: type = GradCAM) -> list[np.ndarray]:
        out = []
        for layer in target_layers:
            with reference(model=model, target_layers=[modules[layer]]) as cam:
                out.append(cam(input_tensor=x, targets=None)[0])
        return out

    def pgc_grid() -> dict[str, list[np.ndarray]]:
        return {method: pgc(layers, reference) for method, reference in GRID.items()}

    def grid():
        return compute_cam_grid(model, x, layers, list(GRID))

    ours = compute_cams(model, x, layers)
    theirs = pgc(layers)
    worst = max(float(np.abs(ours.maps[layer][0] - ref).max()) for layer, ref in zip(layers, theirs))
    assert worst < 1e-5, f"{name}: maps differ from pytorch-grad-cam by {worst}"
    ours_grid, theirs_grid = grid(), pgc_grid()
    grid_worst = max(
        float(np.abs(ours_grid[m].maps[layer][0] - ref).max())
        for m in GRID
        for layer, ref in zip(layers, theirs_grid[m])
    )
    # up to ~3e-4 on EfficientNet-Lite0: timm's in-place activations change what pytorch-grad-cam reads after the
    # forward (docs/camlib.md, "Activations as produced"); tests/test_cam.py compares at 1e-5 with in-place flags off
    assert grid_worst < 1e-3, f"{name}: grid maps differ from pytorch-grad-cam by {grid_worst}"
    model.zero_grad(set_to_none=True)  # pytorch-grad-cam's backward() filled .grad

    medians = interleaved_medians(
        {
            "forward": forward,
            "camlib_1": lambda: compute_cams(model, x, layers[-1:]),
            "camlib_4": lambda: compute_cams(model, x, layers),
            "pgc_1": lambda: pgc(layers[-1:]),
            "pgc_4": lambda: pgc(layers),
            "grid": grid,
            "pgc_20": pgc_grid,
        },
        repeats,
        device,
    )
    return medians | {"max_abs_diff": worst, "grid_max_abs_diff": grid_worst}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
    print(
        f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} repeats={args.repeats} "
        "input=1x3x224x224, Grad-CAM, median ms"
    )
    header = (
        f"{'model':<20}{'forward':>9}{'camlib 1L':>11}{'camlib 4L':>11}{'pgc 1L':>9}{'pgc 4L':>9}"
        f"{'pgc4/cam4':>11}{'cam4/fwd':>10}{'pgc1/cam1':>11}{'max|diff|':>11}"
    )
    print(header)
    print("-" * len(header))
    results = {}
    for name in CASES:
        r = results[name] = bench(name, args.repeats, device)
        print(
            f"{name:<20}{r['forward']:>9.1f}{r['camlib_1']:>11.1f}{r['camlib_4']:>11.1f}{r['pgc_1']:>9.1f}"
            f"{r['pgc_4']:>9.1f}{r['pgc_4'] / r['camlib_4']:>10.1f}x{r['camlib_4'] / r['forward']:>9.2f}x"
            f"{r['pgc_1'] / r['camlib_1']:>10.1f}x{r['max_abs_diff']:>11.1e}"
        )
    print("targets: pgc4/cam4 >= 5x (camlib's 4 maps vs pytorch-grad-cam's 4 calls); cam4/fwd <= 2x")
    print()
    print(
        f"{'grid 5 methods x 4 layers':<28}{'grid':>9}{'pgc 20':>10}{'pgc20/grid':>12}{'grid/fwd':>10}{'max|diff|':>11}"
    )
    for name, r in results.items():
        print(
            f"{name:<28}{r['grid']:>9.1f}{r['pgc_20']:>10.1f}{r['pgc_20'] / r['grid']:>11.1f}x"
            f"{r['grid'] / r['forward']:>9.2f}x{r['grid_max_abs_diff']:>11.1e}"
        )
    print("targets: pgc20/grid >= 20x; grid/fwd <= 2.5x")


if __name__ == "__main__":
    main()
