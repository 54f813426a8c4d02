"""Augmentation Lab backend: a catalogue of Albumentations transforms, seeded pipelines, grids and export.

The catalogue (``TRANSFORMS``) derives every parameter's kind, default and bounds from the transform's own pydantic
``InitSchema`` and ``__init__`` signature; ``_UI`` entries only add what a schema cannot say (slider bounds for
unbounded values, steps, CIFAR-sized defaults) and ``_EXCLUDED`` names what the lab does not expose, with the reason.
An Albumentations upgrade that renames or removes a parameter therefore fails ``tests/test_augment.py`` instead of
showing a silently wrong slider.

Randomness only flows through ``A.Compose(seed=...)``: a new ``Compose`` is built for every call (a cached, shared one
would mix the RNG state of concurrent sessions), and no global RNG (numpy, ``random``, torch) is read or seeded.
"""

from __future__ import annotations

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI for updates at import otherwise

import inspect
import io
import json
import math
import re
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import albumentations as A
import annotated_types
import cv2
import numpy as np
import yaml
from pydantic import ValidationError

from camlib.errors import CamlibError, InvalidImageError
from camlib.imaging import ensure_rgb_uint8

ParamKind = Literal["float", "int", "range", "int_range", "int_pair", "choice", "bool", "colour"]
GridMode = Literal["many", "one"]

MAX_GRID_SIDE = 16  # rows and cols of a grid
MAX_GRID_PIXELS = 2**25  # input pixels over all tiles (~100 MB of uint8 RGB): bounds memory for large uploads
MAX_STEPS = 32  # steps in one pipeline
MAX_IMPORT_CHARS = 1_000_000  # an exported pipeline is a few kB
MAX_LISTED_ELEMENTS = 64  # applied-param arrays above this size are summarised, not listed (e.g. 32x32 remap fields)
EXPORT_KEY = "augmentation_lab"  # our editor state inside an Albumentations export; A.load ignores it
EXPORT_FORMAT = 1


class PipelineError(CamlibError):
    """A pipeline the lab cannot build or apply: unknown transform or parameter, or an invalid value.

    ``str(error)`` is one line naming the step, the transform and the parameter; the attributes let a page highlight
    the offending widget.
    """

    def __init__(self, message: str, *, step: int | None = None, transform: str | None = None,
                 param: str | None = None) -> None:
        super().__init__(message)
        self.step = step
        self.transform = transform
        self.param = param


class GridError(CamlibError):
    """Invalid grid arguments: mode, rows/cols, indices, scale or a grid too large for memory."""


# --------------------------------------------------------------------------------------------------------------------
# Catalogue


@dataclass(frozen=True)
class ParamSpec:
    """One editable parameter of a transform.

    Attributes:
        name: the transform's keyword argument.
        kind: "float" / "int" scalar; "range" / "int_range" an ordered ``(low, high)`` interval sampled from;
            "int_pair" an unordered pair such as ``(height, width)``; "choice" one of ``choices``; "bool";
            "colour" an RGB triple of ints 0-255.
        default: the value a new step starts with (tuples for pairs and colours).
        low, high: inclusive bounds of each number (None for choice/bool); within the schema's own bounds.
        step: slider step for numbers (None for choice/bool).
        choices: allowed values of a "choice" (e.g. OpenCV enum ints), with human ``choice_labels``.
    """

    name: str
    kind: ParamKind
    default: Any
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()
    choice_labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class TransformSpec:
    """A catalogued Albumentations transform.

    Attributes:
        name: the Albumentations class name (also the registry key and the ``__class_fullname__`` of exports).
        transform: the class itself.
        category: a UI group ("crop & pad", "geometric", "colour", "blur & noise", "dropout", "distortion").
        summary: the first line of the class docstring.
        default_p: the class's own default probability.
        params: editable parameters, in signature order.
    """

    name: str
    transform: type[A.BasicTransform]
    category: str
    summary: str
    default_p: float
    params: tuple[ParamSpec, ...]

    def param(self, name: str) -> ParamSpec:
        """The parameter called ``name``; raises ``PipelineError`` listing the valid names."""
        for spec in self.params:
            if spec.name == name:
                return spec
        valid = ", ".join(p.name for p in self.params) or "none"
        raise PipelineError(f"{self.name} has no parameter '{name}' (editable: {valid})", transform=self.name,
                            param=name)

    def defaults(self) -> dict[str, Any]:
        """Every editable parameter at its default."""
        return {spec.name: spec.default for spec in self.params}


_KEEP: Any = object()  # "use the schema/signature's own value" in _UI


@dataclass(frozen=True)
class _UI:
    """What a schema cannot say: slider bounds of unbounded values, steps, CIFAR-sized defaults, a pair's meaning."""

    kind: ParamKind | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    default: Any = _KEEP


