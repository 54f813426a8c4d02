"""Device choice: CUDA when available, else CPU (override with CAMLIB_DEVICE=cpu|cuda|cuda:N); the devices a user may
pick (``available_devices``) and the parsing of a device name into a typed error instead of torch's RuntimeError."""

from __future__ import annotations

import os

import torch

from camlib.errors import InputError


def available_devices() -> tuple[str, ...]:
    """The devices models can run on here, as canonical names: ``"cpu"``, then ``"cuda:0"`` ... ``"cuda:N-1"`` for
    each visible CUDA device, then ``"mps"`` on Apple silicon. Never empty (``"cpu"`` is always there)."""
    names = ["cpu"]
    if torch.cuda.is_available():
        names += [f"cuda:{k}" for k in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return tuple(names)


def parse_device(name: str, *, source: str = "device") -> torch.device:
    """``name`` (e.g. "cpu", "cuda", "cuda:1") as a ``torch.device`` this machine has; "cuda" means "cuda:0".

    Raises:
        InputError: ``name`` is not a device name torch knows (e.g. "gpu"), or names a CUDA device this machine does
            not have; the message starts with ``source`` (e.g. "CAMLIB_DEVICE='gpu'").
    """
    requested = name.strip() if isinstance(name, str) else name
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError) as error:
        raise InputError(f"{source} is not a torch device; use cpu, cuda or cuda:N") from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"{source} asks for CUDA, which this machine does not have; unset it or use cpu")
        device = torch.device("cuda", device.index or 0)
        if device.index >= torch.cuda.device_count():
            raise InputError(f"{source} names {device}, but this machine has {torch.cuda.device_count()} CUDA devices")
    return device


def default_device() -> torch.device:
    """The device models run on: ``$CAMLIB_DEVICE`` if set, else CUDA (``cuda:0``) when available, else CPU.

    Raises:
        InputError: ``$CAMLIB_DEVICE`` is not a device name torch knows (e.g. "gpu"), or names CUDA on a machine
            without it.
    """
    requested = os.environ.get("CAMLIB_DEVICE", "").strip()
    if not requested:
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    return parse_device(requested, source=f"CAMLIB_DEVICE={requested!r}")
