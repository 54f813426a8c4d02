"""Safe decoding of user images into ``uint8`` RGB ``(H, W, 3)`` arrays, in bounded memory.

Caps are checked before any pixel is decoded: the byte size first, then the size the header declares (at most
``MAX_PIXELS``, and no side longer than ``MAX_DIMENSION``). A JPEG may declare up to ``MAX_JPEG_PIXELS`` (phone photos
of 48-200 MP) because libjpeg decodes it at 1/2, 1/4 or 1/8 scale (``draft()``): the full-size image never exists,
and the decoded size must itself be within ``MAX_PIXELS``. Only raster formats we need are opened
(``Image.open(formats=...)``: no EPS, which needs Ghostscript, no SVG, no PSD). Only the first frame of a multi-frame
file is read, and the frames are not walked to count them where the count is not in the header. EXIF orientation is
applied once; grayscale, palette, alpha, colour keys (PNG ``tRNS``), CMYK, 16-bit and multi-frame images are
converted by documented rules.
Nothing here changes Pillow's process-wide settings.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from pathlib import PurePath

import numpy as np
from PIL import Image, JpegImagePlugin, UnidentifiedImageError

from camlib.errors import ImageTooLargeError, InputError, InvalidImageError

MAX_UPLOAD_BYTES = 20 * 1024 * 1024  # matches server.maxUploadSize in .streamlit/config.toml
MAX_PIXELS = 25_000_000  # 25 MP: declared by the header, or for a JPEG decoded at reduced scale
MAX_JPEG_PIXELS = 200_000_000  # a JPEG may declare up to 200 MP: draft() decodes it at 1/2, 1/4 or 1/8 scale
MAX_DIMENSION = 65_535  # longest accepted side (JPEG's own limit): longer strips would cost memory per row
MAX_SIDE = 1024  # decoded images are downscaled once so their longest side is at most this
TINY_SIDE = 8  # below this the CAM is not meaningful
FRAMES_COUNTED = 100  # TIFF pages counted at most (counting walks every page)
ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF")
UPLOAD_TYPES = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
EXTENSION_FORMATS = {
    "png": "PNG",
    "apng": "PNG",
    "jpg": "JPEG",
    "jpeg": "JPEG",
    "jpe": "JPEG",
    "jfif": "JPEG",
    "webp": "WEBP",
    "bmp": "BMP",
    "dib": "BMP",
    "tif": "TIFF",
    "tiff": "TIFF",
    "gif": "GIF",
}
BACKGROUND = (255, 255, 255)  # transparent pixels are composited on white
_JPEG_MAGIC = b"\xff\xd8\xff"
# EXIF orientation -> the transpose that shows the image upright (the table of PIL.ImageOps.exif_transpose).
_EXIF_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image and what the user should know about the decoding.

    Attributes:
        pixels: ``uint8`` RGB ``(H, W, 3)``.
        format: the real file format found in the bytes (e.g. "JPEG"), whatever the file name says.
        original_size: ``(width, height)`` as stored in the file, after EXIF rotation.
        notes: informational messages (frame used, reduced decoding, downscaling, alpha, tiny image...).
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
        if bytes(data[:3]) == _JPEG_MAGIC:
            # The JPEG plugin directly: Image.open's own bomb check (a warning above 89 MP, an error above 179 MP,
            # process-wide settings) would refuse phone photos that draft() decodes reduced; our caps apply instead.
            return JpegImagePlugin.JpegImageFile(io.BytesIO(data))
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


def _check_declared_size(image: Image.Image, max_pixels: int, max_jpeg_pixels: int) -> None:
    """Refuse a header that declares too many pixels, or a side longer than ``MAX_DIMENSION``, before decoding."""
    width, height = image.size
    limit = max(max_pixels, max_jpeg_pixels) if image.format == "JPEG" else max_pixels
    if width * height > limit:
        raise ImageTooLargeError(
            f"image too large ({width * height / 1e6:.1f} MP > {limit / 1e6:.0f} MP): {width}x{height} pixels"
        )
    if max(width, height) > MAX_DIMENSION:
        raise ImageTooLargeError(
            f"image too long: {width}x{height} pixels; each side must be at most {MAX_DIMENSION:,} pixels"
        )


def _draft_jpeg(image: Image.Image, max_side: int) -> int:
    """Ask libjpeg to decode at 1/2, 1/4 or 1/8 scale, the smallest that keeps the longest side >= ``max_side``
    (Pillow's ``JpegImageFile.draft``: scale = largest of 8, 4, 2, 1 <= min(width // w, height // h)).

    Returns:
        The scale denominator (1: full size).
    """
    width, height = image.size
    longest = max(width, height)
    if longest <= 2 * max_side:
        return 1
    target = (max(1, width * max_side // longest), max(1, height * max_side // longest))
    drafted = image.draft(image.mode, target)  # (mode, (0, 0, width / scale, height / scale)), or None
    return round(width / drafted[1][2]) if drafted else 1


def _frames_note(image: Image.Image) -> str | None:
    """Which frame is used and how many there are, without walking the file where the count is not in the header.

    APNG (acTL chunk) and WebP (ANIM header) declare the count. A TIFF is counted page by page up to
    ``FRAMES_COUNTED`` (reading page headers only; counting 60,000 pages took 19 s). A GIF is not counted: each step
    to the next frame decodes the previous one.
    """
    if image.format in ("PNG", "WEBP"):
        frames = getattr(image, "n_frames", 1)
        return f"animated image: using frame 1 of {frames}" if frames > 1 else None
    if not getattr(image, "is_animated", False):  # TIFF: the first page's next-page offset; GIF: one frame header
        return None
    if image.format != "TIFF":
        return "animated image: using frame 1 (frames not counted)"
    frames = 1
    try:
        while frames <= FRAMES_COUNTED:
            image.seek(frames)
            frames += 1
    except EOFError:
        return f"multi-page image: using page 1 of {frames}"
    finally:
        image.seek(0)
    return f"multi-page image: using page 1 (more than {FRAMES_COUNTED} pages)"


def _name_note(filename: str, file_format: str) -> str | None:
    """A note when the file name's extension names another format than the bytes hold (the bytes win)."""
    extension = PurePath(filename).suffix.lower().lstrip(".")
    if not extension or EXTENSION_FORMATS.get(extension) == file_format:
        return None
    return f"the file is named .{extension} but contains {file_format} data; decoded as {file_format}"


# PNG's grey sample depths below 8 bits, by Pillow's raw mode: Pillow scales the pixels to 0..255 but leaves the
# tRNS key in sample units, so the key is scaled here (x 255 / (2^depth - 1), as the pixels are).
_LOW_DEPTH_GREY = {"L;2": 85, "L;4": 17}


def _raw_mode(image: Image.Image) -> str | None:
    """The raw mode of a PNG's pixel data (e.g. "RGB;16B", "L;2"), read before ``load()`` clears the tile list."""
    if image.format != "PNG" or not image.tile or not isinstance(image.tile[0].args, str):
        return None
    return image.tile[0].args


def _low_bytes(data: bytes | bytearray | memoryview) -> np.ndarray:
    """The low bytes of a 16-bit RGB PNG's samples, uint8 ``(H, W, 3)``: the same file decoded again with Pillow's
    "RGB;16L" unpacker, which takes the second byte of each big-endian sample (Pillow's own RGB keeps the first)."""
    image = Image.open(io.BytesIO(data), formats=["PNG"])
    image.tile = [tile._replace(args="RGB;16L") for tile in image.tile]
    return np.asarray(image)


def _colour_key_mask(
    image: Image.Image, raw_mode: str | None, data: bytes | bytearray | memoryview
) -> np.ndarray | None:
    """Where a colour key marks pixels transparent (bool ``(H, W)``), or None when the image declares none.

    A colour key is one grey level or one RGB colour declared transparent: a PNG ``tRNS`` chunk in a grey or RGB
    image (PNG specification, 11.3.2.1: pixels whose samples equal the key, compared at the image's bit depth), or a
    grey GIF's transparency index. Palette keys (``P`` with ``tRNS`` or a GIF index) are Pillow's RGBA conversion.

    The key is compared with the samples as stored: 16-bit grey as 16-bit, 16-bit RGB from its high and low bytes
    (Pillow keeps only the high bytes, and never matched its 16-bit key), 1-, 2- and 4-bit grey scaled as Pillow
    scales the pixels. Pillow's own conversion keeps 16-bit and 2- or 4-bit keyed images opaque.
    """
    key = image.info.get("transparency")
    if image.mode in ("1", "L") and isinstance(key, int):
        grey = np.asarray(image.convert("L") if image.mode == "1" else image)
        return grey == key * _LOW_DEPTH_GREY.get(raw_mode or "", 1)
    if image.mode.startswith("I;16") and isinstance(key, int):
        return np.asarray(image) == key
    if image.mode != "RGB" or not (isinstance(key, tuple) and len(key) == 3):
        return None
    if raw_mode == "RGB;16B":
        high, low = np.asarray(image), _low_bytes(data)
        return np.all(high == np.array([k >> 8 for k in key]), axis=2) & np.all(
            low == np.array([k & 0xFF for k in key]), axis=2
        )
    return np.all(np.asarray(image) == np.array(key), axis=2)


def _with_alpha(image: Image.Image, transparent: np.ndarray, notes: list[str]) -> Image.Image:
    """ "L" or "RGB" ``image`` as "RGBA", alpha 0 where ``transparent`` (bool ``(H, W)``) and 255 elsewhere."""
    if not transparent.any():
        return image
    rgba = image.convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(transparent, np.uint8(0), np.uint8(255))))
    notes.append("transparent pixels shown on a white background")
    return rgba


