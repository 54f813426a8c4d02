"""The largest image each step of a pipeline can make, from what the step declares.

Each parameter of a step is in bounds on its own, but steps compound: ten ``RandomScale(scale_limit=(1, 1))`` steps
turn a 32x32 image into a 32768x32768 one. ``output_bounds`` follows the image size through the steps from what
each step *declares* (its target size, padding, scale range, ``fit_output``...), read from the built transform
itself, so every step's output is bounded before any pixel is made; ``check_output_sizes`` refuses a step that could
make more than ``MAX_STEP_PIXELS``. ``SIZE_RULES`` names every catalogued transform that can change the size;
the others keep it (``KEEPS_SIZE``); tests/test_augment.py checks both against Albumentations' own outputs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import albumentations as A

from camlib.augment.catalogue import TRANSFORMS
from camlib.contracts import require_int
from camlib.errors import PipelineError

MAX_STEP_PIXELS = 2**24  # pixels of any image a step may make (4096x4096; 48 MiB as uint8 RGB)


@dataclass(frozen=True)
class SizeBox:
    """Every size an image can have at one point of a pipeline: ``h_lo <= height <= h_hi``, ``w_lo <= width <=
    w_hi`` (pixels, each >= 1)."""

    h_lo: int
    h_hi: int
    w_lo: int
    w_hi: int

    @classmethod
    def exact(cls, height: int, width: int) -> SizeBox:
        return cls(height, height, width, width)

    @property
    def max_pixels(self) -> int:
        return self.h_hi * self.w_hi

    def union(self, other: SizeBox) -> SizeBox:
        h_lo, w_lo = min(self.h_lo, other.h_lo), min(self.w_lo, other.w_lo)
        return SizeBox(h_lo, max(self.h_hi, other.h_hi), w_lo, max(self.w_hi, other.w_hi))

    def swapped(self) -> SizeBox:
        return SizeBox(self.w_lo, self.w_hi, self.h_lo, self.h_hi)


def _box(h_lo: float, h_hi: float, w_lo: float, w_hi: float) -> SizeBox:
    """A box from real bounds: lows rounded down, highs up (Albumentations rounds either way), every side >= 1."""
    return SizeBox(max(1, math.floor(h_lo)), max(1, math.ceil(h_hi)), max(1, math.floor(w_lo)), max(1, math.ceil(w_hi)))


SizeRule = Callable[[Any, SizeBox], "SizeBox | str"]  # (built transform, input box) -> output box, or why not


def _fixed(height: int, width: int) -> SizeBox:
    return SizeBox.exact(int(height), int(width))


def _pad_if_needed(t: Any, box: SizeBox) -> SizeBox:
    return SizeBox(
        max(box.h_lo, t.min_height), max(box.h_hi, t.min_height), max(box.w_lo, t.min_width), max(box.w_hi, t.min_width)
    )


def _pad(t: Any, box: SizeBox) -> SizeBox:
    padding = t.padding
    if isinstance(padding, int):
        left = top = right = bottom = padding
    elif len(padding) == 2:  # (pad_x, pad_y)
        left = right = padding[0]
        top = bottom = padding[1]
    else:  # (left, top, right, bottom)
        left, top, right, bottom = padding
    return SizeBox(box.h_lo + top + bottom, box.h_hi + top + bottom, box.w_lo + left + right, box.w_hi + left + right)


def _crop_and_pad(t: Any, box: SizeBox) -> SizeBox:
    if t.keep_size:
        return box
    low, high = t.percent if isinstance(t.percent, Sequence) else (t.percent, t.percent)
    grow, shrink = max(high, 0.0), max(-low, 0.0)  # per side, as a fraction of the side
    h_lo, h_hi = box.h_lo * (1 - 2 * shrink) - 2, box.h_hi * (1 + 2 * grow) + 2
    return _box(h_lo, h_hi, box.w_lo * (1 - 2 * shrink) - 2, box.w_hi * (1 + 2 * grow) + 2)


def _smaller(t: Any, box: SizeBox) -> SizeBox:
    """A crop that keeps at most the whole image and may leave 1 px (Rotate(crop_border=True) on a thin image)."""
    return SizeBox(1, box.h_hi, 1, box.w_hi)


def _crop_from_borders(t: Any, box: SizeBox) -> SizeBox:
    # up to crop_left of the width from the left and crop_right from the right; Albumentations keeps at least 1 px
    width_kept, height_kept = 1.0 - t.crop_left - t.crop_right, 1.0 - t.crop_top - t.crop_bottom
    return _box(box.h_lo * height_kept - 1, box.h_hi, box.w_lo * width_kept - 1, box.w_hi)


def _scaled_to(pick: Callable[[float, float], float]) -> Callable[[Any, SizeBox], SizeBox]:
    """The rule of a resize that scales ``pick(h, w)`` to ``max_size``: each side times ``M / pick(h, w)``, extreme
    for its own extreme and the other side's opposite one (LongestMaxSize: ``max``; SmallestMaxSize: ``min``, where a
    1-px-wide strip grows M times in length)."""

    def rule(t: Any, box: SizeBox) -> SizeBox:
        m = t.max_size
        return _box(
            box.h_lo * m / pick(box.h_lo, box.w_hi),
            box.h_hi * m / pick(box.h_hi, box.w_lo),
            box.w_lo * m / pick(box.w_lo, box.h_hi),
            box.w_hi * m / pick(box.w_hi, box.h_lo),
        )

    return rule


_longest_max_size = _scaled_to(max)
_smallest_max_size = _scaled_to(min)


def _random_scale(t: Any, box: SizeBox) -> SizeBox:
    low, high = 1.0 + t.scale_limit[0], 1.0 + t.scale_limit[1]  # Albumentations biases the range by 1
    return _box(box.h_lo * low, box.h_hi * high, box.w_lo * low, box.w_hi * high)


def _affine(t: Any, box: SizeBox) -> SizeBox | str:
    if not t.fit_output:
        return box
    # fit_output: the bounding box of the image under the linear map A = rotation . shear . scale. Each side of it is
    # at most ||A||_2 times the diagonal, and ||A||_2 <= max scale * (1 + tan(max |shear|)) (rotations keep norms)
    scale = max(abs(v) for axis in t.scale.values() for v in axis)
    shear = max(abs(v) for axis in t.shear.values() for v in axis)
    if shear >= 89.0:
        return "a shear near 90 degrees has no bounded output"
    norm = scale * (1.0 + math.tan(math.radians(shear)))
    side = norm * math.hypot(box.h_hi, box.w_hi) + 2
    return _box(1, side, 1, side)


def _perspective(t: Any, box: SizeBox) -> SizeBox | str:
    if t.fit_output:  # the catalogue leaves it off
        return "fit_output expands a near-degenerate quadrilateral without bound"
    if min(box.h_lo, box.w_lo) < 2:  # Albumentations 2.0.8 never returns on a 1-px-high or -wide image
        return f"it needs an image of at least 2x2 px, and this one can be {box.w_lo}x{box.h_lo} here"
    if t.keep_size:
        return box
    side = math.hypot(box.h_hi, box.w_hi) + 2  # each side of the warped quadrilateral lies inside the image
    return _box(1, side, 1, side)


SIZE_RULES: dict[str, SizeRule] = {
    "PadIfNeeded": _pad_if_needed,
    "RandomCrop": lambda t, box: _fixed(t.height, t.width),
    "RandomResizedCrop": lambda t, box: _fixed(*t.size),
    "CenterCrop": lambda t, box: _fixed(t.height, t.width),
    "Crop": lambda t, box: _fixed(t.y_max - t.y_min, t.x_max - t.x_min),
    "CropAndPad": _crop_and_pad,
    "Pad": _pad,
    "RandomCropFromBorders": _crop_from_borders,
    "RandomSizedCrop": lambda t, box: _fixed(*t.size),
    "Resize": lambda t, box: _fixed(t.height, t.width),
    "LongestMaxSize": _longest_max_size,
    "SmallestMaxSize": _smallest_max_size,
    "RandomScale": _random_scale,
    "Transpose": lambda t, box: box.swapped(),
    "RandomRotate90": lambda t, box: box.union(box.swapped()),
    "D4": lambda t, box: box.union(box.swapped()),
    "SquareSymmetry": lambda t, box: box.union(box.swapped()),
    "Affine": _affine,
    "Rotate": lambda t, box: _smaller(t, box) if t.crop_border else box,
    "Perspective": _perspective,
}
"""Every catalogued transform that can change the image size, with the largest output its parameters declare."""

KEEPS_SIZE: frozenset[str] = frozenset(TRANSFORMS) - SIZE_RULES.keys()
"""The catalogued transforms whose output has the input's size whatever their parameters."""


