"""Predictions over many images, confusion matrices, and how an augmentation pipeline changes predictions.

Every forward pass on a (possibly shared) model runs under ``camlib.guard.eval_mode``: on a model already in eval
mode (every cached model) it runs concurrently with other sessions (camlib's CAM hooks act only for the thread that
registered them); a model with modules in training mode is switched to eval under its lock, held for the whole pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from camlib.cam import ProgressCallback
from camlib.contracts import require_array, require_int, require_model, require_unit_range
from camlib.errors import CamlibError, InputError
from camlib.guard import eval_mode
from camlib.models import Preprocessing, prepare_batch


def predict_probabilities(
    model: nn.Module,
    images: np.ndarray,
    preprocessing: Preprocessing,
    *,
    batch_size: int = 500,
    progress: ProgressCallback | None = None,
) -> np.ndarray:
    """Softmax probabilities ``(N, num_classes)`` float32 for uint8 RGB images ``(N, H, W, 3)`` of one size.

    ``progress(done, total)``, in images, is called after each batch of ``batch_size``; it may raise to stop (the
    exception propagates). Raises ``InputError`` for images that are not that (``N = 0`` is fine), a ``model`` that
    is not a module with weights, a ``preprocessing`` that is not a ``Preprocessing``, a ``batch_size`` below 1 or a
    ``progress`` that is not callable."""
    require_array(
        images,
        "images",
        dtypes=(np.uint8,),
        ndim=4,
        channels=3,
        nonempty=False,
        expected="uint8 RGB images (N, H, W, 3)",
    )
    if 0 in images.shape[1:]:
        raise InputError(f"images have a zero-size side {images.shape}; each needs at least 1x1 px")
    device = require_model(model)
    if not isinstance(preprocessing, Preprocessing):
        raise InputError(f"preprocessing must be a camlib.models.Preprocessing, got {type(preprocessing).__name__}")
    batch_size = require_int(batch_size, "batch_size", minimum=1)
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a callable (done, total) or None, got {type(progress).__name__}")
    if len(images) == 0:  # (0, num_classes): the class count comes from one forward of a blank image
        blank = np.zeros((1, preprocessing.crop, preprocessing.crop, 3), np.uint8)
        return predict_probabilities(model, blank, preprocessing)[:0]
    out = []
    with eval_mode(model), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = prepare_batch(images[start : start + batch_size], preprocessing).to(device)
            out.append(torch.softmax(model(x).float(), dim=1).cpu())
            if progress is not None:
                progress(min(start + batch_size, len(images)), len(images))
    return torch.cat(out).numpy()


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts; rows are true classes, columns predicted classes.

    ``labels`` and ``predictions`` are 1-D integer arrays (or lists of ints, converted to int64) of one length.
    Raises ``InputError`` for floats, bools, other containers or ``num_classes < 1``, ``CamlibError`` for a
    class outside ``0..num_classes-1``."""
    num_classes = require_int(num_classes, "num_classes", minimum=1)
    labels, predictions = _class_indices(labels, "labels"), _class_indices(predictions, "predictions")
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise CamlibError(
            f"labels and predictions must be 1-D of one length, got {labels.shape} and {predictions.shape}"
        )
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise CamlibError(f"a {name} is outside 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each true class (diagonal over row sums); 0 for a class with no images.

    ``matrix`` is a square non-negative integer ``(C, C)`` count matrix (``confusion_matrix``'s); float64 out.
    Raises ``InputError`` otherwise."""
    require_array(matrix, "matrix", ndim=2, expected="square integer count matrix (C, C)")
    if matrix.dtype.kind not in "iu" or matrix.shape[0] != matrix.shape[1] or (matrix < 0).any():
        raise InputError(
            f"matrix must be a square non-negative integer count matrix (C, C), got {matrix.dtype} {matrix.shape}"
        )
    totals = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), totals, out=np.zeros(len(matrix)), where=totals > 0)


def _class_indices(values: object, name: str) -> np.ndarray:
    """``values`` as a 1-D int64 array; lists of ints are converted, floats, bools and other objects refused."""
    if not isinstance(values, np.ndarray | list | tuple):
        raise InputError(f"{name} must be a 1-D integer array, got {type(values).__name__}")
    array = np.asarray(values)
    if array.ndim != 1 or (array.dtype.kind not in "iu" and array.size):
        raise InputError(f"{name} must be a 1-D integer array, got {array.dtype} {array.shape}")
    return array.astype(np.int64)


@dataclass(frozen=True)
class FlipReport:
    """How augmentation changed a model's predictions, tile by tile.

    Attributes:
        original_label: per tile, the class predicted on the original image.
        augmented_label: per tile, the class predicted on the augmented tile.
        original_confidence: per tile, the probability of ``original_label`` on the original.
        augmented_confidence: per tile, the probability of that same class on the augmented tile.
        flipped: per tile, True where the predicted label changed.
    """

    original_label: np.ndarray
    augmented_label: np.ndarray
    original_confidence: np.ndarray
    augmented_confidence: np.ndarray
    flipped: np.ndarray

    @property
    def flip_rate(self) -> float:
        """Share of tiles whose predicted label changed."""
        return float(self.flipped.mean()) if self.flipped.size else 0.0

    @property
    def mean_confidence_drop(self) -> float:
        """Mean drop of the original prediction's probability (positive: the augmentation made the model less sure)."""
        drop = self.original_confidence - self.augmented_confidence
        return float(drop.mean()) if drop.size else 0.0


def flip_report(original_probabilities: np.ndarray, augmented_probabilities: np.ndarray) -> FlipReport:
    """Compare predictions on originals and on their augmented tiles (row k of each belongs to tile k).

    Both are float ``(N, C)`` probabilities in [0, 1] (``N = 0`` is fine). Raises ``InputError`` otherwise."""
    for name, probabilities in (
        ("original_probabilities", original_probabilities),
        ("augmented_probabilities", augmented_probabilities),
    ):
        require_array(
            probabilities,
            name,
            dtypes=(np.float16, np.float32, np.float64),
            ndim=2,
            nonempty=False,
            expected="float probability array (N, num_classes)",
        )
        if probabilities.shape[1] == 0:
            raise InputError(f"{name} has no classes {probabilities.shape}")
        require_unit_range(probabilities, name)
    if original_probabilities.shape != augmented_probabilities.shape:
        raise CamlibError("original and augmented probabilities must have the same shape")
    rows = np.arange(len(original_probabilities))
    original = original_probabilities.argmax(axis=1)
    augmented = augmented_probabilities.argmax(axis=1)
    return FlipReport(
        original_label=original,
        augmented_label=augmented,
        original_confidence=original_probabilities[rows, original],
        augmented_confidence=augmented_probabilities[rows, original],
        flipped=original != augmented,
    )
