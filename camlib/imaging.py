"""Safe decoding of user images into ``uint8`` RGB ``(H, W, 3)`` arrays.

Caps are checked before any pixel is decoded: the byte size first, then the pixel count the header declares. Only
raster formats we need are opened (``Image.open(formats=...)``: no EPS, which needs Ghostscript, no SVG, no PSD).
EXIF orientation is applied once; grayscale, palette, alpha, CMYK, 16-bit and multi-frame images are converted by
documented rules. Nothing here changes Pillow's process-wide settings.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from camlib.errors import ImageTooLargeError, InvalidImageError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # matches server.maxUploadSize in .streamlit/config.toml
MAX_PIXELS = 25_000_000  # 25 MP
MAX_SIDE = 1024  # decoded images are downscaled once so their longest side is at most this
TINY_SIDE = 8  # below this the CAM is not meaningful
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and what the user should know about the decoding.

    Attributes:
        pixels: ``uint8`` RGB ``(H, W, 3)``.
        format: the real file format found in the bytes (e.g. "JPEG"), whatever the file name says.
        original_size: ``(width, height)`` as stored in the file, after EXIF rotation.
        notes: informational messages (frame used, downscaling, alpha, tiny image...).
    """

    pixels: np.ndarray
    format: str
    original_size: tuple[int, int]
    notes: tuple[str, ...] = ()


def _megabytes(size: int) -> str:
    return f"{size / 1e6:.1f} MB" if size >= 100_000 else f"{size / 1e3:.1f} kB"


def _bomb_error(error: Exception, max_pixels: int) -> ImageTooLargeError:
    """Pillow refuses > 2x its own limit while parsing the header; report it like our own cap."""
    match = re.search(r"\((\d+) pixels\)", str(error))
    declared = f"{int(match.group(1)) / 1e6:.1f} MP" if match else "too many pixels"
    return ImageTooLargeError(f"image too large ({declared} > {max_pixels / 1e6:.0f} MP)")


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        return Image.open(io.BytesIO(data), formats=list(ALLOWED_FORMATS))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        # The warning arrives as an exception when warnings are errors (-W error); both mean "too large".
        raise _bomb_error(error, max_pixels) from error
    except UnidentifiedImageError as error:
        raise InvalidImageError(
            "not a valid image: the file is not a PNG, JPEG, WebP, BMP, TIFF or GIF image (checked by content, "
            "not by name)"
        ) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImageError(f"the file is corrupted and cannot be read ({error})") from error


def _to_rgb(image: Image.Image, notes: list[str]) -> Image.Image:
    """Convert any supported mode to RGB by explicit rules (16-bit scaled, alpha composited on white)."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image, dtype=np.int64)
        if values.min() < 0 or values.max() > 65535:
            raise InvalidImageError(f"unsupported image mode {mode} with values outside 0..65535")
        # 16-bit: scale 0..65535 to 0..255 (x / 257), never clip (which would turn everything white).
        gray = np.round(values / 257.0).astype(np.uint8)
        notes.append("16-bit image: scaled to 8 bits")
        return Image.fromarray(np.stack([gray] * 3, axis=-1), "RGB")
    if mode == "F":
        raise InvalidImageError("unsupported image mode F (32-bit float); save the image as 8- or 16-bit")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparent pixels shown on a white background")
        background = Image.new("RGBA", rgba.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    return image.convert("RGB")


def decode_image(
    data: bytes,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_side: int | None = MAX_SIDE,
) -> DecodedImage:
    """Decode image bytes into ``uint8`` RGB, with caps checked before decoding.

    Args:
        data: the file's bytes.
        max_bytes: largest accepted file size.
        max_pixels: largest accepted pixel count (width x height as declared in the header).
        max_side: downscale so the longest side is at most this (None keeps the size).

    Returns:
        A ``DecodedImage``.

    Raises:
        InvalidImageError: empty, not an image, truncated or corrupted, unsupported mode.
        ImageTooLargeError: above ``max_bytes`` or ``max_pixels``.
    """
    if not data:
        raise InvalidImageError("empty file: the upload has 0 bytes")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"file too large ({_megabytes(len(data))} > {_megabytes(max_bytes)})")
    notes: list[str] = []
    # Pillow may warn (DecompressionBombWarning) at open for > 89 MP; our own cap below rejects those anyway.
    image = _open(data, max_pixels)
    width, height = image.size
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"image too large ({width * height / 1e6:.1f} MP > {max_pixels / 1e6:.0f} MP): {width}x{height} pixels"
        )
    file_format = image.format or "unknown"
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
        notes.append(f"animated image: using frame 1 of {frames}")
    if max_side and image.format == "JPEG" and max(width, height) > 2 * max_side:
        image.draft("RGB", (max_side, max_side))  # decode a JPEG at reduced scale: faster, less memory
    try:
        image.load()
        # Read EXIF after load(): for PNG, getexif() decodes the pixels itself, so it must sit inside this guard.
        transposed = image.getexif().get(0x0112, 1) in (5, 6, 7, 8)  # orientations that swap width and height
        image = ImageOps.exif_transpose(image)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _bomb_error(error, max_pixels) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImageError(f"the file is truncated or corrupted ({error})") from error
    original_size = (height, width) if transposed else (width, height)
    image = _to_rgb(image, notes)
    if max_side and max(image.size) > max_side:
        scale = max_side / max(image.size)
        new_size = (max(1, round(image.size[0] * scale)), max(1, round(image.size[1] * scale)))
        image = image.resize(new_size, Image.Resampling.LANCZOS)
        notes.append(f"downscaled from {original_size[0]}x{original_size[1]} to {new_size[0]}x{new_size[1]}")
    if min(image.size) < TINY_SIDE:
        notes.append(f"tiny image ({image.size[0]}x{image.size[1]}): below {TINY_SIDE} px the CAM is not meaningful")
    pixels = np.ascontiguousarray(np.asarray(image, dtype=np.uint8))
    return DecodedImage(pixels=pixels, format=file_format, original_size=original_size, notes=tuple(notes))


def ensure_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate the image contract: ``uint8`` ``(H, W, 3)``; ``(H, W)`` grayscale is replicated to 3 channels."""
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidImageError(f"expected a uint8 image, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim == 2:
        return np.repeat(image[:, :, None], 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise InvalidImageError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    return image
