"""Overlays of a map on an image, blended and encoded once per (arrays, style, encoding)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from camlib.drawing import fast_jpeg, fast_png
from camlib.overlay import overlay_heatmap
from ui.stores import CACHE_TTL, image_key


def overlay_image(  # noqa: PLR0913 (the overlay's inputs and its encoding)
    image: np.ndarray,
    cam: np.ndarray,
    *,
    alpha: float,
    colormap: str,
    threshold: float | None,
    mask: np.ndarray | None = None,
    encoding: str = "png",
    key: str | None = None,
) -> bytes:
    """``camlib.overlay.overlay_heatmap`` encoded as PNG (``camlib.drawing.fast_png``, lossless) or, with
    ``encoding="jpeg"``, as JPEG (``fast_jpeg``: what the CAM Explorer's overlay fragment shows, redrawn on every
    overlay change; a PNG costs 3-15x the time to encode). Cached, so a rerun that changes nothing about an overlay
    neither blends nor encodes it again. The cache key holds ``image_key`` digests of the arrays (BLAKE2b, in C), not
    Streamlit's hash of them, which took about a sixth of a fragment run. A caller that already holds
    ``overlay_key(image, cam, mask)`` passes it as ``key`` and nothing is hashed."""
    if key is None:
        key = overlay_key(image, cam, mask)
    style = {"alpha": alpha, "colormap": colormap, "threshold": threshold}
    return _overlay_image(image, cam, mask, key=key, encoding=encoding, **style)


def overlay_key(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None) -> str:
    """``overlay_image``'s cache key for these arrays: their ``image_key`` digests joined."""
    arrays = (image, cam) if mask is None else (image, cam, mask)
    return "|".join(image_key(array) for array in arrays)


@st.cache_data(max_entries=64, ttl=CACHE_TTL, show_spinner=False)
def _overlay_image(  # noqa: PLR0913 (the overlay's inputs, its key and its encoding)
    _image: np.ndarray,
    _cam: np.ndarray,
    _mask: np.ndarray | None,
    *,
    key: str,
    encoding: str,
    alpha: float,
    colormap: str,
    threshold: float | None,
) -> bytes:
    """``overlay_image``'s cache: the arrays are not hashed (leading underscores), ``key`` stands for them."""
    encode = {"png": fast_png, "jpeg": fast_jpeg}[encoding]
    return encode(overlay_heatmap(_image, _cam, alpha=alpha, colormap=colormap, threshold=threshold, mask=_mask))
