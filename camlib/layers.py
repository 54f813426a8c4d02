"""Layer inspector: which modules of a model can be CAM target layers, and which one to suggest.

A candidate is a module whose output is a 4-D ``(B, C, H, W)`` tensor and that runs exactly once per forward pass.
Candidates are found by one dry forward pass (no gradients, model locked and in eval mode, hooks removed afterwards)
and listed in the order their outputs are produced.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from camlib.errors import LayerError
from camlib.guard import model_guard

MIN_USEFUL_SIZE = 7  # below 7x7 a CAM is coarse; 1x1 is always blank


@dataclass(frozen=True)
class LayerInfo:
    """One candidate layer: dotted name, module type and output shape (C, H, W) for the probed input size."""

    name: str
    type_name: str
    channels: int
    height: int
    width: int

    @property
    def shape_label(self) -> str:
        return f"{self.channels} x {self.height} x {self.width}"

    @property
    def warning(self) -> str | None:
        """A user-facing caveat about this layer's spatial size, or None."""
        if self.height == 1 and self.width == 1:
            return "spatial resolution 1x1: the CAM is always blank (a 1x1 map normalises to zeros)"
        if min(self.height, self.width) < MIN_USEFUL_SIZE:
            return (f"spatial resolution {self.height}x{self.width} is below {MIN_USEFUL_SIZE}x{MIN_USEFUL_SIZE}: "
                    "the map will be coarse")
        return None


def list_candidate_layers(model: nn.Module, input_size: tuple[int, int], *, channels: int = 3) -> list[LayerInfo]:
    """Find the modules with a 4-D output that run once, by one dry forward on a zero image of ``input_size``.

    Args:
        model: the classifier (may be shared; it is locked and its modes restored).
        input_size: ``(H, W)`` of the model input.
        channels: input channels.

    Returns:
        Candidate layers in forward order (the order their outputs are produced).
    """
    records: dict[str, tuple[int, str, tuple[int, ...]]] = {}
    calls: dict[str, int] = {}
    order = 0

    def hook_for(name: str):
        def record(module: nn.Module, _inputs: object, output: object) -> None:
            nonlocal order
            calls[name] = calls.get(name, 0) + 1
            if name not in records and isinstance(output, torch.Tensor) and output.dim() == 4:
                records[name] = (order, type(module).__name__, tuple(output.shape[1:]))
            order += 1

        return record

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    with model_guard(model):
        handles = [module.register_forward_hook(hook_for(name)) for name, module in model.named_modules() if name]
        try:
            with torch.no_grad():
                model(torch.zeros(1, channels, *input_size, device=device))
        finally:
            for handle in handles:
                handle.remove()

    ranked = sorted((rec[0], name, rec[1], rec[2]) for name, rec in records.items() if calls[name] == 1)
    return [LayerInfo(name, type_name, *shape) for _, name, type_name, shape in ranked]


def default_layer(candidates: list[LayerInfo]) -> LayerInfo:
    """The suggested target layer: the last candidate whose map is at least 7x7 (else the largest map)."""
    if not candidates:
        raise LayerError("the model has no layer with a 4-D output, so no CAM can be computed")
    useful = [c for c in candidates if min(c.height, c.width) >= MIN_USEFUL_SIZE]
    if useful:
        return useful[-1]
    return max(reversed(candidates), key=lambda c: c.height * c.width)