def _to_8bit(image: Image.Image, notes: list[str], transparent: np.ndarray | None = None) -> Image.Image:
    """Convert any supported mode to "L", "RGB" or "RGBA" by explicit rules (16-bit scaled, palette expanded, a
    colour key's ``transparent`` pixels (``_colour_key_mask``) given alpha 0).

    The full-size image is copied only where the mode requires it; ``_to_rgb`` finishes on the downscaled image.
    """
    if transparent is not None:
        return _with_alpha(_to_8bit(image, notes), transparent, notes)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        values = np.asarray(image)  # uint16 or int32: never a wider copy of a 25 MP image
        if values.min() < 0 or values.max() > 65535:
            raise InvalidImageError(f"unsupported image mode {mode} with values outside 0..65535")
        # 16-bit: scale 0..65535 to 0..255 as round(x / 257), never clip (which would turn everything white).
        # x = 257 q + r is never halfway (257 is odd), so round(x / 257) = q + (r >= 129): integer arithmetic only,
        # in bands of about 1 M values so the temporaries stay small.
        gray = np.empty(values.shape, np.uint8)
        band = max(1, 2**20 // values.shape[1])
        for start in range(0, values.shape[0], band):
            quotient, remainder = np.divmod(values[start : start + band], 257)
            gray[start : start + band] = quotient + (remainder >= 129)
        notes.append("16-bit image: scaled to 8 bits")
        return Image.fromarray(gray, "L")
    if mode == "F":
        raise InvalidImageError("unsupported image mode F (32-bit float); save the image as 8- or 16-bit")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        # Pillow converts premultiplied grey ("La", a TIFF's associated alpha) only to "LA".
        rgba = image if mode == "RGBA" else (image.convert("LA") if mode == "La" else image).convert("RGBA")
        if rgba.getextrema()[3][0] < 255:
            notes.append("transparent pixels shown on a white background")
        return rgba
    if mode == "CMYK":
        notes.append("CMYK image converted to RGB")
    if mode == "1":
        return image.convert("L")
    return image if mode in ("L", "RGB") else image.convert("RGB")


def _to_rgb(image: Image.Image) -> Image.Image:
    """ "L", "RGB" or "RGBA" to "RGB"; alpha is composited on white. Compositing after the downscale gives the same
    image up to rounding: Pillow resizes RGBA with premultiplied alpha, and both operations are linear."""
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, BACKGROUND + (255,))
        return Image.alpha_composite(background, image).convert("RGB")
    return image.convert("RGB")


