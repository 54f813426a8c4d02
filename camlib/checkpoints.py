"""Find the one reading of a saved checkpoint that fits an architecture.

People save weights in many wrappers. The usual ones:

- the prefixes of ``nn.DataParallel`` / ``DistributedDataParallel`` (``module.``) and of ``torch.compile``
  (``_orig_mod.``), also nested (``module._orig_mod.``), and those of EMA and weight-averaging wrappers (timm's
  ``ModelEmaV2``/``V3`` and ``torch.optim.swa_utils.AveragedModel`` keep the model as ``.module``);
- a training checkpoint: a dict holding the weights under ``state_dict`` (Lightning, timm), ``model`` (torchvision's
  reference scripts, DeiT), ``model_state_dict`` (the PyTorch tutorials), ``state_dict_ema`` (timm) or ``model_ema``
  (torchvision's reference scripts, DeiT), beside the optimizer, epoch and other entries;
- a prefix shared by every key, as a Lightning module's attribute name gives (``model.conv1.weight``).

A *reading* is a container (the file's top level, or a dict under one of ``CONTAINER_KEYS``, nested at most
``MAX_CONTAINER_DEPTH`` deep, e.g. ``checkpoint["model"]["state_dict"]``) whose values are all tensors, plus a prefix
removed from every key: any dotted prefix shared by every key of the container (``module.``, ``_orig_mod.``, chains of
them, a Lightning attribute name). Only a reading whose keys and shapes are exactly the architecture's is used, and
only when exactly one distinct reading fits: a timm checkpoint holding both ``state_dict`` and a different
``state_dict_ema`` is ambiguous and refused with the two readings named, never guessed.

Nothing here reads files or unpickles anything: ``camlib.models.read_checkpoint`` does that safely (safetensors or
``torch.load`` with ``weights_only=True``) and passes the result here.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import torch

from camlib.errors import CheckpointError, InputError

CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "state_dict_ema", "model_ema")
MAX_CONTAINER_DEPTH = 2
# torch.optim.swa_utils.AveragedModel saves the averaged model under ``module.`` plus this un-prefixed counter (a
# 0-dim integer buffer). It is not a weight of the model: it is dropped, and the reading says so.
AVERAGED_MODEL_COUNTER = "n_averaged"
# BatchNorm's counter is newer than some published files (torchvision's DenseNet, VGG-BN); torch's own loader fills
# it in, and it plays no part in eval mode.
OPTIONAL_SUFFIX = "num_batches_tracked"
NOT_A_STATE_DICT = (
    "the checkpoint is not a state dict (a mapping of names to tensors), nor a training checkpoint "
    f"holding one under {', '.join(CONTAINER_KEYS)}"
)
_SHOWN = 5  # names listed in an error message before "(+N more)"


@dataclass(frozen=True)
class CheckpointReading:
    """One way of reading a state dict out of a loaded checkpoint.

    Attributes:
        state: parameter and buffer name -> tensor, with ``prefix`` removed (the tensors of the checkpoint, not copies).
        container: the keys leading to the state inside the checkpoint; ``()`` for the top level.
        prefix: the dotted prefix removed from every key (``""`` for none), e.g. ``"module._orig_mod."``.
        dropped: keys of the container left out of ``state`` (only AveragedModel's ``n_averaged``).
    """

    state: dict[str, torch.Tensor] = field(repr=False, compare=False)
    container: tuple[str, ...] = ()
    prefix: str = ""
    dropped: tuple[str, ...] = ()

    @property
    def where(self) -> str:
        """The container as indexed in Python, ``checkpoint['model']['state_dict']``, or ``the file's top level``."""
        if not self.container:
            return "the file's top level"
        return "checkpoint" + "".join(f"[{key!r}]" for key in self.container)

    @property
    def is_plain(self) -> bool:
        """The file is the state dict itself, nothing removed."""
        return not (self.container or self.prefix or self.dropped)

    def describe(self) -> str:
        """A sentence for the user, e.g. ``loaded from checkpoint['state_dict'], prefix 'model.' removed``."""
        text = f"loaded from {self.where}, " + (f"prefix {self.prefix!r} removed" if self.prefix else "no prefix")
        if self.dropped:
            text += f", {', '.join(self.dropped)} (AveragedModel's update counter) ignored"
        return text


def candidate_readings(checkpoint: object) -> list[CheckpointReading]:
    """Every reading of ``checkpoint`` (containers in ``CONTAINER_KEYS`` order, depth first; shorter prefixes first).

    A container is a candidate when it is a non-empty mapping of ``str`` to ``torch.Tensor``; anything else in a
    training dict (optimizer state, epoch, hyper-parameters) is never read. Returns ``[]`` when nothing is a state dict.
    """
    readings = []
    for path, container in _state_containers(checkpoint):
        for prefix in _shared_prefixes(list(container)):
            readings.append(CheckpointReading({k[len(prefix) :]: v for k, v in container.items()}, path, prefix))
        counter = container.get(AVERAGED_MODEL_COUNTER)
        if counter is not None and counter.ndim == 0 and not counter.is_floating_point():
            rest = [k for k in container if k != AVERAGED_MODEL_COUNTER]
            for prefix in _shared_prefixes(rest):
                if prefix.startswith("module."):  # AveragedModel's layout; anywhere else the counter is a key
                    state = {k[len(prefix) :]: container[k] for k in rest}
                    readings.append(CheckpointReading(state, path, prefix, (AVERAGED_MODEL_COUNTER,)))
    return readings


def weight_tensors(checkpoint: object) -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor of every candidate container (the tensors any reading can load), named by its container path and
    key: ``model/fc.weight`` for ``checkpoint['model']['fc.weight']``, top-level keys as they are."""
    for path, container in _state_containers(checkpoint):
        for key, tensor in container.items():
            yield "/".join((*path, key)), tensor


def state_differences(
    state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """``(missing, unexpected, mismatched)`` names of ``state`` against ``expected`` (a model's ``state_dict()``), each
    in the order of its own dict; a missing ``num_batches_tracked`` is not missing. Mismatches read
    ``"name (saved shape) vs (model shape)"``. All three empty means ``state`` loads with ``strict=True``.

    Raises ``InputError`` unless both are mappings of names to tensors."""
    _require_state(state, "state")
    _require_state(expected, "expected")
    missing = [k for k in expected if k not in state and not k.endswith(OPTIONAL_SUFFIX)]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    return missing, unexpected, mismatched


def find_reading(checkpoint: object, expected: Mapping[str, torch.Tensor], label: str) -> CheckpointReading:
    """The one reading of ``checkpoint`` whose keys and shapes are exactly ``expected``'s.

    Args:
        checkpoint: what ``safetensors.torch.load`` or ``torch.load`` with ``weights_only=True`` returned.
        expected: the target model's ``state_dict()`` (only names and shapes are used).
        label: the model's name for messages.

    Raises:
        CheckpointError: nothing in ``checkpoint`` is a state dict; no reading fits ("Checkpoint does not match model
            ..." with the missing, unexpected and mismatched tensors of the reading that comes closest, and which
            reading that was); or several readings with different tensors fit (the message names them).
        InputError: ``expected`` is not a mapping of names to tensors.
    """
    _require_state(expected, "expected")
    readings = candidate_readings(checkpoint)
    if not readings:
        raise CheckpointError(NOT_A_STATE_DICT)
    fitting = [r for r in readings if not any(state_differences(r.state, expected))]
    distinct: list[CheckpointReading] = []
    for reading in fitting:
        if not any(_same_tensors(reading.state, other.state) for other in distinct):
            distinct.append(reading)
    if len(distinct) == 1:
        return distinct[0]
    if distinct:
        raise CheckpointError(
            f"The checkpoint holds {len(distinct)} different sets of weights that fit model {label}: "
            + "; ".join(r.describe().removeprefix("loaded from ") for r in distinct)
            + f". Save the one you want on its own, e.g. torch.save({distinct[-1].where}, 'weights.pt')"
        )
    closest = max(readings, key=lambda r: _closeness(r.state, expected))  # max keeps the first of equals
    missing, unexpected, mismatched = state_differences(closest.state, expected)
    read_as = "" if closest.is_plain else f"; read as {closest.describe().removeprefix('loaded from ')}"
    raise CheckpointError(
        f"Checkpoint does not match model {label} (missing: {_few(missing)}; unexpected: {_few(unexpected)}; "
        f"shape mismatch: {_few(mismatched)}{read_as})"
    )


def _require_state(state: object, name: str) -> None:
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise InputError(f"{name} must be a state dict (a mapping of names to tensors), got {type(state).__name__}")


def _containers(checkpoint: object, path: tuple[str, ...]) -> Iterator[tuple[tuple[str, ...], Mapping]]:
    if not isinstance(checkpoint, Mapping):
        return
    yield path, checkpoint
    if len(path) < MAX_CONTAINER_DEPTH:
        for key in CONTAINER_KEYS:
            if key in checkpoint:
                yield from _containers(checkpoint[key], (*path, key))


def _state_containers(checkpoint: object) -> Iterator[tuple[tuple[str, ...], Mapping[str, torch.Tensor]]]:
    """The containers that are state dicts: non-empty, ``str`` keys, tensor values."""
    for path, container in _containers(checkpoint, ()):
        if container and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in container.items()):
            yield path, container


def _shared_prefixes(keys: list[str]) -> list[str]:
    """``""`` and every dotted prefix that all ``keys`` share and that leaves each key non-empty, shortest first."""
    parts = [key.split(".") for key in keys]
    prefixes = [""]
    depth = 0
    while parts and all(len(p) > depth + 1 for p in parts) and len({p[depth] for p in parts}) == 1:
        depth += 1
        prefixes.append(".".join(parts[0][:depth]) + ".")
    return prefixes


def _same_tensors(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k] is b[k] or (a[k].dtype == b[k].dtype and torch.equal(a[k], b[k])) for k in a
    )


def _closeness(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor]) -> tuple[int, int, int]:
    """Names that match with their shape, names that match, minus the names that do not: larger is closer."""
    same_name = [k for k in expected if k in state]
    return (
        sum(state[k].shape == expected[k].shape for k in same_name),
        len(same_name),
        -len(state.keys() - expected.keys()),
    )


def _few(items: list[str]) -> str:
    if not items:
        return "none"
    more = f" (+{len(items) - _SHOWN} more)" if len(items) > _SHOWN else ""
    return ", ".join(items[:_SHOWN]) + more
