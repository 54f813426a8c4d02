"""Feature layouts: how a layer's output maps onto a ``(B, C, h, w)`` feature map, inferred from shapes alone.

CNN layers output ``(B, C, h, w)`` ("NCHW"). ConvNeXt block internals and Swin stages output channels-last
``(B, h, w, C)`` ("NHWC"); ViT/DeiT blocks output tokens ``(B, N, C)`` whose first ``k`` tokens are not spatial (the
class token; DeiT's distillation token; register tokens) and whose other ``h * w`` tokens are a row-major patch grid
("tokens"). The layout is inferred from the output's shape and the model's input size ``(H, W)``, never from module
names:

- a spatial grid ``(h, w)`` fits the input when one stride ``s`` explains both sides up to the rounding of a padded or
  pooled convolution: ``|h - H / s| < 1`` and ``|w - W / s| < 1``; when a 4-D output fits both as ``(C, h, w)`` and
  as ``(h, w, C)``, it is ambiguous (e.g. ``(B, 7, 7, 7)``), except on a square input where exactly one reading is a
  square grid (a square input gives an exactly square grid);
- a token grid must come from a patch embedding (a convolution with kernel = stride = ``p``, no padding): an integer
  ``p`` with ``floor(H / p) = h`` and ``floor(W / p) = w``, and ``N - k = h * w`` for ``0 <= k <= MAX_PREFIX_TOKENS``.
  When several ``k`` fit, the one whose patch size divides the input exactly wins if it is the only such one
  (torchvision's and timm's ViTs refuse inputs their patch size does not divide, unless told to pad).

When both 4-D readings fit (e.g. ``(B, 7, 7, 7)``) or several token readings do, the layout is reported as ambiguous
and nothing is guessed: ``compute_cams`` then needs an explicit ``layouts={layer: "nchw" | "nhwc" | "tokens:K"}``.
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

    def strides(n: int, size: int) -> tuple[float, float]:
        return size / (n + 1), (size / (n - 1) if n > 1 else math.inf)

    low_h, high_h = strides(height, in_h)
    low_w, high_w = strides(width, in_w)
    return max(low_h, low_w) < min(high_h, high_w)


def _patch_grids(tokens: int, input_size: tuple[int, int]) -> list[tuple[int, int, int, bool]]:
    """Every ``(k, h, w, exact)`` with ``tokens - k = h * w`` a patch grid of some integer patch size ``p``."""
    in_h, in_w = input_size
    found = []
    for prefix in range(0, min(MAX_PREFIX_TOKENS, tokens - 2) + 1):
        spatial = tokens - prefix  # at least 2: a lone token is a pooled or class token, not a grid
        for h in range(1, spatial + 1):
            if spatial % h:
                continue
            w = spatial // h
            # integer p with floor(H/p) = h and floor(W/p) = w: p in (H/(h+1), H/h] and (W/(w+1), W/w]
            low = max(in_h // (h + 1), in_w // (w + 1)) + 1
            high = min(in_h // h, in_w // w)
            patches = [p for p in range(max(low, 1), high + 1) if in_h // p == h and in_w // p == w]
            if patches:
                exact = any(in_h % p == 0 and in_w % p == 0 and in_h // p == h for p in patches)
                found.append((prefix, h, w, exact))
    return found


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
        The ``Layout`` (possibly "ambiguous"), or None when the output is not a spatial feature map at all (other
        ranks, or tokens that form no patch grid, e.g. a pooled ``(B, C)`` or a ``(B, 1, C)`` class token).

    Raises:
        InputError: ``shape`` is not a sequence of non-negative integers, or ``input_size`` not two positive ones.
    """
    shape = _require_shape(shape)
    input_size = require_size(input_size, "input_size")
    if len(shape) == 4:
        _, d1, d2, d3 = (int(s) for s in shape)
        nchw = grid_fits(d2, d3, input_size)
        nhwc = grid_fits(d1, d2, input_size)
        if nchw and nhwc:
            # Both fit. A square input gives an exactly square grid, so on a square input a single square reading
            # wins; anything else is ambiguous.
            square_nchw, square_nhwc = d2 == d3, d1 == d2
            if input_size[0] != input_size[1] or square_nchw == square_nhwc:
                return Layout("ambiguous", reason=f"{d1} x {d2} x {d3} reads as C x H x W and as H x W x C")
            nchw, nhwc = square_nchw, square_nhwc
        if nhwc:
            return Layout("nhwc", channels=d3, height=d1, width=d2)
        if nchw:
            return Layout("nchw", channels=d1, height=d2, width=d3)
        return None
    if len(shape) == 3:
        _, tokens, channels = (int(s) for s in shape)
        grids = _patch_grids(tokens, input_size)
        if len(grids) > 1:
            exact = [g for g in grids if g[3]]
            grids = exact if len(exact) == 1 else grids
        if not grids:
            return None
        if len(grids) > 1:
            readings = ", ".join(f"{k} leading + {h}x{w}" for k, h, w, _ in grids[:4])
            return Layout("ambiguous", reason=f"{tokens} tokens read as {readings}")
        prefix, h, w, _ = grids[0]
        return Layout("tokens", channels=channels, height=h, width=w, prefix_tokens=prefix)
    return None


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
