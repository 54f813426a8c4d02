"""Input-contract checks shared by camlib's public functions (bad-inputs row 43).

Each check raises a typed camlib error (``InputError`` unless the caller passes a more specific subclass) whose
message names the argument and says what was expected and what was given, so that a wrong shape, dtype, layout,
range or device never surfaces as an untyped ``RuntimeError``/``IndexError``/``cv2.error`` from deep inside torch,
numpy or OpenCV.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from camlib.errors import CamlibError, ClassIndexError, InputError, NonFiniteError


def describe(value: object) -> str:
    """A short description of ``value`` for messages: ``"float64 array (2, 3)"``, ``"list"``, ``"None"``."""
    if isinstance(value, np.ndarray):
        return f"{value.dtype} array {value.shape}"
    if isinstance(value, torch.Tensor):
        return f"{value.dtype} tensor {tuple(value.shape)} on {value.device}"
    return "None" if value is None else type(value).__name__


def _dims(ndim: int | Collection[int] | None) -> Collection[int] | None:
    return (ndim,) if isinstance(ndim, int) else ndim


def _wanted(kind: str, container: str, ndims: Collection[int] | None, extra: str) -> str:
    """What an argument should be, for messages: e.g. ``"uint8 array with 3 dimensions and 3 channels last"``."""
    dims = f"with {'/'.join(map(str, ndims))} dimensions" if ndims else ""
    return " ".join(part for part in (kind, container, dims, extra) if part)


def require_array(
    value: object,
    name: str,
    *,
    dtypes: Collection[np.dtype | type] | None = None,
    ndim: int | Collection[int] | None = None,
    channels: int | None = None,
    nonempty: bool = True,
    expected: str = "",
    error: type[CamlibError] = InputError,
) -> np.ndarray:
    """``value`` itself when it is a numpy array with one of ``dtypes`` and ``ndim`` dimensions.

    Args:
        value: the argument as given (lists, tensors and None are refused, not converted).
        name: the argument's name, quoted in the message.
        dtypes: accepted dtypes (None: any numeric or bool dtype; object/string arrays are always refused).
        ndim: accepted number of dimensions.
        channels: required size of the last dimension (e.g. 3 for RGB).
        nonempty: refuse arrays with a zero-size dimension.
        expected: what the argument should be, for the message (default: built from the other options).
        error: the ``CamlibError`` subclass to raise.

    Raises:
        error: any violation; the message names ``name``.
    """
    ndims = _dims(ndim)
    kind = "/".join(str(np.dtype(d)) for d in dtypes) if dtypes else "numeric"
    wanted = expected or _wanted(kind, "array", ndims, f"and {channels} channels last" if channels else "")
    if not isinstance(value, np.ndarray):
        raise error(f"{name} must be a {wanted}, got {describe(value)}")
    if dtypes is not None and value.dtype not in {np.dtype(d) for d in dtypes}:
        raise error(f"{name} must be a {wanted}, got {describe(value)}")
    if dtypes is None and value.dtype.kind not in "biuf":
        raise error(f"{name} must be a {wanted}, got {describe(value)}")
    if ndims is not None and value.ndim not in ndims:
        raise error(f"{name} must be a {wanted}, got {describe(value)}")
    if channels is not None and (value.ndim == 0 or value.shape[-1] != channels):
        raise error(f"{name} must be a {wanted}, got {describe(value)}")
    if nonempty and 0 in value.shape:
        raise error(f"{name} is empty {value.shape}; it needs at least one element along each dimension")
    return value


def require_unit_range(value: np.ndarray | torch.Tensor, name: str, *, error: type[CamlibError] = InputError) -> None:
    """Refuse NaN/Inf and values outside ``[0, 1]`` (CAM maps, probabilities)."""
    data = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
    if not data.size:
        return
    low, high = data.min(), data.max()  # NaN propagates into both and fails the test below, as an Inf does
    if low >= 0 and high <= 1:
        return
    if not np.isfinite(data).all():
        raise error(f"{name} contains NaN or Inf")
    raise error(f"{name} must be in [0, 1], got values in [{low:g}, {high:g}]")


def require_tensor(
    value: object,
    name: str,
    *,
    ndim: int | Collection[int] | None = None,
    floating: bool = False,
    device: torch.device | None = None,
    nonempty: bool = True,
    expected: str = "",
    error: type[CamlibError] = InputError,
) -> torch.Tensor:
    """``value`` itself when it is a torch tensor of ``ndim`` dimensions (float if ``floating``) on ``device``.

    A tensor on the ``meta`` device (shape only, no data) is always refused; ``device`` compares the device type and
    index (``cuda`` and ``cuda:0`` differ, so pass ``next(model.parameters()).device``).

    Raises:
        error: any violation; the message names ``name``.
    """
    ndims = _dims(ndim)
    wanted = expected or _wanted("float" if floating else "", "tensor", ndims, "")
    if not isinstance(value, torch.Tensor):
        raise error(f"{name} must be a {wanted}, got {describe(value)}")
    if (ndims is not None and value.dim() not in ndims) or (floating and not value.is_floating_point()):
        raise error(f"{name} must be a {wanted}, got {describe(value)}")
    if value.is_meta:
        raise error(f"{name} is on the 'meta' device (a tensor without data); pass a tensor with values")
    if device is not None and value.device != device:
        raise error(f"{name} is on {value.device} but the model is on {device}; move it with .to({str(device)!r})")
    if nonempty and value.numel() == 0:
        raise error(f"{name} is empty {tuple(value.shape)}; it needs at least one element along each dimension")
    return value


def require_int(
    value: object,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[CamlibError] = InputError,
) -> int:
    """``int(value)`` for a Python or numpy integer (not a bool) in ``[minimum, maximum]``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise error(f"{name} must be an integer, got {value!r}")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"{'' if minimum is None else minimum}..{'' if maximum is None else maximum}"
        raise error(f"{name} must be in {bounds}, got {value}")
    return int(value)


