"""Typed errors raised by camlib.

Every error is a ``ValueError`` subclass whose message a user can act on; the UI shows ``str(error)`` as is.
Every camlib error class is defined here; the modules that raise one import it from here (``camlib.augment``,
``camlib.cifar`` and ``camlib.train`` re-export theirs, so older imports keep working).
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


class DatasetError(CamlibError):
    """A dataset request camlib cannot serve (bad split or limit, or see the subclasses)."""


class DatasetUnavailableError(DatasetError):
    """The dataset is not on disk (or not all of it) and cannot be downloaded here, e.g. offline."""


class DatasetIntegrityError(DatasetError):
    """Files are present but corrupted or tampered with (md5 mismatch, undecodable or wrongly sized image)."""


class PipelineError(CamlibError):
    """A pipeline the lab cannot build or apply: unknown transform or parameter, or an invalid value.

    ``str(error)`` is one line naming the step, the transform and the parameter; the attributes let a page highlight
    the offending widget.
    """

    def __init__(
        self, message: str, *, step: int | None = None, transform: str | None = None, param: str | None = None
    ) -> None:
        super().__init__(message)
        self.step = step
        self.transform = transform
        self.param = param


class GridError(CamlibError):
    """Invalid grid arguments: mode, rows/cols, indices, scale or a grid too large for memory."""


class TrainingError(CamlibError):
    """A training run cannot start or resume (bad arguments, data, pipeline or checkpoint)."""


class TargetError(InputError):
    """A target (what a map explains) does not fit the model's output: a wrong count, or a target that fails on the
    output or returns something other than one float score."""
