"""Seeded pipelines: the editor's steps, their validation against the catalogue, and the ``A.Compose`` they build.

Randomness only flows through ``A.Compose(seed=...)``: a new ``Compose`` is built for every call (a cached, shared one
would mix the RNG state of concurrent sessions), and no global RNG (numpy, ``random``, torch) is read or seeded.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import numpy as np
from pydantic import ValidationError

from camlib.augment.catalogue import TRANSFORMS, _as_number, normalise_value, shown
from camlib.augment.sizes import check_output_sizes
from camlib.contracts import describe, require_array, require_int
from camlib.errors import InvalidImageError, PipelineError

MAX_STEPS = 32  # steps in one pipeline


@dataclass(frozen=True)
class PipelineStep:
    """One transform of a pipeline as the editor holds it.

    ``params`` may be partial (missing ones take their catalogue default); it is copied, treat it as read-only.
    Disabled steps are kept (and exported) but not built.
    """

    transform: str
    params: Mapping[str, Any] = field(default_factory=dict)
    p: float = 1.0
    enabled: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", dict(self.params))

    def __hash__(self) -> int:
        # the generated hash would fail on the params dict; parameter names are enough and agree with __eq__
        return hash((self.transform, tuple(sorted(map(str, self.params))), self.p, self.enabled))


@dataclass(frozen=True)
class Pipeline:
    """An ordered tuple of steps and the seed of ``A.Compose``."""

    steps: tuple[PipelineStep, ...] = ()
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "steps", tuple(self.steps))


def _step_error(index: int, name: str, param: str | None, problem: str) -> PipelineError:
    where = f"{name}.{param}" if param else name
    one_line = " ".join(str(problem).split())
    return PipelineError(f"{where} (step {index + 1}): {one_line}", step=index, transform=name, param=param)


def validate_step(step: PipelineStep, index: int = 0) -> dict[str, Any]:
    """Every parameter of ``step`` (defaults filled in), canonical and checked against the catalogue.

    Raises:
        PipelineError: unknown transform or parameter, wrong type, out-of-bounds value, reversed range, bad ``p``;
            ``step`` not a ``PipelineStep`` or ``index`` not a non-negative integer.
    """
    if not isinstance(step, PipelineStep):
        raise PipelineError(f"a pipeline step must be a PipelineStep, got {type(step).__name__}")
    require_int(index, "the step index", minimum=0, error=PipelineError)
    spec = TRANSFORMS.get(step.transform)
    if spec is None:
        raise _step_error(
            index, str(step.transform), None, f"unknown transform; choose one of: {', '.join(TRANSFORMS)}"
        )
    p = _as_number(step.p, integer=False)
    if p is None or not 0.0 <= p <= 1.0:
        raise _step_error(index, spec.name, "p", f"the probability must be in [0, 1], got {shown(step.p)}")
    names = {param.name for param in spec.params}
    for unknown in sorted(set(step.params) - names, key=shown):
        valid = ", ".join(sorted(names)) or "none"
        named = unknown if isinstance(unknown, str) and len(unknown) <= 40 else shown(unknown)
        raise _step_error(index, spec.name, named, f"unknown parameter (editable: {valid})")
    values = spec.defaults() | dict(step.params)
    checked = {}
    for param in spec.params:
        try:
            checked[param.name] = normalise_value(param, values[param.name])
        except ValueError as exc:
            raise _step_error(index, spec.name, param.name, str(exc)) from exc
    return checked


def _pydantic_problem(exc: BaseException) -> tuple[str | None, str]:
    """``(param, message)`` from Albumentations' ValueError wrapping a pydantic ValidationError."""
    cause = exc.__cause__
    if isinstance(cause, ValidationError) and cause.errors():
        first = cause.errors()[0]
        param = str(first["loc"][0]) if first.get("loc") else None
        message = str(first.get("msg", cause)).removeprefix("Value error, ")
        return param, message
    return None, str(exc)


def _instantiate(index: int, step: PipelineStep) -> A.BasicTransform:
    params = validate_step(step, index)
    spec = TRANSFORMS[step.transform]
    try:
        # strict=True: with strict=False Albumentations replaces invalid arguments by defaults with only a warning
        # transforms without an InitSchema of their own (MedianBlur, ToSepia, RandomRotate90) take no strict=
        strict = {"strict": True} if "InitSchema" in vars(spec.transform) else {}
        return spec.transform(**params, p=float(step.p), **strict)
    except (ValueError, TypeError) as exc:  # pydantic errors reach us wrapped in ValueError
        param, message = _pydantic_problem(exc)
        raise _step_error(index, spec.name, param, message) from exc


