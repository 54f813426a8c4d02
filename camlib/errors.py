"""Typed errors raised by camlib.

Every error is a ``ValueError`` subclass whose message a user can act on; the UI shows ``str(error)`` as is.
"""

from __future__ import annotations


class CamlibError(ValueError):
    """Base class of every camlib error."""


class InvalidImageError(CamlibError):
    """The bytes are not an image camlib can decode (empty, corrupt, truncated, wrong format or mode)."""


class ImageTooLargeError(InvalidImageError):
    """The file or its declared pixel count is above the configured cap."""


class LayerError(CamlibError):
    """A target layer name is unknown, has the wrong output shape, or is not used for the selected class."""


class ClassIndexError(CamlibError):
    """A class index is outside ``0..num_classes-1`` (negative indices are never accepted)."""


class MethodError(CamlibError):
    """An unknown CAM method name."""


class NonFiniteError(CamlibError):
    """The model produced NaN or Inf (logits, activations or gradients)."""


class GradientUnavailableError(CamlibError):
    """Gradients cannot be computed in the current context (e.g. inside ``torch.inference_mode``)."""


class CheckpointError(CamlibError):
    """A user checkpoint is refused (unsafe pickle, garbage, wrong architecture, non-finite or too large)."""


class WeightsUnavailableError(CamlibError):
    """Pretrained weights are neither cached nor downloadable (e.g. offline)."""


class UnknownModelError(CamlibError):
    """A model key that is not in the registry."""


class InputError(CamlibError):
    """An argument violates a public function's input contract (shape, dtype, layout, range or type)."""