def require_size(value: object, name: str, *, error: type[CamlibError] = InputError) -> tuple[int, int]:
    """A pair of positive integers (an ``(H, W)`` or ``(width, height)`` size, in pixels) as a tuple."""
    if (
        not isinstance(value, tuple | list)
        or len(value) != 2
        or any(isinstance(v, bool) or not isinstance(v, int | np.integer) or v < 1 for v in value)
    ):
        raise error(f"{name} must be a pair of positive integers (pixels), got {value!r}")
    return int(value[0]), int(value[1])


def require_model(value: object, name: str = "model", *, error: type[CamlibError] = InputError) -> torch.device:
    """The device of ``value``'s first parameter (CPU for a model without parameters); ``value`` must be a
    ``torch.nn.Module`` whose parameters are not on the ``meta`` device."""
    if not isinstance(value, nn.Module):
        raise error(f"{name} must be a torch.nn.Module, got {describe(value)}")
    device = next((p.device for p in value.parameters()), torch.device("cpu"))
    if device.type == "meta":
        raise error(f"{name} has its parameters on the 'meta' device (no weights); load its weights first")
    return device


def require_path(value: object, name: str, *, error: type[CamlibError] = InputError) -> Path:
    """``value`` as a ``Path``: a ``str`` or ``os.PathLike`` without NUL (which no filesystem call accepts).

    Raises:
        ``error`` (``InputError``): anything else, naming ``name``.
    """
    if not isinstance(value, str | os.PathLike) or "\x00" in str(os.fspath(value)):
        raise error(f"{name} must be a path (str or Path, no NUL), got {type(value).__name__}")
    return Path(value)


def resolve_classes(class_idx: int | Sequence[int] | None, logits: torch.Tensor) -> list[int]:
    """The explained class of each image from ``class_idx`` and the ``(B, num_classes)`` logits: each image's argmax
    for None, one int for every image, or one int per image.

    Raises:
        ClassIndexError: not an int or a list of ints, a wrong count, or a class outside ``0..num_classes-1``.
    """
    batch, num_classes = logits.shape
    if class_idx is None:
        return [int(k) for k in logits.argmax(dim=1).tolist()]
    if isinstance(class_idx, (torch.Tensor, np.ndarray)):
        class_idx = class_idx.tolist()
    if isinstance(class_idx, (int, np.integer)):
        requested = [class_idx] * batch
    elif isinstance(class_idx, Sequence) and not isinstance(class_idx, str):
        requested = list(class_idx)
    else:
        raise ClassIndexError(f"class index must be an integer or a list of integers, got {class_idx!r}")
    if len(requested) != batch:
        raise ClassIndexError(f"got {len(requested)} class indices for a batch of {batch} images")
    out = []
    for k in requested:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise ClassIndexError(f"class index must be an integer, got {k!r}")
        if not 0 <= int(k) < num_classes:
            raise ClassIndexError(f"class index {int(k)} is out of range: this model has classes 0..{num_classes - 1}")
        out.append(int(k))
    return out


def require_cam_input(x: object, name: str = "x") -> torch.Tensor:
    """A model input for a map: a non-empty float ``(B, C, H, W)`` tensor with data (not ``meta``), not channels-last.

    Returns ``x``. Raises ``InputError`` naming ``name`` otherwise (a ``(B, H, W, C)`` tensor is told to permute)."""
    x = require_tensor(x, name, ndim=4, floating=True, expected="float tensor (B, C, H, W)")
    if x.shape[1] not in (1, 3, 4) and x.shape[-1] in (1, 3, 4):
        raise InputError(
            f"{name} looks channels-last {tuple(x.shape)}; pass (B, C, H, W), e.g. {name}.permute(0, 3, 1, 2)"
        )
    return x


def require_finite(what: str, tensor: torch.Tensor) -> None:
    """Raise ``NonFiniteError`` naming ``what`` (e.g. "the logits") when the model produced NaN or Inf in ``tensor``.

    Raises ``InputError`` when ``tensor`` is not a tensor."""
    if not isinstance(tensor, torch.Tensor):
        raise InputError(f"tensor must be a torch.Tensor, got {describe(tensor)}")
    if not bool(torch.isfinite(tensor).all()):
        raise NonFiniteError(f"the model produced non-finite values (NaN or Inf) in {what}; the CAM cannot be drawn")
