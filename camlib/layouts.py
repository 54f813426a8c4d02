"""Feature layouts: how a layer's output maps onto a ``(B, C, h, w)`` feature map, inferred from shapes.

CNN layers output ``(B, C, h, w)`` ("NCHW"). ConvNeXt block internals and Swin stages output channels-last
``(B, h, w, C)`` ("NHWC"); ViT/DeiT blocks output tokens ``(B, N, C)`` whose first ``k`` tokens are not spatial (the
class token; DeiT's distillation token; register tokens) and whose other ``h * w`` tokens are a row-major patch grid
("tokens"). The layout is inferred from the output's shape and the model's input size ``(H, W)``, never from module
names:

- a spatial grid ``(h, w)`` fits the input when one stride ``s`` explains both sides up to the rounding of a padded or
  pooled convolution: ``|h - H / s| < 1`` and ``|w - W / s| < 1``; when a 4-D output fits both as ``(C, h, w)`` and
  as ``(h, w, C)``, it is ambiguous (e.g. ``(B, 7, 7, 7)``), except on a square input where exactly one reading is a
  square grid (a square input gives an exactly square grid);
- a token grid must come from a strided convolution stack (a patch embedding, overlapping or not): integers ``S``
  and ``|off| <= S`` with ``floor((H + off) / S) = h`` and ``floor((W + off) / S) = w`` (``conv_grid_fits``), and
  ``N - k = h * w`` for ``0 <= k <= MAX_PREFIX_TOKENS`` leading tokens;
- an output whose batch is not the input's (windows or patches folded into the batch) is refused
  (``require_batch``).

When several readings fit the shape (``(B, 7, 7, 7)``; 9 tokens at 80 px: a 3x3 grid, or 5 leading tokens and 2x2),
nothing is guessed. ``confirm_layout`` keeps the readings that also read the layer's output at a second input size
with one geometry, then, of several, the one whose grid a convolution of the model produced; ``camlib.layers`` runs
those probes. What is still ambiguous is refused: ``compute_cams`` then needs an explicit
``layouts={layer: "nchw" | "nhwc" | "tokens:K"}``.
Reshaping follows pytorch-grad-cam's ``reshape_transform`` examples (``tutorials/vision_transformers.md``): drop the
leading tokens, ``reshape(B, h, w, C)``, move channels first.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import torch

from camlib.contracts import require_int, require_size, require_tensor
from camlib.errors import InputError, LayerError

MAX_PREFIX_TOKENS = 17  # a class token plus up to 16 registers (Darcet et al., ICLR 2024, use 0-16 registers)
LAYOUT_KINDS = ("nchw", "nhwc", "tokens", "ambiguous")


@dataclass(frozen=True)
class Layout:
    """How to read a layer's output as a ``(B, C, h, w)`` feature map.

    Attributes:
        kind: "nchw", "nhwc", "tokens" or "ambiguous" (then ``reason`` says why and the other fields are 0).
        channels, height, width: the feature map's ``C``, ``h`` and ``w``.
        prefix_tokens: for "tokens", the number of leading non-spatial tokens dropped before reshaping.
        reason: for "ambiguous", the readings that fit.
    """

    kind: str
    channels: int = 0
    height: int = 0
    width: int = 0
    prefix_tokens: int = 0
    reason: str = ""

    @property
    def label(self) -> str:
        """A short human-readable description, e.g. ``"channels-last (B, H, W, C)"``."""
        if self.kind == "nchw":
            return "channels-first (B, C, H, W)"
        if self.kind == "nhwc":
            return "channels-last (B, H, W, C)"
        if self.kind == "tokens":
            lead = f"{self.prefix_tokens} leading token{'s' if self.prefix_tokens != 1 else ''} dropped"
            return f"tokens (B, N, C), {lead}"
        return f"ambiguous: {self.reason}"

    @property
    def spec(self) -> str:
        """The explicit form ``compute_cams(layouts=...)`` accepts: "nchw", "nhwc" or "tokens:K"."""
        return f"tokens:{self.prefix_tokens}" if self.kind == "tokens" else self.kind


def grid_fits(height: int, width: int, input_size: tuple[int, int]) -> bool:
    """Whether one stride explains a ``height x width`` grid on an input of ``input_size = (H, W)`` px.

    True when some stride ``s > 0`` gives ``|h - H/s| < 1`` and ``|w - W/s| < 1`` (the rounding of padded or pooled
    convolutions), i.e. the open intervals ``(H/(h+1), H/(h-1))`` and ``(W/(w+1), W/(w-1))`` of strides overlap.
    """
    height, width = require_int(height, "height"), require_int(width, "width")
    in_h, in_w = require_size(input_size, "input_size")
    if height < 1 or width < 1:
        return False
    (low_h, high_h), (low_w, high_w) = _stride_range(height, in_h), _stride_range(width, in_w)
    return max(low_h, low_w) < min(high_h, high_w)


def _stride_range(n: int, size: int) -> tuple[float, float]:
    """The open interval of strides ``s`` with ``|n - size / s| < 1``."""
    return size / (n + 1), (size / (n - 1) if n > 1 else math.inf)


def _geometry_offsets(sides: tuple[tuple[int, int], ...], stride: int) -> tuple[int, int]:
    """The integer offsets ``off`` with ``|off| <= stride`` and ``floor((X + off) / stride) = n`` for every
    ``(n, X)`` of ``sides``, as an inclusive ``(low, high)`` range (empty when ``low > high``)."""
    low, high = -stride, stride
    for n, size in sides:
        low, high = max(low, n * stride - size), min(high, (n + 1) * stride - size - 1)
    return low, high


def conv_grid_fits(sides: tuple[tuple[int, int], ...]) -> bool:
    """Whether one strided convolution stack gives every ``(n, X)`` of ``sides``: grid side ``n`` from input side ``X``.

    True when some integer stride ``S >= 1`` and integer offset ``|off| <= S`` give ``floor((X + off) / S) = n`` for
    every pair. That is PyTorch's ``Conv2d`` output size ``floor((X + 2 p - d (k - 1) - 1) / s) + 1`` (the
    ``torch.nn.Conv2d`` docs) with ``off = 2 p - d (k - 1) - 1 + s``, and nested floors of a stack fold into one:
    ``floor((floor((X + a) / s) + b) / t) = floor((X + a + s b) / (s t))``. A patch embedding (kernel = stride, no
    padding) has ``off = 0``; an overlapping one (PVT's 7/4/3: ``off = 3``; a 16/8 valid conv, 224 px -> 27:
    ``off = -8``) and a "same"-padded one (``off = s - 1``) fit too. The offset bound keeps the reading a convolution
    geometry rather than any pair of numbers.
    """
    if any(n < 1 or size < 1 for n, size in sides):
        return False
    # floor((X + off) / S) = n with |off| <= S needs (X + 1) / (n + 2) <= S <= X / (n - 1).
    low = max(-(-(size + 1) // (n + 2)) for n, size in sides)
    # n = 1 allows any larger stride; past the largest side plus one, off = S fits every such side.
    high = min((size // (n - 1) if n > 1 else max(x for _, x in sides) + 1) for n, size in sides)
    for stride in range(max(low, 1), high + 1):
        first, last = _geometry_offsets(sides, stride)
        if first <= last:
            return True
    return False


def _token_readings(tokens: int, channels: int, input_size: tuple[int, int]) -> list[Layout]:
    """Every ``tokens:K`` reading of ``tokens`` tokens: ``tokens - K = h * w`` (at least 2 spatial tokens, as a lone
    token is a pooled or class token) for ``0 <= K <= MAX_PREFIX_TOKENS``, with ``(h, w)`` a convolution grid of the
    input (``conv_grid_fits``). A grid side never exceeds the input side plus 2, which bounds the search by the input
    size, not by the token count."""
    in_h, in_w = input_size
    found = []
    for prefix in range(0, min(MAX_PREFIX_TOKENS, tokens - 2) + 1):
        spatial = tokens - prefix
        for h in range(1, min(spatial, in_h + 2) + 1):
            w = spatial // h
            if spatial % h == 0 and w <= in_w + 2 and conv_grid_fits(((h, in_h), (w, in_w))):
                found.append(Layout("tokens", channels=channels, height=h, width=w, prefix_tokens=prefix))
    return found


def layout_readings(shape: tuple[int, ...], input_size: tuple[int, int]) -> list[Layout]:
    """Every layout that explains an output ``shape`` (batch dimension included) for an ``(H, W)`` input by itself.

    4-D: channels-first and channels-last where ``grid_fits``; on a square input, when both fit and exactly one is a
    square grid, only that one (a square input gives an exactly square grid). 3-D: the token readings of
    ``conv_grid_fits``. Other ranks: none. Several readings mean the shape alone cannot tell them apart.

    Raises:
        InputError: ``shape`` is not a sequence of non-negative integers, or ``input_size`` not two positive ones.
    """
    shape = _require_shape(shape)
    input_size = require_size(input_size, "input_size")
    if len(shape) == 4:
        _, d1, d2, d3 = (int(s) for s in shape)
        nchw = grid_fits(d2, d3, input_size)
        nhwc = grid_fits(d1, d2, input_size)
        if nchw and nhwc and input_size[0] == input_size[1] and (d2 == d3) != (d1 == d2):
            nchw, nhwc = d2 == d3, d1 == d2
        readings = [Layout("nchw", channels=d1, height=d2, width=d3)] if nchw else []
        return readings + ([Layout("nhwc", channels=d3, height=d1, width=d2)] if nhwc else [])
    if len(shape) == 3:
        return _token_readings(int(shape[1]), int(shape[2]), input_size)
    return []


def _describe(reading: Layout) -> str:
    if reading.kind == "tokens":
        return f"{reading.prefix_tokens} leading + {reading.height}x{reading.width}"
    return {"nchw": "C x H x W", "nhwc": "H x W x C"}[reading.kind]


def _verdict(shape: tuple[int, ...], readings: list[Layout], why: str = "") -> Layout | None:
    if not readings:
        return None
    if len(readings) == 1:
        return readings[0]
    what = f"{shape[1]} tokens" if len(shape) == 3 else " x ".join(str(d) for d in shape[1:])
    reason = f"{what} read as {', '.join(_describe(r) for r in readings)}"
    return Layout("ambiguous", reason=reason + (f"; {why}" if why else ""))


def _require_shape(shape: object) -> tuple[int, ...]:
    if isinstance(shape, torch.Size):
        return tuple(shape)
    if (
        not isinstance(shape, tuple | list)
        or not shape
        or any(isinstance(d, bool) or not isinstance(d, int | np.integer) or d < 0 for d in shape)
    ):
        raise InputError(f"shape must be a tuple of non-negative integers such as (1, 768, 14, 14), got {shape!r}")
    return tuple(int(d) for d in shape)


def infer_layout(shape: tuple[int, ...], input_size: tuple[int, int]) -> Layout | None:
    """Infer the layout of a layer output of ``shape`` (batch dimension included) for an ``(H, W)`` input.

    Args:
        shape: the output's shape, ``(B, C, h, w)``, ``(B, h, w, C)`` or ``(B, N, C)`` (non-negative integers).
        input_size: the model input's ``(H, W)`` in pixels.

    Returns:
        The one reading of ``layout_readings``; "ambiguous" (its ``reason`` listing the readings) when several fit,
        which ``confirm_layout`` may resolve with a second probe; None when the output is not a spatial feature map
        at all (other ranks, or tokens that form no grid, e.g. a pooled ``(B, C)`` or a ``(B, 1, C)`` class token).

    Raises:
        InputError: ``shape`` is not a sequence of non-negative integers, or ``input_size`` not two positive ones.
    """
    shape = _require_shape(shape)
    return _verdict(shape, layout_readings(shape, input_size))


def _consistent(reading: Layout, shape: tuple[int, ...], size: tuple[int, int], first: tuple[int, int]) -> bool:
    """Whether ``reading`` (made at input size ``first``) reads ``shape`` at input size ``size`` the same way: the same
    kind, channels and leading tokens, and one geometry for both grids (one stride for 4-D outputs as ``grid_fits``
    has it, one convolution geometry for tokens as ``conv_grid_fits`` has it)."""
    for other in layout_readings(shape, size):
        if (other.kind, other.channels, other.prefix_tokens) != (reading.kind, reading.channels, reading.prefix_tokens):
            continue
        sides = ((reading.height, first[0]), (reading.width, first[1]), (other.height, size[0]), (other.width, size[1]))
        if reading.kind == "tokens" and conv_grid_fits(sides):
            return True
        lows, highs = zip(*(_stride_range(n, x) for n, x in sides))
        if reading.kind != "tokens" and max(lows) < min(highs):
            return True
    return False


def confirm_layout(
    shape: tuple[int, ...],
    input_size: tuple[int, int],
    *,
    second: tuple[tuple[int, ...], tuple[int, int]] | None = None,
    anchors: frozenset[tuple[int, int]] = frozenset(),
    why: str = "",
) -> Layout | None:
    """``infer_layout`` with more evidence from the model than the shape: a second probe and convolution grids.

    Args:
        shape, input_size: the layer's output shape and the input size, as for ``infer_layout``.
        second: the same layer's output shape at another input size, and that size (None: the model gave none).
            A reading stays only if it reads the second shape with the same kind, channels and leading tokens and
            one geometry explains both grids (the token count grows with the input as a grid does, e.g. 3x3 -> 4x4
            for a 3x3 grid at 80 -> 112 px, while 5 leading tokens plus 2x2 would need 11 tokens to be a grid). A
            second shape with another batch means windows folded into the batch there (DaViT's 6x6 grid at 96 px is
            one padded 7x7 window, four at 128 px): then no reading is a grid.
        anchors: ``(h, w)`` grids that ``Conv2d`` and 2-D pooling layers (channels-first by definition) produced
            before this layer at ``input_size``; when several readings are left and exactly one has such a grid,
            it is the one (a ViT's tokens come from its patch embedding's grid).
        why: what the caller knows about missing evidence (e.g. the model refused the second size), added to the
            reason when the layout stays ambiguous.

    Returns:
        The one reading left; "ambiguous" with the readings left; None when no reading is left (nothing fits, the
        batch differs at the second size, or the second probe contradicts every reading).

    Raises:
        InputError: a malformed shape or size.
    """
    shape = _require_shape(shape)
    input_size = require_size(input_size, "input_size")
    readings = layout_readings(shape, input_size)
    if len(readings) > 1 and second is not None:
        other_shape, other_size = _require_shape(second[0]), require_size(second[1], "second input size")
        if other_shape[0] != shape[0]:
            return None  # windows folded into the batch at the other size: one padded window here, not a grid
        readings = [r for r in readings if _consistent(r, other_shape, other_size, input_size)]
    if len(readings) > 1:
        anchored = [r for r in readings if (r.height, r.width) in anchors]
        readings = anchored if len(anchored) == 1 else readings
    return _verdict(shape, readings, why)


def require_batch(name: str, shape: tuple[int, ...], batch: int) -> None:
    """Refuse a layer output whose batch dimension is not the input's.

    Window attention (Swin, MaxViT's window and grid attention, DaViT) and MobileViT's transformers fold windows or
    patches into the batch: ``(B * windows, N, C)``. Its rows are windows, not images, and reading them as images
    would give ``B * windows`` maps for ``B`` images.

    Raises:
        LayerError: ``shape[0] != batch``, naming the layer and saying why. InputError: ``shape`` is not a sequence
            of non-negative integers.
    """
    shape = _require_shape(shape)
    if int(shape[0]) != batch:
        raise LayerError(
            f"layer {name!r} outputs a batch of {int(shape[0])} for {batch} input image{'s' if batch != 1 else ''}: "
            "it folds windows or patches into the batch dimension (window attention, MobileViT's unfolded patches), "
            "so its rows are not images and no explicit layouts= can make them one; pick the block that folds them "
            "back (the layer list shows only layers whose batch is the input's)"
        )


_SPEC = re.compile(r"^(nchw|nhwc|tokens:(\d+))$")


def layout_from_spec(spec: str, shape: tuple[int, ...], input_size: tuple[int, int]) -> Layout:
    """An explicit layout ("nchw", "nhwc" or "tokens:K") applied to an output ``shape``; K leading tokens dropped.

    For tokens, the remaining ``N - K`` tokens must form a grid with the input's aspect ratio (the factor pair
    ``h * w`` whose ratio is closest to ``H / W``, which must fit the input as ``grid_fits`` says).

    Raises:
        LayerError: an unknown spec, or one that does not fit the shape.
        InputError: ``shape`` or ``input_size`` is malformed.
    """
    shape = _require_shape(shape)
    input_size = require_size(input_size, "input_size")
    match = _SPEC.match(spec.strip().lower()) if isinstance(spec, str) else None
    if match is None:
        raise LayerError(f"unknown layout {spec!r}; use 'nchw', 'nhwc' or 'tokens:K' (K leading non-spatial tokens)")
    if match.group(1) in ("nchw", "nhwc"):
        if len(shape) != 4:
            raise LayerError(f"layout {spec!r} needs a 4-D output shape, got {tuple(shape)}")
        _, d1, d2, d3 = (int(s) for s in shape)
        if match.group(1) == "nchw":
            return Layout("nchw", channels=d1, height=d2, width=d3)
        return Layout("nhwc", channels=d3, height=d1, width=d2)
    prefix = int(match.group(2))
    if len(shape) != 3 or prefix >= int(shape[1]):
        raise LayerError(
            f"layout {spec!r} needs a (B, N, C) token output shape with more than {prefix} tokens, got {tuple(shape)}"
        )
    spatial = int(shape[1]) - prefix
    ratio = input_size[0] / input_size[1]
    pairs = [(h, spatial // h) for h in range(1, spatial + 1) if spatial % h == 0]
    h, w = min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - math.log(ratio)))
    if not grid_fits(h, w, input_size):
        raise LayerError(
            f"with {prefix} leading tokens, the other {spatial} tokens do not form a patch grid for a "
            f"{input_size[0]}x{input_size[1]} input; check the number of leading tokens"
        )
    return Layout("tokens", channels=int(shape[2]), height=h, width=w, prefix_tokens=prefix)


def to_feature_map(tensor: torch.Tensor, layout: Layout) -> torch.Tensor:
    """Reshape a layer output (or its gradient) to ``(B, C, h, w)`` according to ``layout``.

    Args:
        tensor: ``(B, C, h, w)``, ``(B, h, w, C)`` or ``(B, N, C)``, any float dtype.
        layout: a resolved (not ambiguous) ``Layout`` for this tensor's shape.

    Returns:
        A ``(B, C, h, w)`` tensor (a view or copy; the input is not modified).

    Raises:
        LayerError: an ambiguous layout, or a layout that does not fit the tensor.
        InputError: ``tensor`` is not a float tensor of 3 or 4 dimensions, or ``layout`` is not a ``Layout``.
    """
    require_tensor(tensor, "tensor", ndim=(3, 4), floating=True)
    if not isinstance(layout, Layout):
        raise InputError(f"layout must be a camlib.layouts.Layout, got {type(layout).__name__}")
    expected_dims = 3 if layout.kind == "tokens" else 4
    sizes = {
        "nchw": (layout.channels, layout.height, layout.width),
        "nhwc": (layout.height, layout.width, layout.channels),
    }.get(layout.kind)
    if layout.kind != "ambiguous" and (
        tensor.dim() != expected_dims or (sizes is not None and tuple(tensor.shape[1:]) != sizes)
    ):
        raise InputError(
            f"tensor {tuple(tensor.shape)} does not fit the layout {layout.label} "
            f"({layout.channels} x {layout.height} x {layout.width})"
        )
    if layout.kind == "nchw":
        return tensor
    if layout.kind == "nhwc":
        return tensor.permute(0, 3, 1, 2)
    if layout.kind == "tokens":
        batch, _, channels = tensor.shape
        spatial = tensor[:, layout.prefix_tokens :, :]
        if spatial.shape[1] != layout.height * layout.width:
            raise LayerError(f"{spatial.shape[1]} tokens do not form a {layout.height}x{layout.width} grid")
        return spatial.reshape(batch, layout.height, layout.width, channels).permute(0, 3, 1, 2)
    raise LayerError(
        f"the layer's layout is ambiguous ({layout.reason}); pass layouts={{layer: 'nchw' | 'nhwc' | "
        "'tokens:K'}} to say how to read it"
    )