# Not editable anywhere: the step's own probability, strictness we always set, and mask/keypoint-only settings.
_GLOBAL_EXCLUDED: dict[str, str] = {
    "p": "the step's probability is PipelineStep.p",
    "strict": "build_pipeline always passes strict=True",
    "always_apply": "deprecated in Albumentations 2",
    "mask_interpolation": "applies to masks only; the lab augments images",
    "fill_mask": "applies to masks only",
    "keypoint_remapping_method": "applies to keypoints only",
}

# Per transform: parameters the lab leaves at the library default, and why.
_EXCLUDED: dict[str, dict[str, str]] = {
    "PadIfNeeded": {"pad_height_divisor": "the lab pads to min_height",
                    "pad_width_divisor": "the lab pads to min_width"},
    "Affine": {"translate_px": "the lab shifts by translate_percent, which works for every image size"},
    "ToGray": {"num_output_channels": "the lab's contract is 3-channel RGB"},
    "Equalize": {"mask": "takes an array or a callable", "mask_params": "only used with a callable mask"},
    "GaussianBlur": {"blur_limit": "0 derives the kernel size from sigma, the only setting valid at every sigma"},
    "GridDropout": {"unit_size_range": "None lets holes_number_xy/ratio size the grid",
                    "holes_number_xy": "None derives the hole count from the image size"},
}

_UI_OVERRIDES: dict[str, dict[str, _UI]] = {
    # crop/pad sizes are scaled for 32x32 CIFAR-10; larger images still work, the crops are just small
    "PadIfNeeded": {"min_height": _UI(low=8, high=64, default=40), "min_width": _UI(low=8, high=64, default=40)},
    "RandomCrop": {"height": _UI(low=8, high=64, default=32), "width": _UI(low=8, high=64, default=32),
                   # padding keeps a 64-px crop valid on a 32-px image, so every slider position works on CIFAR
                   "pad_if_needed": _UI(default=True)},
    "RandomResizedCrop": {"size": _UI(kind="int_pair", low=8, high=64, default=(32, 32)), "scale": _UI(low=0.05),
                          "ratio": _UI(low=0.25, high=4.0)},
    "Affine": {"scale": _UI(low=0.5, high=2.0, default=(1.0, 1.0)),
               "translate_percent": _UI(low=-0.5, high=0.5, default=(0.0, 0.0)),
               "rotate": _UI(low=-180.0, high=180.0, step=1.0, default=(0.0, 0.0)),
               "shear": _UI(low=-45.0, high=45.0, step=1.0, default=(0.0, 0.0))},
    "Rotate": {"limit": _UI(low=-180.0, high=180.0, step=1.0)},
    # CoarseDropout reads both hole ranges as pixels once hole_height_range[1] >= 1: fractions stop below 1
    "CoarseDropout": {"num_holes_range": _UI(high=16), "hole_height_range": _UI(low=0.01, high=0.99),
                      "hole_width_range": _UI(low=0.01, high=0.99)},
    "GridDropout": {"ratio": _UI(low=0.05), "shift_xy": _UI(kind="int_pair", high=16)},
    "RandomBrightnessContrast": {"brightness_limit": _UI(low=-1.0, high=1.0),
                                 "contrast_limit": _UI(low=-1.0, high=1.0)},
    "HueSaturationValue": {"hue_shift_limit": _UI(low=-180.0, high=180.0, step=1.0),
                           "sat_shift_limit": _UI(low=-255.0, high=255.0, step=1.0),
                           "val_shift_limit": _UI(low=-255.0, high=255.0, step=1.0)},
    # ColorJitter's bounds live in a field validator (not introspectable): hue in [-0.5, 0.5], the others >= 0.
    "ColorJitter": {"brightness": _UI(low=0.0, high=2.0), "contrast": _UI(low=0.0, high=2.0),
                    "saturation": _UI(low=0.0, high=2.0), "hue": _UI(low=-0.5, high=0.5)},
    "RGBShift": {"r_shift_limit": _UI(low=-255.0, high=255.0, step=1.0),
                 "g_shift_limit": _UI(low=-255.0, high=255.0, step=1.0),
                 "b_shift_limit": _UI(low=-255.0, high=255.0, step=1.0)},
    "CLAHE": {"clip_limit": _UI(high=16.0, step=0.1, default=(1.0, 4.0)),
              "tile_grid_size": _UI(kind="int_pair", high=16)},
    "Posterize": {"num_bits": _UI(low=1, high=7, default=(4, 4))},  # [1, 7] is checked in a field validator
    "Sharpen": {"lightness": _UI(high=2.0), "kernel_size": _UI(high=15, step=2), "sigma": _UI(low=0.1, high=5.0)},
    "GaussNoise": {"mean_range": _UI(low=-1.0, high=1.0)},
    "GaussianBlur": {"sigma_limit": _UI(low=0.1, high=5.0, step=0.1)},
    "MotionBlur": {"blur_limit": _UI(low=3, high=15, step=2)},  # odd kernels only: step 2 from 3
    "Perspective": {"scale": _UI(low=0.0, high=0.5)},
    "ElasticTransform": {"alpha": _UI(high=200.0, step=1.0), "sigma": _UI(high=100.0, step=1.0)},
    # GridDistortion checks distort_limit in [-1, 1] in a field validator; +-0.5 keeps the grid legible.
    "GridDistortion": {"num_steps": _UI(high=16), "distort_limit": _UI(low=-0.5, high=0.5)},
    "OpticalDistortion": {"distort_limit": _UI(low=-1.0, high=1.0)},
}