def _downscaled_size(size: tuple[int, int], max_side: int | None) -> tuple[int, int]:
    """``size`` scaled so the longest side is ``max_side`` (each side rounded, at least 1); unchanged if it fits."""
    if not max_side or max(size) <= max_side:
        return size
    scale = max_side / max(size)
    return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))


def _check_decode_arguments(
    data: object, max_bytes: object, max_pixels: object, max_side: object, filename: object
) -> None:
    """decode_image's input contract and byte cap, before anything is parsed."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InputError(f"data must be the file's bytes (bytes, bytearray or memoryview), got {type(data).__name__}")
    if not data:
        raise InvalidImageError("empty file: the upload has 0 bytes of data")
    for name, value in (("max_bytes", max_bytes), ("max_pixels", max_pixels), ("max_side", max_side)):
        if not (value is None and name == "max_side") and (
            isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1
        ):
            raise InputError(
                f"{name} must be a positive integer{' or None' if name == 'max_side' else ''}, got {value!r}"
            )
    if not isinstance(filename, str):
        raise InputError(f"filename must be a string (the upload's name), got {type(filename).__name__}")
    if len(data) > max_bytes:
        raise ImageTooLargeError(f"file too large ({_megabytes(len(data))} > {_megabytes(max_bytes)})")


def _check_decoded_size(
    stored: tuple[int, int], decoded: tuple[int, int], max_pixels: int, *, progressive: bool, scale: int
) -> None:
    """The pixel cap on what will actually be decoded (after ``draft``); progressive JPEGs on their stored size."""
    if decoded[0] * decoded[1] > max_pixels or (progressive and stored[0] * stored[1] > max_pixels):
        reason = (
            "; a progressive JPEG cannot be decoded at reduced size"
            if progressive
            else (f" even at 1/{scale} size" if scale > 1 else "")
        )
        raise ImageTooLargeError(
            f"image too large ({stored[0] * stored[1] / 1e6:.1f} MP > {max_pixels / 1e6:.0f} MP): "
            f"{stored[0]}x{stored[1]} pixels{reason}"
        )


def _load_downscaled(
    image: Image.Image, data: bytes | bytearray | memoryview, max_pixels: int, max_side: int | None, notes: list[str]
) -> tuple[Image.Image, int, tuple[int, int]]:
    """Decode the (first) frame, convert to 8 bits, downscale once (LANCZOS) so the longest side is at most
    ``max_side``, then apply the EXIF orientation. Returns the image, the orientation and the downscaled size
    before rotation."""
    try:
        raw_mode = _raw_mode(image)
        image.load()
        # Read EXIF after load(): for PNG, getexif() decodes the pixels itself, so it must sit inside this guard.
        orientation = image.getexif().get(0x0112, 1)
        image = _to_8bit(image, notes, _colour_key_mask(image, raw_mode, data))
        new_size = _downscaled_size(image.size, max_side)
        if new_size != image.size:
            image = image.resize(new_size, Image.Resampling.LANCZOS)
        if orientation in _EXIF_TRANSPOSE:
            image = image.transpose(_EXIF_TRANSPOSE[orientation])
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise _bomb_error(error, max_pixels) from error
    except (OSError, ValueError, SyntaxError) as error:
        raise InvalidImageError(f"the file is truncated or corrupted ({error})") from error
    return image, orientation, new_size


def decode_image(
    data: bytes,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    max_side: int | None = MAX_SIDE,
    filename: str = "",
) -> DecodedImage:
    """Decode image bytes into ``uint8`` RGB, with caps checked before decoding and memory bounded by the caps.

    Steps: caps on the bytes and the declared size; a JPEG over ``2 * max_side`` is decoded at reduced scale
    (``draft``); the first frame only; conversion to 8 bits; one LANCZOS downscale so the longest side is at most
    ``max_side``; EXIF orientation; RGB. Downscaling before rotating means no full-size rotated copy is made.

    Args:
        data: the file's bytes.
        max_bytes: largest accepted file size.
        max_pixels: largest accepted pixel count: declared by the header, or for a JPEG, decoded after ``draft``.
        max_side: downscale so the longest side is at most this (None keeps the size and disables reduced JPEG
            decoding, so a JPEG over ``max_pixels`` is refused).
        filename: the upload's name, only to say when its extension disagrees with the content (never opened).

    Returns:
        A ``DecodedImage``.

    Raises:
        InputError: ``data`` is not bytes-like, a cap is not a positive integer, ``filename`` is not a string.
        InvalidImageError: empty, not an image, truncated or corrupted, unsupported mode.
        ImageTooLargeError: above ``max_bytes``, ``max_pixels`` (``MAX_JPEG_PIXELS`` declared for a JPEG) or
            ``MAX_DIMENSION`` pixels on a side.
    """
    _check_decode_arguments(data, max_bytes, max_pixels, max_side, filename)
    notes: list[str] = []
    image = _open(data, max_pixels)
    file_format = image.format or "unknown"
    _check_declared_size(image, max_pixels, MAX_JPEG_PIXELS if max_side else 0)
    stored_size = image.size
    # A progressive JPEG keeps every DCT coefficient of the full image whatever the output scale (2-6 bytes a pixel:
    # 149 MB for 48 MP), so only baseline JPEGs get the reduced-decoding allowance.
    progressive = bool(image.info.get("progressive"))
    scale = _draft_jpeg(image, max_side) if max_side and image.format == "JPEG" else 1
    width, height = image.size
    _check_decoded_size(stored_size, (width, height), max_pixels, progressive=progressive, scale=scale)
    frames_note = _frames_note(image)
    image, orientation, new_size = _load_downscaled(image, data, max_pixels, max_side, notes)
    swap = orientation in (5, 6, 7, 8)  # orientations that swap width and height

    def shown(size: tuple[int, int]) -> str:
        return f"{size[1]}x{size[0]}" if swap else f"{size[0]}x{size[1]}"

    original_size = (stored_size[1], stored_size[0]) if swap else stored_size
    notes[:0] = [note for note in (_name_note(filename, file_format), frames_note) if note]
    if scale > 1:
        notes.append(f"decoded at 1/{scale} size: {shown(stored_size)} -> {shown((width, height))}")
    if new_size != (width, height):
        notes.append(f"downscaled from {shown(stored_size)} to {shown(new_size)}")
    if min(image.size) < TINY_SIDE:
        notes.append(f"tiny image ({image.size[0]}x{image.size[1]}): below {TINY_SIDE} px the CAM is not meaningful")
    pixels = np.ascontiguousarray(np.asarray(_to_rgb(image), dtype=np.uint8))
    return DecodedImage(pixels=pixels, format=file_format, original_size=original_size, notes=tuple(notes))


def ensure_rgb_uint8(image: np.ndarray) -> np.ndarray:
    """Validate the image contract: ``uint8`` ``(H, W, 3)``; ``(H, W)`` grayscale is replicated to 3 channels.

    Raises:
        InvalidImageError: another type, dtype or shape, or a side of 0 pixels (the message names ``image``).
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise InvalidImageError(f"expected a uint8 image, got {getattr(image, 'dtype', type(image).__name__)}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise InvalidImageError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    if 0 in image.shape:
        raise InvalidImageError(f"the image is empty: shape {image.shape}")
    return np.repeat(image[:, :, None], 3, axis=2) if image.ndim == 2 else image


def ensure_rgb_batch(images: np.ndarray) -> np.ndarray:
    """Validate the batch contract: ``uint8`` ``(N, H, W, 3)`` with ``N, H, W >= 1``; returned as is.

    Raises:
        InvalidImageError: another type, dtype or shape, or an empty batch (the message names ``images``).
    """
    if not isinstance(images, np.ndarray) or images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
        given = f"{images.dtype} array {images.shape}" if isinstance(images, np.ndarray) else type(images).__name__
        raise InvalidImageError(f"expected images as a uint8 array (N, H, W, 3), got {given}")
    if 0 in images.shape:
        raise InvalidImageError(f"the images are empty: shape {images.shape}")
    return images