def output_bounds(compose: A.Compose, height: int, width: int) -> tuple[SizeBox, ...]:
    """The sizes the image can have after each transform of ``compose`` (``build_pipeline``'s result) applied to a
    ``height x width`` image, from the transforms' declared parameters; a step with ``p < 1`` may also pass the
    image unchanged. Pure arithmetic: nothing is augmented.

    Raises:
        PipelineError: ``compose`` is not an ``A.Compose``, holds a transform with no size rule, or a step whose
            output is unbounded or that cannot run on the sizes it may get; ``height``/``width`` below 1.
    """
    if not isinstance(compose, A.Compose):
        raise PipelineError(
            f"compose must be an albumentations Compose (see build_pipeline), got {type(compose).__name__}"
        )
    require_int(height, "height", minimum=1, error=PipelineError)
    require_int(width, "width", minimum=1, error=PipelineError)
    box = SizeBox.exact(int(height), int(width))
    boxes = []
    for k, transform in enumerate(compose.transforms):
        name = type(transform).__name__
        if name in SIZE_RULES:
            out = SIZE_RULES[name](transform, box)
            if isinstance(out, str):
                raise PipelineError(f"{name} (enabled step {k + 1}) is refused: {out}", transform=name)
        elif name in KEEPS_SIZE or name == "Lambda":  # Lambda: trace_tile's recorder, which returns its input
            out = box
        else:
            raise PipelineError(f"{name} is not a transform of the Lab's catalogue", transform=name)
        box = out if transform.p >= 1.0 else out.union(box)
        boxes.append(box)
    return tuple(boxes)


def check_output_sizes(
    compose: A.Compose, height: int, width: int, *, max_pixels: int = MAX_STEP_PIXELS
) -> tuple[SizeBox, ...]:
    """``output_bounds``, refusing a step that could make an image of more than ``max_pixels`` pixels (or than the
    input, when the input is already larger). Called before a pipeline touches an image, so that no step's output
    can exceed the cap however its draws fall.

    Raises:
        PipelineError: naming the first such step (its position among the enabled steps), the size it can reach
            and the cap; and what ``output_bounds`` raises.
    """
    cap = max(int(max_pixels), int(height) * int(width))
    boxes = output_bounds(compose, height, width)
    for k, box in enumerate(boxes):
        if box.max_pixels > cap:
            name = type(compose.transforms[k]).__name__
            raise PipelineError(
                f"{name} (enabled step {k + 1}) can make a {box.w_hi:,}x{box.h_hi:,} image from this {width}x{height} "
                f"one: at most {cap:,} pixels per step (lower the sizes or scales, or remove a step)",
                transform=name,
            )
    return boxes
