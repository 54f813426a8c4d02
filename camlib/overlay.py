"""Heatmap colouring and blending of CAM maps over images.

camlib's overlay: ``out = (1 - alpha) * image + alpha * colormap(cam)`` per pixel, in uint8 RGB, where ``alpha`` is
the heatmap opacity. Pixels whose CAM value is below ``threshold`` get no heat (the image shows through). Unlike
pytorch-grad-cam's ``show_cam_on_image``, the result is not re-normalised by its maximum, so the image's own
brightness is kept; ``overlay_like_pytorch_grad_cam`` reproduces that function exactly for comparison.
"""

from __future__ import annotations

import cv2
import numpy as np

from camlib.contracts import require_array, require_int, require_size, require_unit_range
from camlib.errors import CamlibError, InputError

COLORMAPS: dict[str, int] = {
    "jet": cv2.COLORMAP_JET,
    "turbo": cv2.COLORMAP_TURBO,
    "viridis": cv2.COLORMAP_VIRIDIS,
    "inferno": cv2.COLORMAP_INFERNO,
    "magma": cv2.COLORMAP_MAGMA,
    "plasma": cv2.COLORMAP_PLASMA,
    "hot": cv2.COLORMAP_HOT,
    "bone": cv2.COLORMAP_BONE,
}


_MAP_DTYPES = (np.float16, np.float32, np.float64)  # maps are float32; the others are converted, never refused


def _check_image(image: object) -> np.ndarray:
    return require_array(
        image,
        "image",
        dtypes=(np.uint8,),
        ndim=3,
        channels=3,
        expected="uint8 RGB image (H, W, 3) (an image in [0, 1] floats: use np.uint8(255 * image))",
    )


def _check_map(cam: object, name: str = "cam") -> np.ndarray:
    require_array(cam, name, dtypes=_MAP_DTYPES, ndim=2, expected="float 2-D CAM map (h, w) in [0, 1]")
    require_unit_range(cam, name)
    return cam


def _check_weight(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.floating) or not 0.0 <= value <= 1.0:
        raise InputError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def _check(image: np.ndarray, cam: np.ndarray) -> None:
    _check_image(image)
    _check_map(cam)


