"""Layer inspector: which modules of a model can be CAM target layers, and which one to suggest.

A candidate is a module that runs exactly once per forward pass, whose output batch is the input's, and whose output
is a spatial feature map in one of the layouts of ``camlib.layouts``: ``(B, C, H, W)``, channels-last
``(B, H, W, C)`` (ConvNeXt block internals, Swin stages) or tokens ``(B, N, C)`` with leading non-spatial tokens (ViT,
DeiT). Candidates are found by one dry forward pass (no gradients, model locked and in eval mode, hooks removed
afterwards) and listed in the order their outputs are produced. Where an output's shape fits several layouts, a second
dry forward at a larger input and the grids of the model's convolutions resolve it; what they cannot resolve is
listed as ambiguous, with the reason, and never guessed.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from camlib.contracts import require_int, require_model, require_size
from camlib.errors import InputError, LayerError
from camlib.guard import eval_mode, owned_by_this_thread
from camlib.layouts import Layout, confirm_layout, infer_layout, layout_from_spec, require_batch

MIN_USEFUL_SIZE = 7  # below 7x7 a CAM is coarse; 1x1 is always blank


@dataclass(frozen=True)
class LayerInfo:
    """One candidate layer for the probed input size.

    Attributes:
        name: dotted module name.
        type_name: the module's class name.
        layout: how its output reads as ``(B, C, h, w)`` (``kind`` "ambiguous" when it cannot be told from shapes).
        output_shape: the raw output shape without the batch dimension, e.g. ``(197, 768)`` or ``(24, 24, 96)``.
    """

    name: str
    type_name: str
    layout: Layout
    output_shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.layout.channels

    @property
    def height(self) -> int:
        return self.layout.height

    @property
    def width(self) -> int:
        return self.layout.width

    @property
    def ambiguous(self) -> bool:
        return self.layout.kind == "ambiguous"

    @property
    def shape_label(self) -> str:
        """``"C x h x w"`` of the feature map (the raw shape when the layout is ambiguous)."""
        if self.ambiguous:
            return " x ".join(str(d) for d in self.output_shape) + " (layout ambiguous)"
        return f"{self.channels} x {self.height} x {self.width}"

    @property
    def warning(self) -> str | None:
        """A user-facing caveat about this layer's layout or spatial size, or None."""
        if self.ambiguous:
            return (
                f"layout cannot be told from the shapes ({self.layout.reason}); camlib will not guess it: pass "
                f"layouts={{{self.name!r}: 'nchw' | 'nhwc' | 'tokens:K'}} to compute_cams"
            )
        if self.height == 1 and self.width == 1:
            return "spatial resolution 1x1: the CAM is always blank (a 1x1 map normalises to zeros)"
        if min(self.height, self.width) < MIN_USEFUL_SIZE:
            return (
                f"spatial resolution {self.height}x{self.width} is below {MIN_USEFUL_SIZE}x{MIN_USEFUL_SIZE}: "
                "the map will be coarse"
            )
        return None


SECOND_PROBE_STEP = 32  # px added to each side for the second probe: one more cell of a stride-32 grid
_GRID_MODULES = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d)


@dataclass(frozen=True)
class _Probe:
    """One dry forward: each module's first 3-D/4-D output (forward position, type name, shape), how often each
    module ran, and the ``(position, (h, w))`` grids that ``Conv2d`` and 2-D pooling layers produced."""

    outputs: dict[str, tuple[int, str, tuple[int, ...]]]
    calls: dict[str, int]
    anchors: tuple[tuple[int, tuple[int, int]], ...]

    def anchors_before(self, name: str) -> frozenset[tuple[int, int]]:
        position = self.outputs[name][0]
        return frozenset(grid for at, grid in self.anchors if at < position)