# Registry: name -> (class, UI category). Explicit, so the UI lists exactly what the tests cover.
_CATALOGUE: dict[str, tuple[type[A.BasicTransform], str]] = {
    "PadIfNeeded": (A.PadIfNeeded, "crop & pad"),
    "RandomCrop": (A.RandomCrop, "crop & pad"),
    "RandomResizedCrop": (A.RandomResizedCrop, "crop & pad"),
    "HorizontalFlip": (A.HorizontalFlip, "geometric"),
    "VerticalFlip": (A.VerticalFlip, "geometric"),
    "Affine": (A.Affine, "geometric"),
    "Rotate": (A.Rotate, "geometric"),
    "Perspective": (A.Perspective, "geometric"),
    "RandomBrightnessContrast": (A.RandomBrightnessContrast, "colour"),
    "HueSaturationValue": (A.HueSaturationValue, "colour"),
    "ColorJitter": (A.ColorJitter, "colour"),
    "RGBShift": (A.RGBShift, "colour"),
    "ToGray": (A.ToGray, "colour"),
    "CLAHE": (A.CLAHE, "colour"),
    "Equalize": (A.Equalize, "colour"),
    "Posterize": (A.Posterize, "colour"),
    "Solarize": (A.Solarize, "colour"),
    "InvertImg": (A.InvertImg, "colour"),
    "ChannelShuffle": (A.ChannelShuffle, "colour"),
    "Sharpen": (A.Sharpen, "blur & noise"),
    "GaussNoise": (A.GaussNoise, "blur & noise"),
    "GaussianBlur": (A.GaussianBlur, "blur & noise"),
    "MotionBlur": (A.MotionBlur, "blur & noise"),
    "ImageCompression": (A.ImageCompression, "blur & noise"),
    "CoarseDropout": (A.CoarseDropout, "dropout"),
    "GridDropout": (A.GridDropout, "dropout"),
    "ElasticTransform": (A.ElasticTransform, "distortion"),
    "GridDistortion": (A.GridDistortion, "distortion"),
    "OpticalDistortion": (A.OpticalDistortion, "distortion"),
}

_CV2_LABELS: dict[str, dict[int, str]] = {
    "interpolation": {getattr(cv2, n): n for n in ("INTER_NEAREST", "INTER_NEAREST_EXACT", "INTER_LINEAR",
                                                   "INTER_CUBIC", "INTER_AREA", "INTER_LANCZOS4",
                                                   "INTER_LINEAR_EXACT")},
    "border_mode": {getattr(cv2, n): n for n in ("BORDER_CONSTANT", "BORDER_REPLICATE", "BORDER_REFLECT",
                                                 "BORDER_WRAP", "BORDER_REFLECT_101")},
}


