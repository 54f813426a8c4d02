"""Seeded models and what camlib promises to leave untouched on a (shared) model: its hooks, flags, gradients and
state dict (``ModelSnapshot``; the ``snapshot`` fixture in conftest.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torchvision
from torch import nn
from torch.nn.modules import module as torch_module

_MODULE_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_GLOBAL_HOOK_DICTS = (
    "_global_forward_hooks",
    "_global_forward_pre_hooks",
    "_global_backward_hooks",
    "_global_backward_pre_hooks",
)


def registered_hooks(model: nn.Module) -> list[str]:
    """Every hook registered on ``model``'s modules and parameters, or globally on all modules (should be empty)."""
    found = [
        f"{name or '<root>'}.{attr}"
        for name, module in model.named_modules()
        for attr in _MODULE_HOOK_DICTS
        if getattr(module, attr)
    ]
    found += [f"{name}._backward_hooks" for name, p in model.named_parameters() if p._backward_hooks]
    found += [f"torch.nn.modules.module.{attr}" for attr in _GLOBAL_HOOK_DICTS if getattr(torch_module, attr)]
    return found


@dataclass
class ModelSnapshot:
    """Training flags, ``requires_grad`` flags, ``.grad`` objects and values, and the state dict of a model."""

    model: nn.Module
    training: dict[str, bool]
    requires_grad: dict[str, bool]
    grads: dict[str, torch.Tensor | None]
    grad_values: dict[str, torch.Tensor | None]
    state: dict[str, torch.Tensor]

    @classmethod
    def take(cls, model: nn.Module) -> ModelSnapshot:
        params = dict(model.named_parameters())
        return cls(
            model=model,
            training={name: m.training for name, m in model.named_modules()},
            requires_grad={name: p.requires_grad for name, p in params.items()},
            grads={name: p.grad for name, p in params.items()},
            grad_values={name: None if p.grad is None else p.grad.detach().clone() for name, p in params.items()},
            state={k: v.detach().clone() for k, v in model.state_dict().items()},
        )

    def assert_unchanged(self) -> None:
        model = self.model
        assert registered_hooks(model) == []
        assert {name: m.training for name, m in model.named_modules()} == self.training
        params = dict(model.named_parameters())
        assert {name: p.requires_grad for name, p in params.items()} == self.requires_grad
        for name, p in params.items():
            assert p.grad is self.grads[name], f"{name}.grad was replaced or created"
            if p.grad is not None:
                assert torch.equal(p.grad, self.grad_values[name]), f"{name}.grad values changed"
        state = model.state_dict()
        assert state.keys() == self.state.keys()
        for key, value in self.state.items():
            assert torch.equal(state[key], value), f"state_dict[{key!r}] changed"


def seeded(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """Build a randomly initialised model in eval mode without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def seeded_resnet18(seed: int = 0) -> nn.Module:
    """torchvision's ResNet-18 with seeded random weights (no download), in eval mode."""
    return seeded(lambda: torchvision.models.resnet18(weights=None), seed)


def mixed_state(model: nn.Module, grad: float = 0.25) -> nn.Module:
    """Train mode with one sub-tree in eval, a frozen parameter and a pre-set gradient: the state a shared model may
    be in, which every camlib call must leave exactly as it found it (compare with ``snapshot``). ``model`` is a
    torchvision ResNet."""
    model.train()
    model.layer2.eval()
    model.conv1.weight.requires_grad_(False)
    model.fc.weight.grad = torch.full_like(model.fc.weight, grad)
    return model


class DictOutput(nn.Module):
    """``inner`` with its output wrapped as ``{"out": output}`` (as torchvision's segmenters return): a model whose
    output is not a tensor, for the code that must not assume ``(B, C)`` logits when targets read the output."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.inner(x)}


class Amplified(nn.Module):
    """``model``'s logits times ``gain``: seeded random networks whose logits barely move with the input (a
    MobileNetV3-Small's are ~1e-10, a LeViT's raw maps ~1e-7) give maps that rounding decides; amplified, the model's
    own scores do."""

    def __init__(self, model: nn.Module, gain: float) -> None:
        super().__init__()
        self.model, self.gain = model, gain

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gain * self.model(x)
