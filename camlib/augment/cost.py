"""What a grid will cost before it runs: seconds, from per-step costs measured on this machine.

``estimate_grid`` gives a grid's seconds from each enabled step's cost measured with the step's own parameters: one
call on a seeded noise image at 32x32 (a CIFAR-10 tile) and, for larger tiles, at 128x128, interpolated linearly in
pixels to the step's largest input (``camlib.augment.sizes.output_bounds``), the way ``camlib.cost.time_forward``
times a model once on its device. The Lab asks before drawing a grid estimated above its budget.
"""

from __future__ import annotations

import contextlib
import functools
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from camlib.augment.grid import check_grid_pixels
from camlib.augment.pipeline import (
    Pipeline,
    PipelineStep,
    _require_pipeline,
    augment_image,
    build_pipeline,
    validate_step,
)
from camlib.augment.sizes import SizeBox, check_output_sizes
from camlib.contracts import require_int
from camlib.errors import PipelineError

PROBE_SIDES = (32, 128)  # square noise images a step is timed on (px); 32 is a CIFAR-10 tile
PROBE_SEED = 0
REPEAT_BELOW_S = 0.02  # a probe faster than this is repeated (the faster of two more calls counts)


@dataclass(frozen=True)
class GridEstimate:
    """The estimated time of a grid of augmented tiles.

    Attributes:
        seconds: estimated wall time, s (an expected value: a step with probability ``p`` counts ``p`` times its cost).
        step_seconds: per enabled step, its estimated seconds over the whole grid (fewer entries when ``complete`` is
            False).
        complete: False when the estimate stopped early because it already exceeded the ``budget`` it was given;
            ``seconds`` is then a lower bound.
        tiles: the number of tiles estimated.
    """

    seconds: float
    step_seconds: tuple[float, ...]
    complete: bool
    tiles: int


def _probe_image(side: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (side, side, 3), dtype=np.uint8)


@functools.lru_cache(maxsize=512)
def _probe_seconds(transform: str, params: tuple[tuple[str, Any], ...], side: int) -> float:
    """One call of the step (``p=1``) on a ``side x side`` seeded noise image, s, cached per process: the first call
    when it is slow (above ``REPEAT_BELOW_S``), else the faster of two more (the first also warms the code paths)."""
    compose = build_pipeline(Pipeline((PipelineStep(transform, dict(params), p=1.0),), PROBE_SEED))
    image = _probe_image(side, PROBE_SEED)
    reference = _probe_image(side, PROBE_SEED + 1)

    def timed() -> float:
        start = time.perf_counter()
        # a step that fails on noise (e.g. a crop larger than the probe) is timed up to its failure
        with contextlib.suppress(Exception):
            augment_image(compose, image, references=[reference])
        return time.perf_counter() - start

    first = timed()
    return first if first > REPEAT_BELOW_S else min(timed(), timed())


def _step_key(step: PipelineStep, index: int) -> tuple[str, tuple[tuple[str, Any], ...]]:
    params = validate_step(step, index)  # first: it refuses anything that is not a valid PipelineStep
    return step.transform, tuple(sorted(params.items()))


def step_seconds(step: PipelineStep, pixels: int, *, index: int = 0) -> float:
    """One call of ``step`` (its parameters, ``p`` ignored) on an image of ``pixels`` pixels, s: timed at 32x32 and,
    above 32x32, at 128x128; linear in pixels between the two, proportional to pixels above 128x128 (which counts the
    per-call overhead again: an overestimate for cheap steps on large images), never below the 32x32 time.

    Raises:
        PipelineError: an invalid step (``validate_step``); ``pixels`` below 1.
    """
    require_int(pixels, "pixels", minimum=1, error=PipelineError)
    transform, params = _step_key(step, index)
    small_side, large_side = PROBE_SIDES
    small = _probe_seconds(transform, params, small_side)
    if pixels <= small_side**2:
        return small
    large = max(small, _probe_seconds(transform, params, large_side))
    if pixels >= large_side**2:
        return large * pixels / large_side**2
    return small + (large - small) * (pixels - small_side**2) / (large_side**2 - small_side**2)


def estimate_grid(
    pipeline: Pipeline, height: int, width: int, tiles: int, *, budget: float | None = None
) -> GridEstimate:
    """The time ``augment_grid`` takes for ``tiles`` tiles of ``height x width`` images, from each enabled step's
    measured cost (``step_seconds``) at its largest input (``output_bounds``), weighted by its probability.

    With ``budget`` (s), steps are measured in order only until the estimate exceeds it (``complete=False``), so
    that estimating a pipeline of slow steps costs little more than one of its steps.

    Raises:
        PipelineError: an invalid pipeline, a step with unbounded output (``check_output_sizes``); bad sizes, tiles
            or budget. GridError: a grid ``augment_grid`` would refuse as too large (``check_grid_pixels``).
    """
    _require_pipeline(pipeline)
    require_int(tiles, "tiles", minimum=1, error=PipelineError)
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget >= 0):
        raise PipelineError(f"budget must be a number of seconds >= 0 or None, got {budget!r}")
    compose = build_pipeline(pipeline)
    boxes = check_output_sizes(compose, height, width)
    check_grid_pixels(f"grid of {tiles} tiles", int(tiles), int(height), int(width), boxes)
    inputs = (SizeBox.exact(int(height), int(width)),) + boxes[:-1] if boxes else ()
    enabled = [(i, step) for i, step in enumerate(pipeline.steps) if step.enabled]
    total, per_step = 0.0, []
    for (index, step), box in zip(enabled, inputs, strict=True):
        seconds = float(step.p) * step_seconds(step, box.max_pixels, index=index) * tiles
        per_step.append(seconds)
        total += seconds
        if budget is not None and total > budget and len(per_step) < len(enabled):
            return GridEstimate(total, tuple(per_step), False, int(tiles))
    return GridEstimate(total, tuple(per_step), True, int(tiles))
