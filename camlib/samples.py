"""Bundled sample photos from scikit-image (shipped with the package, available offline)."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

import numpy as np
import skimage.data

from camlib.errors import CamlibError
from camlib.imaging import ensure_rgb_uint8


def _motorcycle() -> np.ndarray:
    return skimage.data.stereo_motorcycle()[0]


SAMPLES: dict[str, Callable[[], np.ndarray]] = {
    "chelsea (cat)": skimage.data.chelsea,
    "coffee (cup)": skimage.data.coffee,
    "astronaut": skimage.data.astronaut,
    "rocket": skimage.data.rocket,
    "motorcycle": _motorcycle,
    "camera (grayscale)": skimage.data.camera,
}
DEFAULT_SAMPLE = "chelsea (cat)"


@lru_cache(maxsize=len(SAMPLES))
def _load(name: str) -> np.ndarray:
    image = ensure_rgb_uint8(np.asarray(SAMPLES[name]()))
    image.setflags(write=False)  # cached and shared: read-only
    return image


def load_sample(name: str = DEFAULT_SAMPLE) -> np.ndarray:
    """A sample photo as read-only ``uint8`` RGB ``(H, W, 3)``."""
    if not isinstance(name, str) or name not in SAMPLES:
        raise CamlibError(f"unknown sample {name!r}; choose one of: {', '.join(SAMPLES)}")
    return _load(name)