def _union_members(annotation: Any) -> list[Any]:
    """The members of a ``Union`` (or ``X | Y``) without ``None``; a non-union gives itself."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [m for m in typing.get_args(annotation) if m is not type(None)]
    return [annotation]


def _infer_kind(annotation: Any) -> ParamKind | None:
    """The kind a schema annotation maps to, or None when the lab cannot edit it without an override."""
    members = _union_members(annotation)
    tuples = [typing.get_args(m) for m in members if typing.get_origin(m) is tuple]
    if any(args and args[-1] is Ellipsis for args in tuples):
        return "colour"  # ``fill: tuple[float, ...] | float`` (and CoarseDropout's extra fill modes)
    if len(members) == 1 and typing.get_origin(members[0]) is Literal:
        return "choice"
    if members == [bool]:
        return "bool"
    if members == [int]:
        return "int"
    if members == [float]:
        return "float"
    if (float, float) in tuples:  # a float pair wins over an int pair: the lab edits fractions, not pixels
        return "range"
    if (int, int) in tuples:
        return "int_range"
    return None


def _schema_bounds(field_info: Any) -> tuple[float | None, float | None, bool, bool]:
    """``(low, high, low_exclusive, high_exclusive)`` from ``Field(ge/gt/le/lt)`` or ``check_range_bounds``."""
    low = high = None
    low_open = high_open = False
    for meta in field_info.metadata:
        if isinstance(meta, annotated_types.Ge):
            low = meta.ge
        elif isinstance(meta, annotated_types.Gt):
            low, low_open = meta.gt, True
        elif isinstance(meta, annotated_types.Le):
            high = meta.le
        elif isinstance(meta, annotated_types.Lt):
            high, high_open = meta.lt, True
        elif callable(getattr(meta, "func", None)):
            # check_range_bounds(min_val, max_val, ...) keeps its bounds in the validator's closure
            bound = inspect.getclosurevars(meta.func).nonlocals
            if "min_val" in bound:
                low, low_open = bound["min_val"], not bound.get("min_inclusive", True)
                high, high_open = bound.get("max_val"), not bound.get("max_inclusive", True)
    return low, high, low_open, high_open


def _nice_step(low: float, high: float, kind: ParamKind) -> float:
    """About 100 slider positions, on a power of ten (ints: 1)."""
    if kind in ("int", "int_range", "int_pair"):
        return 1
    return 10.0 ** round(math.log10((high - low) / 100)) if high > low else 0.01


def _intersect(schema: float | None, ui: float | None, pick: Callable[[float, float], float]) -> float | None:
    return ui if schema is None else schema if ui is None else pick(schema, ui)


def _derive_param(name: str, field_info: Any, default: Any, ui: _UI) -> ParamSpec | None:
    """One ``ParamSpec`` from the schema field, the signature default and the override; None if underivable."""
    kind = ui.kind or _infer_kind(field_info.annotation)
    if ui.default is not _KEEP:
        default = ui.default
    if kind is None or default is inspect.Parameter.empty:
        return None
    if kind == "choice":
        choices = typing.get_args(_union_members(field_info.annotation)[0])
        names = _CV2_LABELS.get(name, {})
        labels = tuple(names.get(c, str(c)) if not isinstance(c, str) else c for c in choices)
        return ParamSpec(name, kind, default, choices=choices, choice_labels=labels)
    if default is None:
        return None  # "None = automatic" numbers need an explicit default in _UI_OVERRIDES (or an exclusion)
    if kind == "bool":
        return ParamSpec(name, kind, bool(default))
    if kind == "colour":
        rgb = tuple(int(v) for v in (default if isinstance(default, tuple) else (default,) * 3))
        return ParamSpec(name, kind, rgb, low=0, high=255, step=1)
    s_low, s_high, low_open, high_open = _schema_bounds(field_info)
    low, high = _intersect(s_low, ui.low, max), _intersect(s_high, ui.high, min)
    if low is None or high is None:
        return None  # an unbounded number needs UI bounds in _UI_OVERRIDES
    step = ui.step or _nice_step(low, high, kind)
    if low_open and low == s_low:
        low += step
    if high_open and high == s_high:
        high -= step
    is_int = kind in ("int", "int_range", "int_pair")
    cast = int if is_int else float
    low, high, step = cast(low), cast(high), cast(step)
    default = tuple(cast(v) for v in default) if isinstance(default, tuple) else cast(default)
    return ParamSpec(name, kind, default, low=low, high=high, step=step)


def _derive_transform(name: str, cls: type[A.BasicTransform], category: str) -> TransformSpec:
    signature = inspect.signature(cls.__init__).parameters
    fields = cls.InitSchema.model_fields
    excluded = _GLOBAL_EXCLUDED.keys() | _EXCLUDED.get(name, {}).keys()
    overrides = _UI_OVERRIDES.get(name, {})
    params = []
    for pname, parameter in signature.items():
        if pname == "self" or pname in excluded or pname not in fields:
            continue  # a signature name without a schema field is caught by the drift tests
        spec = _derive_param(pname, fields[pname], parameter.default, overrides.get(pname, _UI()))
        if spec is not None:  # an underivable one is missing from the catalogue: the drift tests name it
            params.append(spec)
    doc = (cls.__doc__ or name).strip().splitlines()[0].strip()
    default_p = signature["p"].default if "p" in signature else 1.0
    return TransformSpec(name, cls, category, doc, float(default_p), tuple(params))


TRANSFORMS: dict[str, TransformSpec] = {
    name: _derive_transform(name, cls, category) for name, (cls, category) in _CATALOGUE.items()
}


def get_transform_spec(name: str) -> TransformSpec:
    """The catalogued transform ``name``; raises ``PipelineError`` naming the valid transforms."""
    spec = TRANSFORMS.get(name)
    if spec is None:
        raise PipelineError(f"unknown transform '{name}'; choose one of: {', '.join(TRANSFORMS)}", transform=name)
    return spec


# --------------------------------------------------------------------------------------------------------------------
# Pipelines


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


_HEX_COLOUR = re.compile(r"#([0-9a-fA-F]{6})")


def _as_number(value: Any, integer: bool) -> float | int | None:
    """``value`` as a finite int/float, or None when it is not one (bools are not numbers here)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    if not math.isfinite(value):
        return None
    if integer:
        return int(value) if float(value).is_integer() else None
    return float(value)


def _check_number(spec: ParamSpec, value: Any, integer: bool) -> float | int:
    """One bounded number, or a ValueError whose text completes "<transform>.<param>: ..."."""
    number = _as_number(value, integer)
    if number is None:
        raise ValueError(f"expected {'an integer' if integer else 'a number'}, got {value!r}")
    if not spec.low <= number <= spec.high:
        raise ValueError(f"{number!r} is outside the allowed range [{spec.low}, {spec.high}]")
    if integer and spec.step and spec.step > 1 and (number - spec.low) % spec.step:
        raise ValueError(f"{number!r} is not one of {spec.low}, {spec.low + spec.step}, ... (step {spec.step})")
    return number


