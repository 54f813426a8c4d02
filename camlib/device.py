"""Device choice: CUDA when available, else CPU (override with CAMLIB_DEVICE=cpu|cuda|cuda:N)."""

from __future__ import annotations

import os

import torch

from camlib.errors import InputError


def default_device() -> torch.device:
    """The device models run on: ``$CAMLIB_DEVICE`` if set, else CUDA when available, else CPU.

    Raises:
        InputError: ``$CAMLIB_DEVICE`` is not a device name torch knows (e.g. "gpu"), or names CUDA on a machine
            without it.
    """
    requested = os.environ.get("CAMLIB_DEVICE", "").strip()
    if not requested:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise InputError(f"CAMLIB_DEVICE={requested!r} is not a torch device; use cpu, cuda or cuda:N") from error
    if device.type == "cuda" and not torch.cuda.is_available():
        raise InputError(
            f"CAMLIB_DEVICE={requested!r} asks for CUDA, which this machine does not have; unset it or use cpu"
        )
    return device