def _probe(model: nn.Module, input_size: tuple[int, int], channels: int) -> _Probe:
    """One forward of a zero image of ``input_size`` with a hook on every module (this thread's calls only), no
    gradients, hooks removed afterwards; the caller holds ``eval_mode``. Errors of the forward propagate."""
    first = next((p for p in model.parameters() if p.is_floating_point()), None)
    device = require_model(model)
    dtype = first.dtype if first is not None else torch.float32
    outputs: dict[str, tuple[int, str, tuple[int, ...]]] = {}
    calls: dict[str, int] = {}
    anchors: list[tuple[int, tuple[int, int]]] = []
    order = 0
    mine = owned_by_this_thread()  # another session's forward passes through these hooks untouched

    def hook_for(name: str):
        def record(module: nn.Module, _inputs: object, output: object) -> None:
            nonlocal order
            if not mine():
                return
            calls[name] = calls.get(name, 0) + 1
            if isinstance(output, torch.Tensor) and output.dim() in (3, 4):
                outputs.setdefault(name, (order, type(module).__name__, tuple(output.shape)))
                if isinstance(module, _GRID_MODULES) and output.dim() == 4:
                    anchors.append((order, (int(output.shape[2]), int(output.shape[3]))))
            order += 1

        return record

    handles = [module.register_forward_hook(hook_for(name)) for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(torch.zeros(1, channels, *input_size, device=device, dtype=dtype))
    finally:
        for handle in handles:
            handle.remove()
    return _Probe(outputs, calls, tuple(anchors))


def _second_probe(
    model: nn.Module, input_size: tuple[int, int], channels: int
) -> tuple[_Probe | None, tuple[int, int], str]:
    """The probe at ``input_size`` plus ``SECOND_PROBE_STEP`` px a side, or None and why when the model refuses that
    size (ViTs with a fixed position embedding, LeViT's attention biases, MaxViT's window partition): any error of
    the model's forward means "no second probe", and the layout stays ambiguous with that reason."""
    size = (input_size[0] + SECOND_PROBE_STEP, input_size[1] + SECOND_PROBE_STEP)
    try:
        return _probe(model, size, channels), size, ""
    except Exception as error:  # the model's own check of its input size; reported in the reason, never raised
        return (
            None,
            size,
            (
                f"the model refuses a {size[0]}x{size[1]} input ({type(error).__name__}), so a second probe could not "
                "tell them apart"
            ),
        )


def probe_layouts(
    model: nn.Module, input_size: tuple[int, int], names: list[str] | None = None, *, channels: int = 3
) -> dict[str, tuple[str, tuple[int, ...], Layout | None]]:
    """Each module's layout for an ``input_size`` input, from a dry forward (and a second one where needed).

    The first probe gives each module's output shape; a module that runs more than once, or whose output batch is
    not the input's (windows folded into the batch), gets None. Where the shape alone fits several readings, a second
    probe at ``input_size`` plus ``SECOND_PROBE_STEP`` px a side and the model's convolution grids resolve it
    (``camlib.layouts.confirm_layout``); what they leave ambiguous stays "ambiguous" with the reason.

    Args:
        model: the classifier (may be shared; it is locked, put in eval mode and restored, hooks removed).
        input_size: ``(H, W)`` in pixels.
        names: the modules wanted (None: every module with a 3-D or 4-D output).
        channels: input channels.

    Returns:
        ``{name: (type name, output shape with batch, Layout or None)}`` in forward order, for the modules that
        produced a 3-D or 4-D tensor.

    Raises:
        InputError: a malformed model, size or channel count. Errors of the model's forward at ``input_size``
            propagate unchanged (at the second size they only leave the layout ambiguous).
    """
    require_model(model)
    input_size = require_size(input_size, "input_size")
    channels = require_int(channels, "channels", minimum=1)
    if names is not None and (not isinstance(names, list | tuple) or not all(isinstance(n, str) for n in names)):
        raise InputError(f"names must be None or a list of layer names (str), got {names!r}")
    with eval_mode(model):
        probe = _probe(model, input_size, channels)
        wanted = [n for n in sorted(probe.outputs, key=lambda n: probe.outputs[n][0]) if names is None or n in names]
        layouts: dict[str, Layout | None] = {}
        for name in wanted:
            shape = probe.outputs[name][2]
            layouts[name] = infer_layout(shape, input_size) if probe.calls[name] == 1 and shape[0] == 1 else None
        unresolved = [n for n, layout in layouts.items() if layout is not None and layout.kind == "ambiguous"]
        if unresolved:
            second, size, why = _second_probe(model, input_size, channels)
            for name in unresolved:
                other = second.outputs.get(name) if second is not None else None
                layouts[name] = confirm_layout(
                    probe.outputs[name][2],
                    input_size,
                    second=(other[2], size) if other is not None else None,
                    anchors=probe.anchors_before(name),
                    why=why,
                )
    return {name: (probe.outputs[name][1], probe.outputs[name][2], layouts[name]) for name in wanted}


# A second probe costs about one forward; its answer depends only on the model's structure, the layer and the sizes,
# so it is kept per model (weakly: a model that is dropped takes its entries with it) for every later call.
_PROBED: weakref.WeakKeyDictionary[nn.Module, dict[tuple, Layout | None]] = weakref.WeakKeyDictionary()
_PROBED_LOCK = threading.Lock()
_PROBED_PER_MODEL = 256


def _probed_layout(  # noqa: PLR0913 (the layer and the sizes that key its probe)
    model: nn.Module,
    name: str,
    shape: tuple[int, ...],
    input_size: tuple[int, int],
    channels: int,
    *,
    ambiguous: Layout,
) -> Layout | None:
    """``probe_layouts``'s answer for an ambiguous ``shape`` of layer ``name``, probed once per model and sizes."""
    key = (name, id(model.get_submodule(name)), shape[1:], tuple(input_size), channels)
    with _PROBED_LOCK:
        known = _PROBED.get(model, {})
        if key in known:
            return known[key]
    layout = probe_layouts(model, input_size, [name], channels=channels).get(name, ("", shape, ambiguous))[2]
    with _PROBED_LOCK:
        entries = _PROBED.setdefault(model, {})
        if len(entries) >= _PROBED_PER_MODEL:
            entries.clear()
        entries[key] = layout
    return layout


def layer_layout(  # noqa: PLR0913 (the layer, its output, the call's input and an explicit layout)
    model: nn.Module,
    name: str,
    shape: tuple[int, ...],
    input_size: tuple[int, int],
    explicit: str | None = None,
    *,
    batch: int = 1,
    channels: int = 3,
) -> Layout:
    """The layout of layer ``name``'s output of ``shape`` in a call on ``batch`` images of ``input_size``.

    An explicit layout (``layout_from_spec``) is applied as given; otherwise the shape's one reading, or, when it
    fits several, the layout ``probe_layouts`` resolves with a second probe of ``model``.

    Raises:
        LayerError: the output batch is not ``batch`` (windows folded into the batch, even with an explicit
            layout); the output is no spatial feature map; its layout stays ambiguous. Each message says why and
            names ``layouts=`` where an explicit layout can help.
        InputError: malformed arguments.
    """
    require_model(model)
    if not isinstance(name, str):
        raise InputError(f"name must be a layer's dotted name (str), got {type(name).__name__}")
    input_size = require_size(input_size, "input_size")
    batch = require_int(batch, "batch", minimum=1)
    channels = require_int(channels, "channels", minimum=1)
    require_batch(name, shape, batch)
    if explicit is not None:
        return layout_from_spec(explicit, shape, input_size)
    layout = infer_layout(shape, input_size)
    if layout is not None and layout.kind == "ambiguous":
        layout = _probed_layout(model, name, tuple(shape), input_size, channels, ambiguous=layout)
    option = f"layouts={{{name!r}: 'nchw' | 'nhwc' | 'tokens:K'}}"
    if layout is None:
        raise LayerError(
            f"layer {name!r} outputs {tuple(shape)}, which reads as no spatial feature map ((B, C, H, W), "
            f"(B, H, W, C), or (B, N, C) tokens on a convolution grid of the input); pick another layer (the layer "
            f"list shows only those), or, if it is one in a geometry camlib does not infer, pass {option}"
        )
    if layout.kind == "ambiguous":
        raise LayerError(
            f"the layout of layer {name!r} cannot be told from its output ({layout.reason}); camlib does not "
            f"guess it: pass {option}"
        )
    return layout


def list_candidate_layers(model: nn.Module, input_size: tuple[int, int], *, channels: int = 3) -> list[LayerInfo]:
    """Find the modules with a spatial output that run once, by a dry forward on a zero image of ``input_size``.

    Layouts are those of ``probe_layouts``: a second dry forward at a larger size runs only when some output's shape
    fits several readings. A module whose output batch is not the input's (Swin's and MaxViT's window attention,
    MobileViT's transformer blocks) is not a candidate: ``compute_cams`` refuses it with a ``LayerError``.

    Args:
        model: the classifier (may be shared; it is locked and its modes restored).
        input_size: ``(H, W)`` of the model input, in pixels.
        channels: input channels.

    Returns:
        Candidate layers in forward order (the order their outputs are produced), with their layouts.

    Raises:
        InputError: ``model`` is not a module with weights, ``input_size`` not two positive integers, ``channels``
            not a positive integer. Errors of the model's own forward pass propagate unchanged.
    """
    return [
        LayerInfo(name, type_name, layout, shape[1:])
        for name, (type_name, shape, layout) in probe_layouts(model, input_size, channels=channels).items()
        if layout is not None
    ]


def default_layer(candidates: list[LayerInfo], preferred: tuple[str, ...] = ()) -> LayerInfo:
    """The suggested target layer.

    The first of ``preferred`` (a registry entry's ``default_layers``) that is a candidate; else the last
    unambiguous candidate whose map is at least 7x7; else the largest unambiguous map.

    Raises:
        LayerError: no unambiguous candidate.
        InputError: ``candidates`` is not a list of ``LayerInfo`` or ``preferred`` not a tuple/list of names.
    """
    if not isinstance(candidates, list | tuple) or not all(isinstance(c, LayerInfo) for c in candidates):
        raise InputError(
            "candidates must be the list of LayerInfo that list_candidate_layers returns, got "
            f"{type(candidates).__name__}"
        )
    if not isinstance(preferred, list | tuple) or not all(isinstance(name, str) for name in preferred):
        raise InputError(f"preferred must be a tuple of layer names, got {preferred!r}")
    by_name = {c.name: c for c in candidates}
    for name in preferred:
        if name in by_name and not by_name[name].ambiguous:
            return by_name[name]
    usable = [c for c in candidates if not c.ambiguous]
    if not usable:
        raise LayerError("the model has no layer with a spatial feature map, so no CAM can be computed")
    useful = [c for c in usable if min(c.height, c.width) >= MIN_USEFUL_SIZE]
    if useful:
        return useful[-1]
    return max(reversed(usable), key=lambda c: c.height * c.width)
