"""Deletion + insertion cost against its floor, side by side in one run (issue #13 target: at most 1.5x).

For one 224x224 image on torchvision's ResNet-18 (seeded random weights, no download), on this machine's CPU (or
CUDA when available), it times ``camlib.metrics.deletion_insertion`` with 20 steps (42 perturbed inputs, blur
baseline, one batch of 64) against the floor: 42 inputs through the same model in one no-grad batch. The two are
timed in rotation; it prints the medians and their ratio.

    python benchmarks/bench_faithfulness.py [--repeats 3] [--threads N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

import torch  # noqa: E402
import torchvision  # noqa: E402
from bench_cam import interleaved_medians  # noqa: E402  (the shared rotation timer, ms)

from camlib.device import default_device  # noqa: E402
from camlib.metrics import baseline_maps, deletion_insertion  # noqa: E402

STEPS = 20
INPUTS = 2 * STEPS + 2  # deletion and insertion, steps 0..STEPS each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = default_device()
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
        args.repeats,
        device,
    )
    ratio = result["deletion_insertion"] / result["forward_42"]
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} repeats={args.repeats}")
    print(f"42 batched forwards      {result['forward_42']:9.1f} ms (median)")
    print(f"deletion+insertion (20)  {result['deletion_insertion']:9.1f} ms (median)")
    print(f"ratio                    {ratio:9.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