def _normalise_value(spec: ParamSpec, value: Any) -> Any:
    """The canonical value (tuples, Python scalars) for ``spec``, or a ValueError saying what is wrong."""
    kind = spec.kind
    if kind == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"expected true or false, got {value!r}")
        return bool(value)
    if kind == "choice":
        for choice in spec.choices:
            if value == choice and isinstance(value, bool) == isinstance(choice, bool):
                return choice
        raise ValueError(f"{value!r} is not one of {', '.join(map(repr, spec.choices))}")
    if kind == "colour":
        if isinstance(value, str) and _HEX_COLOUR.fullmatch(value):
            return tuple(int(value[i:i + 2], 16) for i in (1, 3, 5))
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise ValueError(f"expected an RGB triple like (0, 0, 0) or '#000000', got {value!r}")
        return tuple(_check_number(spec, v, integer=True) for v in value)
    if kind in ("float", "int"):
        return _check_number(spec, value, integer=kind == "int")
    if not isinstance(value, (list, tuple)) or len(value) != 2:
        raise ValueError(f"expected a pair (low, high), got {value!r}")
    pair = tuple(_check_number(spec, v, integer=kind != "range") for v in value)
    if kind != "int_pair" and pair[0] > pair[1]:
        raise ValueError(f"reversed range {pair!r}: the first value must not exceed the second")
    return pair


def _step_error(index: int, name: str, param: str | None, problem: str) -> PipelineError:
    where = f"{name}.{param}" if param else name
    one_line = " ".join(str(problem).split())
    return PipelineError(f"{where} (step {index + 1}): {one_line}", step=index, transform=name, param=param)


def validate_step(step: PipelineStep, index: int = 0) -> dict[str, Any]:
    """Every parameter of ``step`` (defaults filled in), canonical and checked against the catalogue.

    Raises:
        PipelineError: unknown transform or parameter, wrong type, out-of-bounds value, reversed range, bad ``p``.
    """
    spec = TRANSFORMS.get(step.transform)
    if spec is None:
        raise _step_error(index, str(step.transform), None,
                          f"unknown transform; choose one of: {', '.join(TRANSFORMS)}")
    p = _as_number(step.p, integer=False)
    if p is None or not 0.0 <= p <= 1.0:
        raise _step_error(index, spec.name, "p", f"the probability must be in [0, 1], got {step.p!r}")
    names = {param.name for param in spec.params}
    for unknown in sorted(set(step.params) - names, key=str):
        valid = ", ".join(sorted(names)) or "none"
        raise _step_error(index, spec.name, str(unknown), f"unknown parameter (editable: {valid})")
    values = spec.defaults() | dict(step.params)
    checked = {}
    for param in spec.params:
        try:
            checked[param.name] = _normalise_value(param, values[param.name])
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
        return spec.transform(**params, p=float(step.p), strict=True)
    except (ValueError, TypeError) as exc:  # pydantic errors reach us wrapped in ValueError
        param, message = _pydantic_problem(exc)
        raise _step_error(index, spec.name, param, message) from exc


def build_pipeline(pipeline: Pipeline) -> A.Compose:
    """A fresh ``A.Compose`` of the enabled steps, seeded with ``pipeline.seed``.

    Build one per use: a Compose carries RNG state, so sharing one between sessions breaks reproducibility.

    Raises:
        PipelineError: see ``validate_step``; also a bad seed or too many steps.
    """
    _check_seed(pipeline.seed)
    if len(pipeline.steps) > MAX_STEPS:
        raise PipelineError(f"a pipeline has at most {MAX_STEPS} steps, got {len(pipeline.steps)}")
    transforms = [_instantiate(i, step) for i, step in enumerate(pipeline.steps) if step.enabled]
    return A.Compose(transforms, seed=pipeline.seed, strict=True, save_applied_params=True)


def _check_seed(seed: Any) -> None:
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or not 0 <= seed < 2**32:
        raise PipelineError(f"the seed must be an integer in [0, 2**32), got {seed!r}")


CIFAR10_TRAIN_PIPELINE = Pipeline(
    steps=(
        PipelineStep("PadIfNeeded", {"min_height": 40, "min_width": 40}),
        PipelineStep("RandomCrop", {"height": 32, "width": 32}),
        PipelineStep("HorizontalFlip", p=0.5),
        PipelineStep("Affine", {"translate_percent": (-0.0625, 0.0625), "scale": (0.9, 1.1), "rotate": (-15.0, 15.0)},
                     p=0.5),
        PipelineStep("ColorJitter", {"brightness": (0.8, 1.2), "contrast": (0.8, 1.2), "saturation": (0.8, 1.2),
                                     "hue": (-0.05, 0.05)}, p=0.8),
        PipelineStep("CoarseDropout", {"num_holes_range": (1, 1), "hole_height_range": (0.25, 0.25),
                                       "hole_width_range": (0.25, 0.25)}, p=0.5),
    ),
    seed=0,
)
"""A typical CIFAR-10 training pipeline: pad-and-crop, flip, small affine, colour jitter, 8x8 cutout."""


