"""Device choice: CUDA when available, else CPU (override with CAMLIB_DEVICE=cpu|cuda|cuda:N)."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """The device models run on: ``$CAMLIB_DEVICE`` if set, else CUDA when available, else CPU."""
    requested = os.environ.get("CAMLIB_DEVICE", "").strip()
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