def colorize(cam: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """Map a ``[0, 1]`` map to uint8 RGB with an OpenCV colormap (``uint8(255 * cam)`` as pytorch-grad-cam does).

    ``cam`` is float16/32/64 ``(h, w)``; returns uint8 ``(h, w, 3)``. Raises ``InputError`` for another array or
    values outside [0, 1] (NaN included), ``CamlibError`` for an unknown colormap."""
    _check_map(cam)
    return _colorize(cam, colormap)


def _colorize(cam: np.ndarray, colormap: str) -> np.ndarray:
    """``colorize`` of a map already checked."""
    if cam.dtype == np.float16:  # 255 * cam in float16 rounds differently; the same values as float32 instead
        cam = cam.astype(np.float32)
    if not isinstance(colormap, str) or colormap not in COLORMAPS:
        raise CamlibError(f"unknown colormap {colormap!r}; choose one of: {', '.join(COLORMAPS)}")
    bgr = cv2.applyColorMap(np.uint8(255 * cam), COLORMAPS[colormap])
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float ``(h, w)`` map in [0, 1] to ``size = (width, height)`` px, clipped back into [0, 1];
    float32 out (the map itself when the size already matches). Raises ``InputError`` for a bad map or size."""
    _check_map(cam)
    return _resize_map(cam, require_size(size, "size"))


def _resize_map(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``resize_map`` of a map and a size already checked."""
    if cam.shape[::-1] == tuple(size):
        return cam
    return np.clip(cv2.resize(cam.astype(np.float32), size, interpolation=cv2.INTER_LINEAR), 0.0, 1.0)


def signed_map(raw: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The signed view of a raw CAM (``CamResult.raw``): positive is evidence for the explained class, negative is
    evidence against it (the part every method's ReLU drops; pytorch-grad-cam issues #267 and #512).

    Args:
        raw: float ``(h, w)`` signed map at feature resolution.
        shape: ``(H, W)`` px, the size to show it at.

    Returns:
        float32 ``(H, W)`` in [-1, 1]: ``raw`` resized bilinearly (half-pixel centres, as ``torch``'s
        ``interpolate(align_corners=False)`` and camlib's maps) and divided by ``max |raw|``, so 0 stays 0 and the
        strongest evidence either way is +-1; all zeros when ``raw`` is.

    Raises:
        InputError: ``raw`` is not a finite 2-D float array, or ``shape`` is not two positive ints.
    """
    raw = require_array(raw, "raw map", dtypes=(np.float16, np.float32, np.float64), ndim=2)
    if not np.isfinite(raw).all():
        raise InputError("raw map must be finite (it holds NaN or inf)")
    height, width = require_size(shape, "shape")
    scale = float(np.abs(raw).max())
    resized = cv2.resize(raw.astype(np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    return np.clip(resized / scale, -1.0, 1.0) if scale > 0 else np.zeros((height, width), np.float32)


def overlay_heatmap(
    image: np.ndarray,
    cam: np.ndarray,
    *,
    alpha: float = 0.5,
    colormap: str = "jet",
    threshold: float | None = None,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Blend a CAM over an image.

    Args:
        image: uint8 RGB ``(H, W, 3)``.
        cam: float map in [0, 1]; resized bilinearly to the image if its size differs.
        alpha: heatmap opacity in [0, 1].
        colormap: a key of ``COLORMAPS``.
        threshold: if set, pixels with CAM below it show the plain image.
        mask: optional bool ``(H, W)``; False pixels (e.g. outside what the model saw) get no heat and are dimmed.

    Returns:
        uint8 RGB ``(H, W, 3)``.
    """
    _check(image, cam)
    _check_weight(alpha, "alpha")
    if threshold is not None:
        _check_weight(threshold, "threshold")
    cam = _resize_map(cam, (image.shape[1], image.shape[0]))  # checked once, above: a resized map stays in [0, 1]
    heat = _colorize(cam, colormap).astype(np.float32)
    base = image.astype(np.float32)
    if mask is not None and (not isinstance(mask, np.ndarray) or mask.dtype != bool or mask.shape != cam.shape):
        raise CamlibError(f"mask must be a bool array of shape {cam.shape}")
    # One weight for every pixel unless a threshold or a mask says otherwise. Per-pixel factors are full (H, W, 3)
    # arrays (cv2.merge copies a plane into 3 channels): the same float32 products as boolean indexing or (H, W, 1)
    # broadcasting, at a third of their time.
    weight: np.ndarray | np.float32 = np.float32(alpha)
    if threshold is not None or mask is not None:
        heated = np.ones(cam.shape, dtype=bool) if mask is None else mask
        if threshold is not None:
            heated = heated & (cam >= threshold)
        plane = np.where(heated, np.float32(alpha), np.float32(0.0))
        weight = cv2.merge([plane, plane, plane])
    if mask is not None:  # dimmed outside the mask: x 0.45 in float32 (x 1 inside is exact)
        plane = np.where(mask, np.float32(1.0), np.float32(0.45))
        base *= cv2.merge([plane, plane, plane])
    # (1 - w) * base + w * heat in float32, in place (the same products and sum, about 3x faster on 451x300 px)
    base *= 1.0 - weight
    heat *= weight
    base += heat
    np.rint(base, out=base)
    np.clip(base, 0, 255, out=base)
    return base.astype(np.uint8)


def overlay_like_pytorch_grad_cam(image: np.ndarray, cam: np.ndarray, *, image_weight: float = 0.5) -> np.ndarray:
    """pytorch-grad-cam's ``show_cam_on_image(img / 255, cam, use_rgb=True, image_weight=...)``, for comparison.

    Like that function (which raises for ``max(img) > 1`` and for ``image_weight`` outside [0, 1]), ``cam`` must be
    the image's size; the image is uint8 here and scaled by 1/255. Raises ``InputError`` otherwise."""
    _check(image, cam)
    if cam.shape != image.shape[:2]:
        raise InputError(f"cam must be the image's size {image.shape[:2]}, got {cam.shape}")
    _check_weight(image_weight, "image_weight")
    heat = colorize(cam, "jet").astype(np.float32) / 255
    out = (1 - image_weight) * heat + image_weight * (image.astype(np.float32) / 255)
    out = out / np.max(out)
    return np.uint8(255 * out)


def nearest_factor(size: tuple[int, ...], min_side: int) -> int:
    """The integer factor (at least 1) that brings the shorter side of ``size = (H, W)`` px to at least ``min_side``.

    Raises ``InputError`` unless ``min_side`` is an integer >= 0."""
    min_side = require_int(min_side, "min_side", minimum=0)
    return max(1, -(-min_side // max(1, min(size))))


def upscale_nearest(image: np.ndarray, min_side: int) -> np.ndarray:
    """Nearest-neighbour upscale by an integer factor so the shorter side is at least ``min_side`` (tiny images).

    ``image`` is uint8 RGB ``(H, W, 3)`` or a numeric ``(H, W)`` map; ``min_side`` is in pixels (0: unchanged).
    Raises ``InputError`` otherwise."""
    if not isinstance(image, np.ndarray) or image.ndim != 2:
        _check_image(image)
    require_array(image, "image", expected="uint8 RGB image (H, W, 3) or numeric map (H, W)")
    factor = nearest_factor(image.shape[:2], min_side)
    if factor == 1:
        return image
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def map_to_original(
    cam: np.ndarray, original_shape: tuple[int, int], crop_box: tuple[float, float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """Place a map computed on the model's crop back onto the original image.

    Args:
        cam: ``(h, w)`` map in [0, 1] over the crop the model saw.
        original_shape: ``(H, W)`` of the original image.
        crop_box: ``(left, top, right, bottom)`` of that crop in original pixel coordinates.

    Returns:
        ``(map, inside)``: the map at ``(H, W)`` (zeros outside the crop) and a bool mask of the crop region.

    Raises:
        InputError: a bad map, ``original_shape`` not two positive integers, or ``crop_box`` not four finite numbers
            with ``left < right`` and ``top < bottom``.
    """
    _check_map(cam)
    original_shape = require_size(original_shape, "original_shape")
    if (
        not isinstance(crop_box, tuple | list)
        or len(crop_box) != 4
        or not all(
            isinstance(v, int | float | np.number) and not isinstance(v, bool) and np.isfinite(v) for v in crop_box
        )
        or crop_box[0] >= crop_box[2]
        or crop_box[1] >= crop_box[3]
    ):
        raise InputError(
            f"crop_box must be four finite numbers (left, top, right, bottom) with left < right and "
            f"top < bottom, got {crop_box!r}"
        )
    height, width = original_shape
    box_left, box_top, box_right, box_bottom = (int(round(v)) for v in crop_box)
    full = np.zeros((height, width), dtype=np.float32)
    inside = np.zeros((height, width), dtype=bool)
    left, top, right, bottom = max(0, box_left), max(0, box_top), min(width, box_right), min(height, box_bottom)
    if right > left and bottom > top:
        # Resize to the whole box, then keep the part inside the image (a box may stick out of the image).
        placed = resize_map(cam, (box_right - box_left, box_bottom - box_top))
        full[top:bottom, left:right] = placed[top - box_top : bottom - box_top, left - box_left : right - box_left]
        inside[top:bottom, left:right] = True
    return full, inside
