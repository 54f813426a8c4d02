"""What a map explains: targets, the callables that turn one image's model output into the explained scalar.

A target is any callable ``target(output_i) -> scalar tensor`` applied to image ``i``'s model output; the score a
gradient method differentiates is the sum over the batch. This is pytorch-grad-cam 1.5.7's convention
(``pytorch_grad_cam.utils.model_targets``), so its target objects (``ClassifierOutputTarget``,
``ClassifierOutputSoftmaxTarget``, ``ClassifierOutputReST``, ``BinaryClassifierOutputTarget``, ``FinerWeightedTarget``,
``SemanticSegmentationTarget``...) work unchanged wherever camlib takes ``targets=``.

"Image ``i``'s output" (``per_image_outputs``) is row ``i`` of a tensor output, element ``i`` of a list or tuple of
per-image outputs (a detector's list of dicts), or ``{key: value[i]}`` of a dict of batched tensors (a segmenter's
``{"out": (B, C, H, W)}``).

camlib's own targets are small frozen dataclasses (hashable: they are part of the app's cache keys), each documented
with its formula. Adding one is one dataclass here plus its test (tests/test_targets.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from camlib.contracts import require_int
from camlib.errors import ClassIndexError, InputError, NonFiniteError, TargetError

Target = Callable[[Any], torch.Tensor]
# What camlib's public functions take for "what to explain": ``class_idx`` (None for each image's argmax, one class
# for all, or one per image) or ``targets`` (one target per image), never both.
ClassIdx = int | Sequence[int] | None
Targets = Sequence[Target] | None


def _select(output: torch.Tensor, category: int) -> torch.Tensor:
    """``output[category]`` of one image's ``(C,)`` scores, or ``output[:, category]`` of a ``(N, C)`` batch."""
    return output[category] if output.dim() == 1 else output[:, category]


def _category(target: object) -> None:
    """Refuse a class that is not a non-negative integer: a negative index would silently read the last classes."""
    category = require_int(target.category, f"{type(target).__name__} category", minimum=0, error=ClassIndexError)
    object.__setattr__(target, "category", category)


@dataclass(frozen=True)
class ClassTarget:
    """The raw logit of class ``category``: ``y_k`` (Selvaraju et al. 2017, eq. 1; pytorch-grad-cam's
    ``ClassifierOutputTarget``). What ``class_idx=k`` explains."""

    category: int

    def __post_init__(self) -> None:
        _category(self)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return _select(output, self.category)


@dataclass(frozen=True)
class SoftmaxTarget:
    """The softmax probability of class ``category``: ``exp(y_k) / sum_j exp(y_j)`` (pytorch-grad-cam's
    ``ClassifierOutputSoftmaxTarget``). Its gradient also pushes the other classes down."""

    category: int

    def __post_init__(self) -> None:
        _category(self)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return _select(torch.softmax(output, dim=-1), self.category)


@dataclass(frozen=True)
class SigmoidTarget:
    """The probability of label ``category`` of a multi-label head: ``sigmoid(y_k) = 1 / (1 + exp(-y_k))``, each label
    scored on its own (binary cross-entropy heads, e.g. CheXNet, Tsoumakas & Katakis 2007's binary relevance)."""

    category: int

    def __post_init__(self) -> None:
        _category(self)

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(_select(output, self.category))


@dataclass(frozen=True)
class BinaryTarget:
    """The single logit ``y`` of a one-output (binary) head, signed: ``y`` for the positive class, ``-y`` for the
    negative one (pytorch-grad-cam's ``BinaryClassifierOutputTarget`` with category 1 or 0)."""

    positive: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.positive, (bool, np.bool_)):
            raise InputError(f"BinaryTarget positive must be True or False, got {self.positive!r}")
        object.__setattr__(self, "positive", bool(self.positive))

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output if self.positive else -output


# The targets that explain one class of a classifier, by type name (pytorch-grad-cam's are matched without importing
# it); ``class_of`` reads their ``.category``. Binary, segmentation, box and caption targets are not class targets.
_LOGIT_TARGETS = ("ClassTarget", "ClassifierOutputTarget")
_CLASS_TARGETS = (
    *_LOGIT_TARGETS,
    "SoftmaxTarget",
    "SigmoidTarget",
    "ClassifierOutputSoftmaxTarget",
    "ClassifierOutputReST",
)