def build_pipeline(pipeline: Pipeline) -> A.Compose:
    """A fresh ``A.Compose`` of the enabled steps, seeded with ``pipeline.seed``.

    Build one per use: a Compose carries RNG state, so sharing one between sessions breaks reproducibility.

    Raises:
        PipelineError: see ``validate_step``; also a bad seed or too many steps, or ``pipeline`` not a ``Pipeline``.
    """
    _require_pipeline(pipeline)
    _check_seed(pipeline.seed)
    if len(pipeline.steps) > MAX_STEPS:
        raise PipelineError(f"a pipeline has at most {MAX_STEPS} steps, got {len(pipeline.steps)}")
    transforms = [_instantiate(i, step) for i, step in enumerate(pipeline.steps) if step.enabled]
    return A.Compose(transforms, seed=pipeline.seed, strict=True, save_applied_params=True)


def reference_keys(compose: A.Compose) -> tuple[str, ...]:
    """The data keys through which the steps of ``compose`` that match an image to a second one (FDA,
    HistogramMatching, PixelDistributionAdaptation) read it; empty when no step needs one.

    Raises ``PipelineError`` unless ``compose`` is an ``A.Compose`` (``build_pipeline``'s result)."""
    if not isinstance(compose, A.Compose):
        raise PipelineError(f"compose must be an albumentations Compose (see build_pipeline), got {describe(compose)}")
    specs = (TRANSFORMS.get(type(t).__name__) for t in compose.transforms)
    return tuple(dict.fromkeys(spec.reference_key for spec in specs if spec is not None and spec.reference_key))


def augment_image(
    compose: A.Compose, image: np.ndarray, *, references: Sequence[np.ndarray] = (), **targets: Any
) -> dict[str, Any]:
    """``compose(image=image, **targets)``, with ``references`` (uint8 RGB images of any size) handed to every step
    that needs a second image; the step draws one of them with the Compose's seeded generator.

    Every step's output size is checked from its declared parameters before the first step runs
    (``camlib.augment.sizes.check_output_sizes``).

    Raises:
        PipelineError: ``compose`` is not an ``A.Compose``; a step needs a second image and ``references`` is empty;
            a step could make an image above ``MAX_STEP_PIXELS`` pixels.
        InvalidImageError: ``image`` or one of ``references`` is not a uint8 RGB ``(H, W, 3)`` image.
    """
    keys = reference_keys(compose)
    require_array(image, "image", dtypes=(np.uint8,), ndim=3, channels=3, error=InvalidImageError)
    if isinstance(references, str | bytes) or not isinstance(references, Sequence | np.ndarray):
        raise InvalidImageError(
            f"references must be a sequence of uint8 RGB (H, W, 3) images, got {describe(references)}"
        )
    if isinstance(references, np.ndarray):
        require_array(
            references, "references", dtypes=(np.uint8,), ndim=4, channels=3, nonempty=False, error=InvalidImageError
        )
    for j, reference in enumerate(references):
        require_array(reference, f"references[{j}]", dtypes=(np.uint8,), ndim=3, channels=3, error=InvalidImageError)
    check_output_sizes(compose, *image.shape[:2])  # every step's output bounded before the first one runs
    if keys and not len(references):
        specs = [TRANSFORMS.get(type(t).__name__) for t in compose.transforms]
        names = ", ".join(spec.name for spec in specs if spec is not None and spec.reference_key)
        raise PipelineError(f"{names} needs a second image to match to, and none was given")
    return compose(image=image, **targets, **{key: list(references) for key in keys})


def _require_pipeline(pipeline: object) -> None:
    if not isinstance(pipeline, Pipeline) or not all(isinstance(step, PipelineStep) for step in pipeline.steps):
        raise PipelineError(
            f"the pipeline must be a camlib.augment.Pipeline of PipelineSteps, got {type(pipeline).__name__}"
        )


def _check_seed(seed: Any) -> None:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise PipelineError(f"the seed must be an integer in [0, 2**32), got {shown(seed)}")


CIFAR10_TRAIN_PIPELINE = Pipeline(
    steps=(
        PipelineStep("PadIfNeeded", {"min_height": 40, "min_width": 40}),
        PipelineStep("RandomCrop", {"height": 32, "width": 32}),
        PipelineStep("HorizontalFlip", p=0.5),
        PipelineStep(
            "Affine", {"translate_percent": (-0.0625, 0.0625), "scale": (0.9, 1.1), "rotate": (-15.0, 15.0)}, p=0.5
        ),
        PipelineStep(
            "ColorJitter",
            {"brightness": (0.8, 1.2), "contrast": (0.8, 1.2), "saturation": (0.8, 1.2), "hue": (-0.05, 0.05)},
            p=0.8,
        ),
        PipelineStep(
            "CoarseDropout",
            {"num_holes_range": (1, 1), "hole_height_range": (0.25, 0.25), "hole_width_range": (0.25, 0.25)},
            p=0.5,
        ),
    ),
    seed=0,
)
"""A typical CIFAR-10 training pipeline: pad-and-crop, flip, small affine, colour jitter, 8x8 cutout."""
