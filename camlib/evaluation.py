"""Predictions over many images, confusion matrices, and how an augmentation pipeline changes predictions.

Every forward pass on a (possibly shared) model holds its lock (``camlib.guard.model_guard``): another session's
CAM call may have hooks registered on the same model for a moment, and they must never see these forwards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from camlib.errors import CamlibError
from camlib.guard import model_guard
from camlib.models import Preprocessing, prepare_batch


def predict_probabilities(model: nn.Module, images: np.ndarray, preprocessing: Preprocessing, *,
                          batch_size: int = 500) -> np.ndarray:
    """Softmax probabilities ``(N, num_classes)`` float32 for uint8 RGB images ``(N, H, W, 3)`` of one size."""
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        raise CamlibError(f"expected uint8 RGB images (N, H, W, 3), got {getattr(images, 'dtype', type(images))} "
                          f"{getattr(images, 'shape', '')}")
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    if len(images) == 0:  # (0, num_classes): the class count comes from one forward of a blank image
        blank = np.zeros((1, preprocessing.crop, preprocessing.crop, 3), np.uint8)
        return predict_probabilities(model, blank, preprocessing)[:0]
    out = []
    with model_guard(model), torch.inference_mode():
        for start in range(0, len(images), batch_size):
            x = prepare_batch(images[start:start + batch_size], preprocessing).to(device)
            out.append(torch.softmax(model(x).float(), dim=1).cpu())
    return torch.cat(out).numpy()


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """``(num_classes, num_classes)`` int64 counts; rows are true classes, columns predicted classes."""
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    if labels.shape != predictions.shape or labels.ndim != 1:
        raise CamlibError(f"labels and predictions must be 1-D of one length, got {labels.shape} and "
                          f"{predictions.shape}")
    for name, values in (("label", labels), ("prediction", predictions)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise CamlibError(f"a {name} is outside 0..{num_classes - 1}")
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (labels, predictions), 1)
    return matrix


def per_class_accuracy(matrix: np.ndarray) -> np.ndarray:
    """Recall of each true class (diagonal over row sums); 0 for a class with no images."""
    totals = matrix.sum(axis=1)
    return np.divide(np.diag(matrix), totals, out=np.zeros(len(matrix)), where=totals > 0)


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
    """Compare predictions on originals and on their augmented tiles (row k of each belongs to tile k)."""
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