def class_of(target: object) -> int | None:
    """The class a class target explains: the ``.category`` of camlib's ``ClassTarget``, ``SoftmaxTarget`` and
    ``SigmoidTarget`` and of pytorch-grad-cam's classifier targets (logit, softmax, ReST), else None."""
    category = getattr(target, "category", None)
    if type(target).__name__ not in _CLASS_TARGETS or isinstance(category, bool):
        return None
    return int(category) if isinstance(category, (int, np.integer)) else None


def is_logit_target(target: object) -> bool:
    """True when ``target`` is the raw logit of one class (``ClassTarget`` or pytorch-grad-cam's
    ``ClassifierOutputTarget``): what CAM, Finer-CAM and ``class_idx`` explain."""
    return type(target).__name__ in _LOGIT_TARGETS and class_of(target) is not None


def per_image_outputs(output: object, batch: int) -> list[Any]:
    """Image ``i``'s share of a model's output, for ``i`` in ``range(batch)``.

    Args:
        output: a tensor with ``batch`` rows, a list or tuple of ``batch`` per-image outputs, or a mapping whose
            tensor values all have ``batch`` rows (other values are passed on whole).
        batch: the number of images ``B``.

    Returns:
        ``B`` per-image outputs (views: gradients flow through them).

    Raises:
        TargetError: the output is none of those, or its leading size is not ``batch``.
    """
    if isinstance(output, torch.Tensor):
        if output.dim() == 0 or output.shape[0] != batch:
            raise TargetError(
                f"the model output is a tensor of shape {tuple(output.shape)} for {batch} images; "
                "targets need one row per image"
            )
        return list(output.unbind(0))
    if isinstance(output, (list, tuple)):
        if len(output) != batch:
            raise TargetError(f"the model output holds {len(output)} per-image outputs for {batch} images")
        if isinstance(output, tuple) and all(
            isinstance(v, torch.Tensor) and v.dim() and len(v) == batch for v in output
        ):
            # (logits, features) of a batch is a tuple of batched tensors, not one output per image: reading it as
            # per-image outputs would hand image 0 every image's logits.
            raise TargetError(
                f"the model output is a tuple of {len(output)} batched tensors; targets read one output per image: "
                "wrap the model so that it returns one tensor or a dict of batched tensors"
            )
        return list(output)
    if isinstance(output, Mapping):
        tensors = {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
        wrong = [k for k, v in tensors.items() if v.dim() == 0 or v.shape[0] != batch]
        if not tensors or wrong:
            raise TargetError(
                f"the model output is a dict whose tensors {wrong or '(none)'} do not have one row per image ({batch})"
            )
        return [{k: (v[i] if k in tensors else v) for k, v in output.items()} for i in range(batch)]
    raise TargetError(
        f"the model output is a {type(output).__name__}; targets read a tensor, a list of per-image outputs or a dict"
    )


def target_scores(targets: Sequence[Target], output: object) -> torch.Tensor:
    """Each image's explained score ``targets[i](output_i)``, ``(B,)`` in the output's dtype, graph kept.

    Args:
        targets: one callable per image.
        output: the model's output for the ``B = len(targets)`` images (see ``per_image_outputs``).

    Returns:
        ``(B,)`` tensor; its sum is what a gradient method differentiates. For logit targets on ``(B, C)`` logits it
        is ``output[b, k_b]`` gathered in one indexing op (the numbers of ``class_idx``).

    Raises:
        TargetError: a target raised, or returned something other than a one-element floating tensor.
        NonFiniteError: a target's score is NaN or Inf.
    """
    targets = _require_targets(targets)
    output = upcast_output(output)
    batch = len(targets)
    if (
        isinstance(output, torch.Tensor)
        and output.dim() == 2
        and output.shape[0] == batch
        and output.is_floating_point()
        and all(is_logit_target(t) for t in targets)
        and all(0 <= class_of(t) < output.shape[1] for t in targets)
    ):
        scores = output[torch.arange(batch), torch.tensor([class_of(t) for t in targets])]
    else:
        scores = torch.stack(
            [_one_score(t, o, i) for i, (t, o) in enumerate(zip(targets, per_image_outputs(output, batch)))]
        )
    if not bool(torch.isfinite(scores.detach()).all()):
        raise NonFiniteError(
            "the targets' scores hold NaN or Inf (the model output overflowed, or a target divides by zero); "
            "the map cannot be drawn"
        )
    return scores


def upcast_output(output: object) -> object:
    """``output`` with its float16 and bfloat16 tensors upcast to float32, float32 and float64 ones kept (dicts, lists
    and tuples walked, a tuple kept a tuple; integer tensors, such as a detector's labels, and other values kept):
    ``camlib.cam.working_dtype`` applied to an output. A target's arithmetic (a softmax, a sigmoid) runs in at least
    float32 whatever the model's dtype, as every method's does, so a half-precision model's scores of different
    inputs are comparable to one rounding."""
    if isinstance(output, torch.Tensor):
        return output.float() if output.is_floating_point() and torch.finfo(output.dtype).bits < 32 else output
    if isinstance(output, Mapping):
        return {key: upcast_output(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        values = [upcast_output(value) for value in output]
        return tuple(values) if isinstance(output, tuple) else values
    return output


def _one_score(target: Target, output: object, index: int) -> torch.Tensor:
    try:
        score = target(output)
    except (IndexError, KeyError, TypeError, ValueError, RuntimeError) as error:
        raise TargetError(f"targets[{index}] ({_name(target)}) failed on the model output: {error}") from error
    if not isinstance(score, torch.Tensor) or score.numel() != 1 or not score.is_floating_point():
        got = f"{score.dtype} tensor {tuple(score.shape)}" if isinstance(score, torch.Tensor) else type(score).__name__
        raise TargetError(
            f"targets[{index}] ({_name(target)}) must return one float score from the model output, got {got}"
        )
    return score.reshape(())


def _name(target: object) -> str:
    return type(target).__name__


def resolve_targets(targets: Sequence[Target] | None, class_idx: object, batch: int) -> list[Target] | None:
    """Check the ``targets`` and ``class_idx`` a caller gave: at most one of them, and ``targets`` one callable per
    image. Returns ``targets`` as a list, or None when the classes are to be read from the logits
    (``camlib.contracts.resolve_classes``).

    Raises:
        InputError: both given, or ``targets`` is not a sequence of callables.
        TargetError: ``targets`` does not hold one target per image.
    """
    if targets is None:
        return None
    if class_idx is not None:
        raise InputError("give either class_idx or targets, not both")
    targets = _require_targets(targets)
    if len(targets) != batch:
        raise TargetError(f"got {len(targets)} targets for a batch of {batch} images; give one per image")
    return targets


def _declared_category(target: object) -> int:
    """The integer ``.category`` of any target that has one (camlib's and pytorch-grad-cam's class and mask targets),
    else 0."""
    category = getattr(target, "category", 0)
    return int(category) if isinstance(category, (int, np.integer)) and not isinstance(category, bool) else 0


def _require_targets(targets: object) -> list[Target]:
    if isinstance(targets, (str, bytes, Mapping)) or not isinstance(targets, Sequence):
        raise InputError(f"targets must be a list with one callable per image, got {type(targets).__name__}")
    bad = next((i for i, t in enumerate(targets) if not callable(t)), None)
    if bad is not None:
        raise InputError(
            f"targets must be callables (output -> scalar tensor); item {bad} is {type(targets[bad]).__name__}"
        )
    negative = next((i for i, t in enumerate(targets) if _declared_category(t) < 0), None)
    if negative is not None:
        raise ClassIndexError(
            f"targets[{negative}] names class {_declared_category(targets[negative])}: class indices are never "
            "negative (a negative index would silently read the last classes)"
        )
    return list(targets)


def class_targets(classes: Sequence[int]) -> list[ClassTarget]:
    """``ClassTarget(k)`` for each class ``k >= 0``: the targets ``class_idx`` stands for.

    Raises:
        InputError: ``classes`` is not a sequence of non-negative integers.
    """
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise InputError(f"classes must be a list of class indices, got {type(classes).__name__}")
    return [ClassTarget(require_int(k, f"classes[{i}]", minimum=0)) for i, k in enumerate(classes)]
