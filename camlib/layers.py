"""Layer inspector: which modules of a model can be CAM target layers, and which one to suggest.

A candidate is a module that runs exactly once per forward pass and whose output is a spatial feature map in one of
the layouts of ``camlib.layouts``: ``(B, C, H, W)``, channels-last ``(B, H, W, C)`` (ConvNeXt block internals, Swin
stages) or tokens ``(B, N, C)`` with leading non-spatial tokens (ViT, DeiT). The layout is inferred from the output
shape and the input size; ambiguous layouts are listed as such, with the reason, and never guessed. Candidates are
found by one dry forward pass (no gradients, model locked and in eval mode, hooks removed afterwards) and listed in
the order their outputs are produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from camlib.contracts import require_int, require_model, require_size
from camlib.errors import InputError, LayerError
from camlib.guard import eval_mode, owned_by_this_thread
from camlib.layouts import Layout, infer_layout

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
            return f"layout cannot be told from the shapes ({self.layout.reason}); camlib will not guess it"
        if self.height == 1 and self.width == 1:
            return "spatial resolution 1x1: the CAM is always blank (a 1x1 map normalises to zeros)"
        if min(self.height, self.width) < MIN_USEFUL_SIZE:
            return (
                f"spatial resolution {self.height}x{self.width} is below {MIN_USEFUL_SIZE}x{MIN_USEFUL_SIZE}: "
                "the map will be coarse"
            )
        return None


def list_candidate_layers(model: nn.Module, input_size: tuple[int, int], *, channels: int = 3) -> list[LayerInfo]:
    """Find the modules with a spatial output that run once, by one dry forward on a zero image of ``input_size``.

    Args:
        model: the classifier (may be shared; it is locked and its modes restored).
        input_size: ``(H, W)`` of the model input, in pixels.
        channels: input channels.

    Returns:
        Candidate layers in forward order (the order their outputs are produced), with their inferred layouts.

    Raises:
        InputError: ``model`` is not a module with weights, ``input_size`` not two positive integers, ``channels``
            not a positive integer. Errors of the model's own forward pass propagate unchanged.
    """
    device = require_model(model)
    input_size = require_size(input_size, "input_size")
    channels = require_int(channels, "channels", minimum=1)
    records: dict[str, tuple[int, str, tuple[int, ...]]] = {}
    calls: dict[str, int] = {}
    order = 0

    mine = owned_by_this_thread()  # another session's forward passes through these hooks untouched

    def hook_for(name: str):
        def record(module: nn.Module, _inputs: object, output: object) -> None:
            nonlocal order
            if not mine():
                return
            calls[name] = calls.get(name, 0) + 1
            if name not in records and isinstance(output, torch.Tensor) and output.dim() in (3, 4):
                records[name] = (order, type(module).__name__, tuple(output.shape))
            order += 1

        return record

    with eval_mode(model):
        handles = [module.register_forward_hook(hook_for(name)) for name, module in model.named_modules() if name]
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, *input_size, device=device))
        finally:
            for handle in handles:
                handle.remove()

    found = []
    for position, name, type_name, shape in sorted((rec[0], name, *rec[1:]) for name, rec in records.items()):
        layout = infer_layout(shape, input_size)
        if calls[name] == 1 and layout is not None:
            found.append((position, LayerInfo(name, type_name, layout, shape[1:])))
    return [info for _, info in found]


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
