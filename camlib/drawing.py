"""Pixel drawing for the pages: PNG and .npy bytes, nearest-neighbour tile upscaling, tile labels, grid PNGs.

Images follow the house contract: ``uint8`` RGB ``(H, W, 3)``, tiles ``(N, h, w, 3)``. No Streamlit in here.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from camlib.contracts import require_array, require_int
from camlib.errors import InputError
from camlib.overlay import nearest_factor

JPEG_QUALITY = 90  # fast_jpeg's default: no visible blocking on overlays, about a tenth of fast_png's bytes


def _check_image(image: object, *, gray: bool = False) -> None:
    if gray and isinstance(image, np.ndarray) and image.ndim == 2:
        require_array(image, "image", dtypes=(np.uint8,), expected="uint8 image (H, W, 3) or (H, W)")
    else:
        require_array(image, "image", dtypes=(np.uint8,), ndim=3, channels=3, expected="uint8 RGB image (H, W, 3)")


def _check_tiles(tiles: object) -> None:
    require_array(tiles, "tiles", dtypes=(np.uint8,), ndim=4, channels=3, expected="uint8 RGB tiles (N, h, w, 3)")


def png_bytes(image: np.ndarray) -> bytes:
    """Lossless PNG bytes of a ``uint8`` image ``(H, W, 3)`` (or ``(H, W)``), default compression (downloads).

    Raises ``InputError`` for anything else (the message names ``image``)."""
    _check_image(image, gray=True)
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """``np.save`` bytes of any numeric array (no pickles): ``np.load`` gives back the same dtype, shape and values.

    Raises ``InputError`` for a non-array or an object/string array (the message names ``array``)."""
    require_array(array, "array", nonempty=False, expected="numeric array")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def fast_png(image: np.ndarray) -> bytes:
    """PNG bytes of a ``uint8`` RGB image ``(H, W, 3)`` with light compression: lossless (pixel art stays crisp) and
    quick enough for live reruns.

    Raises:
        InputError: ``image`` is not ``uint8`` ``(H, W, 3)`` with sides >= 1, or OpenCV could not encode it.
    """
    _check_image(image)
    try:
        ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1])
    except cv2.error as error:
        raise InputError(f"PNG encoding failed: an image of shape {image.shape} and dtype {image.dtype}") from error
    if not ok:
        raise InputError("PNG encoding failed")
    return encoded.tobytes()


def fast_jpeg(image: np.ndarray, *, quality: int = JPEG_QUALITY) -> bytes:
    """JPEG bytes (baseline, 4:2:0, OpenCV's libjpeg) of a ``uint8`` RGB image ``(H, W, 3)`` at ``quality`` (1-100):
    for overlays redrawn live, where ``fast_png`` costs 5 ms for 224x224 px and 17 ms for 451x300 px and sends
    2-8x the bytes. Lossy: use ``fast_png`` or ``png_bytes`` for exports and pixel-exact images.

    Raises:
        InputError: ``image`` is not ``uint8`` ``(H, W, 3)`` with sides >= 1, ``quality`` is not an int in
            [1, 100], or OpenCV could not encode it.
    """
    _check_image(image)
    require_int(quality, "quality", minimum=1, maximum=100)
    try:
        ok, encoded = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    except cv2.error as error:
        raise InputError(f"JPEG encoding failed: an image of shape {image.shape} and dtype {image.dtype}") from error
    if not ok:
        raise InputError("JPEG encoding failed")
    return encoded.tobytes()


def upscale_tiles(tiles: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscale of ``(N, h, w, 3)`` tiles by the integer factor that brings their shorter side to
    at least ``min_side``; the tiles themselves (not a copy) when they are already that large.

    Raises ``InputError`` unless ``tiles`` is uint8 ``(N, h, w, 3)`` (``N >= 1``) and ``min_side >= 0``."""
    _check_tiles(tiles)
    factor = nearest_factor(tiles.shape[1:3], min_side)
    return tiles.repeat(factor, axis=1).repeat(factor, axis=2) if factor > 1 else tiles


def label_tiles(tiles: np.ndarray, labels: list[str], *, flagged: list[bool] | None = None) -> np.ndarray:
    """A copy of ``uint8`` tiles ``(N, h, w, 3)`` with a small white label in the bottom-left corner of each, on a
    black background (red where ``flagged``); ``labels`` and ``flagged`` hold one entry per tile.

    Raises ``InputError`` for tiles that are not uint8 ``(N, h, w, 3)`` or labels/flags that are not one str/bool
    per tile."""
    _check_tiles(tiles)
    if not isinstance(labels, list | tuple) or len(labels) != len(tiles) or not all(isinstance(t, str) for t in labels):
        raise InputError(f"labels must be one string per tile ({len(tiles)}), got {labels!r:.80}")
    if flagged is not None and (
        not isinstance(flagged, list | tuple)
        or len(flagged) != len(tiles)
        or not all(isinstance(f, bool | np.bool_) for f in flagged)
    ):
        raise InputError(f"flagged must be one bool per tile ({len(tiles)}), got {flagged!r:.80}")
    out = tiles.copy()
    height = out.shape[1]
    scale = max(0.3, height / 250)
    for k, text in enumerate(labels):
        (width, text_h), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        background = (200, 30, 30) if flagged and flagged[k] else (0, 0, 0)
        cv2.rectangle(out[k], (0, height - text_h - 6), (width + 4, height), background, thickness=-1)
        cv2.putText(out[k], text, (2, height - 4), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def grid_png(
    tiles: np.ndarray,
    rows: int,
    cols: int,
    *,
    min_tile_px: int,
    labels: list[str] | None = None,
    flagged: list[bool] | None = None,
) -> bytes:
    """PNG (``fast_png``) of ``rows x cols`` ``uint8`` tiles ``(rows * cols, h, w, 3)``, upscaled nearest-neighbour so
    each tile is at least ``min_tile_px``, with labels (``label_tiles``) when given."""
    from camlib.augment.grid import tile_grid  # here: importing camlib.augment imports Albumentations (about 1 s)

    require_int(min_tile_px, "min_tile_px", minimum=0)
    big = upscale_tiles(tiles, min_tile_px)
    if labels:
        big = label_tiles(big, labels, flagged=flagged)
    return fast_png(tile_grid(big, rows, cols))
