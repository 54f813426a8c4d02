"""Hypothesis property tests of bad-inputs rows 34 (non-finite logits and maps), 43 (the image contract) and 54
(out-of-domain pipeline values). Example counts are small and derandomised so the suite stays fast and repeatable."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from camlib.augment import TRANSFORMS, Pipeline, PipelineError, PipelineStep, build_pipeline
from camlib.cam import compute_cams
from camlib.errors import CamlibError, NonFiniteError
from camlib.overlay import overlay_heatmap

PROFILE = settings(
    max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


class _Poisoned(nn.Module):
    """A tiny classifier whose logits get ``value`` at ``(image, class)`` positions."""

    def __init__(self, positions: list[tuple[int, int]], value: float) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.features = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 5)
        self.positions, self.value = positions, value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.head(self.features(x).mean(dim=(2, 3)))
        mask = torch.zeros_like(logits, dtype=torch.bool)
        for image, klass in self.positions:
            mask[image, klass] = True
        return torch.where(mask, torch.full_like(logits, self.value), logits)


@pytest.mark.bad_input(34)
@PROFILE
@given(
    value=NON_FINITE,
    positions=st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4)), min_size=1, max_size=4),
    method=st.sampled_from(["gradcam", "gradcam++", "layercam", "eigencam"]),
)
def test_any_non_finite_logit_raises_non_finite_error(
    value: float, positions: list[tuple[int, int]], method: str
) -> None:
    model = _Poisoned(positions, value).eval()
    x = torch.rand(3, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with pytest.raises(NonFiniteError, match="non-finite"):
        compute_cams(model, x, ["features"], method=method)


@pytest.mark.bad_input(34, 43)
@PROFILE
@given(value=NON_FINITE, row=st.integers(0, 15), col=st.integers(0, 15))
def test_overlay_is_never_drawn_from_a_non_finite_map(value: float, row: int, col: int) -> None:
    cam = np.linspace(0, 1, 256, dtype=np.float32).reshape(16, 16)
    cam[row, col] = value
    with pytest.raises(CamlibError):
        overlay_heatmap(np.zeros((16, 16, 3), np.uint8), cam)


@pytest.mark.bad_input(43)
@PROFILE
@given(
    height=st.integers(1, 24),
    width=st.integers(1, 24),
    dtype=st.sampled_from([np.float32, np.float64, np.uint16, np.int32, np.int64]),
    layout=st.sampled_from(["hwc", "chw", "hw", "hwc4", "nhwc"]),
)
def test_overlay_accepts_only_uint8_rgb_hwc(height: int, width: int, dtype: type, layout: str) -> None:
    """Every dtype other than uint8 (floats in 0-1 or 0-255 alike) and every layout other than (H, W, 3) is a typed
    error; the one valid form gives a uint8 (H, W, 3) image."""
    shapes = {
        "hwc": (height, width, 3),
        "chw": (3, height, width),
        "hw": (height, width),
        "hwc4": (height, width, 4),
        "nhwc": (1, height, width, 3),
    }
    cam = np.full((height, width), 0.5, np.float32)
    image = np.full(shapes[layout], 200, dtype=dtype)
    with pytest.raises(CamlibError, match="uint8 RGB"):
        overlay_heatmap(image, cam)
    if layout == "hwc":
        out = overlay_heatmap(image.astype(np.uint8), cam)
        assert out.dtype == np.uint8 and out.shape == (height, width, 3)


def _numeric_params() -> list[tuple[str, str]]:
    return [
        (name, param.name)
        for name, spec in TRANSFORMS.items()
        for param in spec.params
        if param.kind in ("float", "int") and param.low is not None and param.high is not None
    ]


@pytest.mark.bad_input(54)
@PROFILE
@given(
    choice=st.sampled_from(_numeric_params()),
    where=st.sampled_from(["below", "above", "nan", "inf"]),
    distance=st.floats(0.001, 1e6),
    probability=st.sampled_from([None, 1.5, -0.1, math.nan]),
)
def test_out_of_domain_values_give_one_readable_line(
    choice: tuple[str, str], where: str, distance: float, probability: float | None
) -> None:
    """A value below or above a parameter's bounds, NaN or infinity (and, in some draws, an invalid probability):
    always a PipelineError (a ValueError) with a one-line message that names the transform, never a pydantic dump
    and never a silently built pipeline."""
    name, param_name = choice
    param = next(p for p in TRANSFORMS[name].params if p.name == param_name)
    value = {"below": param.low - distance, "above": param.high + distance, "nan": math.nan, "inf": math.inf}[where]
    if param.kind == "int" and where in ("below", "above"):
        value = int(math.floor(value) if where == "below" else math.ceil(value))
    step = PipelineStep(name, {param_name: value}, p=1.0 if probability is None else probability)
    with pytest.raises(PipelineError) as raised:
        build_pipeline(Pipeline((step,), seed=0))
    message = str(raised.value)
    assert isinstance(raised.value, ValueError)
    assert "\n" not in message and name in message and "validation error" not in message.lower()