# --------------------------------------------------------------------------------------------------------------------
# Grids


@dataclass(frozen=True)
class GridResult:
    """Augmented tiles of a grid, row-major.

    Attributes:
        tiles: ``uint8`` ``(rows*cols, h, w, 3)``. Tiles whose size changed (e.g. ``Affine(fit_output=True)``) are
            centred on a black canvas of the largest tile's size; pixels are never resampled.
        indices: the source image of each tile.
        applied: per tile, the transforms that fired and the parameters they drew (JSON-friendly; arrays above
            ``MAX_LISTED_ELEMENTS`` values are summarised as a string).
        tile_shapes: per tile, ``(h, w)`` before padding to the common size.
    """

    tiles: np.ndarray
    indices: tuple[int, ...]
    applied: tuple[tuple[dict[str, Any], ...], ...]
    tile_shapes: tuple[tuple[int, int], ...]
    mode: GridMode
    rows: int
    cols: int
    seed: int


def _jsonable(value: Any) -> Any:
    """Arrays, numpy scalars and tuples as JSON types; large arrays as a one-line summary."""
    if isinstance(value, np.ndarray):
        if value.size > MAX_LISTED_ELEMENTS:
            return f"<array {value.dtype} {tuple(value.shape)}>"
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _as_batch(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 from a batch or one ``(H, W, 3)`` / ``(H, W)`` image."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype != np.uint8 or images.shape[-1] != 3 or 0 in images.shape:
            raise InvalidImageError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
        return images
    return ensure_rgb_uint8(images)[None]


def _pick_indices(count: int, n_images: int, mode: GridMode, seed: int,
                  indices: Sequence[int] | None) -> tuple[int, ...]:
    wanted = count if mode == "many" else 1
    if indices is None:
        chosen = pick_images(np.arange(n_images), wanted, seed)
    else:
        chosen = [int(i) for i in indices]
        if len(chosen) != wanted:
            raise GridError(f"mode '{mode}' needs {wanted} image index(es) for this grid, got {len(chosen)}")
        bad = [i for i in chosen if not 0 <= i < n_images]
        if bad:
            raise GridError(f"image index {bad[0]} is out of range: there are {n_images} images (0..{n_images - 1})")
    return tuple(chosen * count if mode == "one" else chosen)


def pick_images(pool: Sequence[int] | np.ndarray, count: int, seed: int) -> list[int]:
    """``count`` image indices from ``pool``, drawn without replacement with a local generator seeded by ``seed``
    (cycled in order when the pool is smaller than ``count``). The global numpy RNG is never touched."""
    pool = np.asarray(pool, dtype=np.int64)
    if pool.size == 0:
        raise GridError("no images to choose from (is the class filter empty?)")
    if pool.size >= count:
        return np.random.default_rng(seed).choice(pool, size=count, replace=False).tolist()
    return np.resize(pool, count).tolist()


def _check_grid_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GridError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _pad_to(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (height - tile.shape[0]) // 2, (width - tile.shape[1]) // 2
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[top:top + tile.shape[0], left:left + tile.shape[1]] = tile
    return canvas


def augment_grid(
    images: np.ndarray,
    pipeline: Pipeline,
    *,
    mode: GridMode = "many",
    rows: int = 4,
    cols: int = 4,
    seed: int | None = None,
    indices: Sequence[int] | None = None,
) -> GridResult:
    """Augment a grid of tiles: "many" images with one draw each, or "one" image with ``rows*cols`` draws.

    Tile ``k`` is the ``k``-th call of a Compose built for this call, so the same (images, pipeline, seed, indices)
    always gives byte-identical tiles, whatever other threads or sessions do.

    Args:
        images: ``uint8`` RGB ``(N, H, W, 3)``, or one ``(H, W, 3)`` image.
        pipeline: the steps; ``pipeline.seed`` unless ``seed`` is given.
        mode: "many" (tile k shows image ``indices[k]``) or "one" (every tile shows ``indices[0]``).
        rows, cols: grid size, 1..16 each.
        seed: overrides ``pipeline.seed`` (a "reroll" without editing the pipeline).
        indices: source images; by default drawn without replacement with ``np.random.default_rng(seed)``
            (cycled in order when there are fewer images than tiles).

    Raises:
        GridError: bad mode, rows/cols or indices, or more than ``MAX_GRID_PIXELS`` input pixels.
        PipelineError: an invalid pipeline, or a transform that fails on these images (e.g. a crop larger
            than the image).
        InvalidImageError: ``images`` is not uint8 RGB.
    """
    if mode not in ("many", "one"):
        raise GridError(f"mode must be 'many' or 'one', got {mode!r}")
    _check_grid_int("rows", rows, 1, MAX_GRID_SIDE)
    _check_grid_int("cols", cols, 1, MAX_GRID_SIDE)
    batch = _as_batch(images)
    count = rows * cols
    height, width = batch.shape[1:3]
    if count * height * width > MAX_GRID_PIXELS:
        raise GridError(f"a {rows}x{cols} grid of {width}x{height} images is too large; use fewer tiles or a "
                        f"smaller image (at most {MAX_GRID_PIXELS:,} pixels in all)")
    effective_seed = pipeline.seed if seed is None else seed
    _check_seed(effective_seed)
    compose = build_pipeline(Pipeline(pipeline.steps, effective_seed))
    chosen = _pick_indices(count, len(batch), mode, effective_seed, indices)

    tiles, applied = [], []
    for index in chosen:
        image = batch[index]
        try:
            result = compose(image=image)
        except Exception as exc:  # re-raised typed: any transform may fail on an unusual image (size, dtype)
            raise PipelineError(f"the pipeline failed on a {image.shape[1]}x{image.shape[0]} image: "
                                f"{' '.join(str(exc).split())}") from exc
        tile = result["image"]
        if tile.dtype != np.uint8 or tile.ndim != 3 or tile.shape[2] != 3:
            raise PipelineError(f"the pipeline returned {tile.dtype} {tile.shape}, not a uint8 RGB image")
        tiles.append(tile)
        applied.append(tuple({"transform": name, "params": _jsonable(params)}
                             for name, params in result.get("applied_transforms", ())))
    shapes = tuple((int(t.shape[0]), int(t.shape[1])) for t in tiles)
    out_h, out_w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    stacked = np.stack([t if t.shape[:2] == (out_h, out_w) else _pad_to(t, out_h, out_w) for t in tiles])
    return GridResult(stacked, chosen, tuple(applied), shapes, mode, rows, cols, int(effective_seed))


def tile_grid(tiles: np.ndarray, rows: int, cols: int, *, scale: int = 1, pad: int = 2,
              fill: int = 255) -> np.ndarray:
    """One ``uint8`` image of ``rows x cols`` tiles, each upscaled ``scale`` times by pixel repetition.

    Nearest-neighbour keeps 32x32 tiles crisp (no interpolation blur); ``pad`` pixels of grey level ``fill``
    separate the tiles and frame the grid.

    Raises:
        GridError: tiles not ``(rows*cols, h, w, 3)`` uint8, bad scale/pad, or a result above ``MAX_GRID_PIXELS``.
    """
    if not isinstance(tiles, np.ndarray) or tiles.dtype != np.uint8 or tiles.ndim != 4 or tiles.shape[3] != 3:
        raise GridError(f"tiles must be uint8 (N, H, W, 3), got {getattr(tiles, 'dtype', type(tiles))} "
                        f"{getattr(tiles, 'shape', '')}")
    if tiles.shape[0] != rows * cols:
        raise GridError(f"a {rows}x{cols} grid needs {rows * cols} tiles, got {tiles.shape[0]}")
    _check_grid_int("scale", scale, 1, 16)
    _check_grid_int("pad", pad, 0, 32)
    _check_grid_int("fill", fill, 0, 255)
    tile_h, tile_w = tiles.shape[1] * scale, tiles.shape[2] * scale
    out_h, out_w = rows * (tile_h + pad) + pad, cols * (tile_w + pad) + pad
    if out_h * out_w > MAX_GRID_PIXELS:
        raise GridError(f"the grid image would be {out_w}x{out_h}; lower the scale or the number of tiles")
    canvas = np.full((out_h, out_w, 3), fill, np.uint8)
    big = tiles.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else tiles
    for k in range(rows * cols):
        top, left = pad + (k // cols) * (tile_h + pad), pad + (k % cols) * (tile_w + pad)
        canvas[top:top + tile_h, left:left + tile_w] = big[k]
    return canvas


# --------------------------------------------------------------------------------------------------------------------
# Export and import


def _plain(value: Any) -> Any:
    """JSON/YAML-safe plain data (tuples -> lists, numpy -> Python)."""
    return json.loads(json.dumps(value, default=_jsonable))


def _editor_state(pipeline: Pipeline) -> dict[str, Any]:
    steps = [{"transform": step.transform, "enabled": bool(step.enabled), "p": float(step.p),
              "params": validate_step(step, i)} for i, step in enumerate(pipeline.steps)]
    return {"format": EXPORT_FORMAT, "seed": int(pipeline.seed), "steps": steps}


def pipeline_to_dict(pipeline: Pipeline) -> dict[str, Any]:
    """``A.to_dict`` of the built Compose, plus our editor state (seed, disabled steps) under ``EXPORT_KEY``.

    ``A.from_dict`` / ``A.load`` read the result as is (they ignore ``EXPORT_KEY``; Albumentations does not
    serialise the seed, so pass it to ``set_random_seed``); ``pipeline_from_dict`` restores the editor.
    """
    buffer = io.StringIO()
    A.save(build_pipeline(pipeline), buffer, data_format="json")  # Albumentations' own serialisation (enums too)
    document = json.loads(buffer.getvalue())
    document[EXPORT_KEY] = _plain(_editor_state(pipeline))
    return document


def pipeline_to_json(pipeline: Pipeline) -> str:
    """The pipeline as JSON (see ``pipeline_to_dict``), loadable with ``A.load(path, data_format="json")``."""
    return json.dumps(pipeline_to_dict(pipeline), indent=2)


def pipeline_to_yaml(pipeline: Pipeline) -> str:
    """The pipeline as YAML (see ``pipeline_to_dict``), loadable with ``A.load(path, data_format="yaml")``."""
    return yaml.safe_dump(pipeline_to_dict(pipeline), sort_keys=False, default_flow_style=False)


def pipeline_to_python(pipeline: Pipeline) -> str:
    """A runnable snippet that rebuilds the same Compose (same seed, every parameter explicit).

    Disabled steps are written as comments so that they are not lost.
    """
    _check_seed(pipeline.seed)
    lines = [f'"""Augmentation pipeline exported from the CAM Explorer Augmentation Lab (albumentations '
             f'{A.__version__})."""', "import albumentations as A", "", "transform = A.Compose(", "    ["]
    for i, step in enumerate(pipeline.steps):
        params = validate_step(step, i) | {"p": float(step.p)}
        call = f"A.{step.transform}({', '.join(f'{k}={v!r}' for k, v in params.items())}),"
        lines.append(f"        {call}" if step.enabled else f"        # disabled: {call}")
    lines += ["    ],", f"    seed={int(pipeline.seed)},", "    strict=True,", "    save_applied_params=True,", ")", ""]
    return "\n".join(lines)


def pipeline_from_dict(document: Any) -> Pipeline:
    """The editor state of an exported pipeline, checked against the catalogue.

    When the file also holds an Albumentations section written by this Albumentations version, it must agree with
    the editor state (a file edited by hand in one place only is refused rather than half-applied).

    Raises:
        PipelineError: not an export of the lab, an unknown transform or parameter, or an invalid value.
    """
    if not isinstance(document, dict) or not isinstance(document.get(EXPORT_KEY), dict):
        raise PipelineError(f"this is not an Augmentation Lab export: the '{EXPORT_KEY}' section is missing "
                            "(a plain Albumentations file loads with albumentations.load instead)")
    state = document[EXPORT_KEY]
    if state.get("format") != EXPORT_FORMAT:
        raise PipelineError(f"unsupported export format {state.get('format')!r}; expected {EXPORT_FORMAT}")
    steps_data = state.get("steps")
    if not isinstance(steps_data, list):
        raise PipelineError("the export's 'steps' must be a list")
    steps = []
    for i, item in enumerate(steps_data):
        if not isinstance(item, dict) or not isinstance(item.get("transform"), str):
            raise PipelineError(f"step {i + 1} of the export is not a {{'transform': ..., 'params': ...}} object",
                                step=i)
        params = item.get("params", {})
        if not isinstance(params, dict):
            raise _step_error(i, item["transform"], None, "'params' must be an object")
        steps.append(PipelineStep(item["transform"], params, p=item.get("p", 1.0), enabled=item.get("enabled", True)))
        if not isinstance(steps[-1].enabled, bool):
            raise _step_error(i, item["transform"], "enabled", "must be true or false")
    pipeline = Pipeline(tuple(steps), state.get("seed", 0))
    # normalise (lists -> tuples) through validation so that the restored pipeline equals the exported one
    restored = Pipeline(tuple(PipelineStep(s.transform, validate_step(s, i), s.p, s.enabled)
                              for i, s in enumerate(pipeline.steps)), pipeline.seed)
    rebuilt = pipeline_to_dict(restored)  # also validates the seed and builds every enabled step
    if ("transform" in document and document.get("__version__") == A.__version__
            and _plain(document["transform"]) != rebuilt["transform"]):
        raise PipelineError("the file's Albumentations 'transform' section does not match its "
                            f"'{EXPORT_KEY}' editor state (edited by hand?); edit the editor state or re-export")
    return restored


def _parse(text: str, loader: Any, what: str) -> Any:
    if not isinstance(text, str):
        raise PipelineError(f"expected {what} text, got {type(text).__name__}")
    if len(text) > MAX_IMPORT_CHARS:
        raise PipelineError(f"the {what} is {len(text):,} characters; an exported pipeline is far smaller")
    try:
        return loader(text)
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError
        raise PipelineError(f"not valid {what}: {' '.join(str(exc).split())}") from exc


def pipeline_from_json(text: str) -> Pipeline:
    """Import ``pipeline_to_json`` output. Raises ``PipelineError`` on bad JSON or an invalid pipeline."""
    return pipeline_from_dict(_parse(text, json.loads, "JSON"))


def pipeline_from_yaml(text: str) -> Pipeline:
    """Import ``pipeline_to_yaml`` output (safe YAML only). Raises ``PipelineError`` like ``pipeline_from_json``."""
    return pipeline_from_dict(_parse(text, yaml.safe_load, "YAML"))
