"""Which parameters of a test run in the quick tier (``python -m pytest -m "not slow"``) and which in the slow tier.

A per-method invariant (the model is left clean, the output contract, in-place flags) runs in the quick tier on one
method of each code path the engine has, and on every method in the slow tier, which CI runs: a developer's
pre-commit run stays short and no method loses its check.
"""

from __future__ import annotations

from collections.abc import Iterable

import pytest

# One method per code path of camlib.cam: a one-pass gradient method, second-order terms (ShapleyCAM), a method with
# its own score (Finer-CAM), activations only (Eigen-CAM), the classifier's weights (CAM), one forward per channel
# (Score-CAM, Ablation-CAM's hook), inputs of other sizes (SESS) and seeded noisy inputs with their own gradients
# (Smooth Grad-CAM++).
QUICK_METHODS = (
    "gradcam",
    "shapleycam",
    "finercam",
    "eigencam",
    "cam",
    "scorecam",
    "ablationcam",
    "sess",
    "smoothgradcam++",
)


def quick_subset(values: Iterable[object], quick: Iterable[object] = QUICK_METHODS) -> list[object]:
    """``values`` as pytest parameters: those in ``quick`` as they are, the others marked ``slow``."""
    keep = set(quick)
    return [value if value in keep else pytest.param(value, marks=pytest.mark.slow) for value in values]
