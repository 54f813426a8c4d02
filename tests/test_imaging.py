"""Tests of camlib.imaging: safe decoding of user image bytes (bad-inputs catalogue rows 1-3 and 7-20).

Every bad file is generated in memory. Pillow's process-wide settings (``LOAD_TRUNCATED_IMAGES``,
``MAX_IMAGE_PIXELS``) are never changed here.
"""

from __future__ import annotations

import inspect
import io
import re
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

from camlib import imaging
from camlib.errors import CamlibError, ImageTooLargeError, InvalidImageError
from camlib.imaging import MAX_PIXELS, MAX_SIDE, TINY_SIDE, DecodedImage, decode_image, ensure_rgb_uint8

MP_MESSAGE = re.compile(r"\d+(\.\d+)? MP > \d+ MP")  # "image too large (30.0 MP > 25 MP)"


# --- helpers -------------------------------------------------------------------------------------------------------

def _encode(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _rgb_noise(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def _bilevel_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit PNG of any declared size, built row by row (a few KB even for 30000 x 30000)."""
    row = b"\x00" + bytes((width + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    block_rows = max(1, min(height, (1 << 22) // len(row)))
    parts = []
    done = 0
    while done < height:
        n = min(block_rows, height - done)
        parts.append(compressor.compress(row * n))
        done += n
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", b"".join(parts))
            + _png_chunk(b"IEND", b""))


def _gif_declaring(width: int, height: int) -> bytes:
    """A 1x1 GIF whose logical screen declares ``width`` x ``height`` (Pillow reports the screen size)."""
    data = bytearray(_encode(Image.new("P", (1, 1)), "GIF"))
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 frame header declares ``width`` x ``height``."""
    data = bytearray(_encode(Image.new("RGB", (16, 16), (10, 20, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_rgb16(array: np.ndarray) -> bytes:
    """An uncompressed little-endian 16-bit RGB TIFF (Pillow cannot write one)."""
    height, width, _ = array.shape
    pixels = array.astype("<u2").tobytes()
    bits = struct.pack("<3H", 16, 16, 16)
    tags = [(256, 3, 1, width), (257, 3, 1, height), (258, 3, 3, 8), (259, 3, 1, 1), (262, 3, 1, 2),
            (273, 4, 1, 0), (277, 3, 1, 3), (278, 3, 1, height), (279, 4, 1, len(pixels))]
    ifd_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + len(bits) + ifd_size
    entries = b""
    for tag, kind, count, value in tags:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        entries += struct.pack("<HHI", tag, kind, count) + packed
    ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8 + len(bits)) + bits + ifd + pixels


def _with_orientation(array: np.ndarray, orientation: int, fmt: str) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    params: dict[str, object] = {"exif": exif.tobytes()}
    if fmt == "JPEG":
        params.update(quality=100, subsampling=0)
    return _encode(Image.fromarray(array), fmt, **params)


@pytest.fixture()
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if any pixel data is decoded (the caps must act on the header alone)."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("pixel data was decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(Image, "_getdecoder", refuse)


def _assert_typed(error: BaseException) -> None:
    assert isinstance(error, ValueError)
    assert isinstance(error, CamlibError)
    assert str(error).strip()


# --- helpers are valid files (so the rejections below are about size, not about broken bytes) -----------------------

def test_crafted_files_are_valid_images() -> None:
    small = decode_image(_bilevel_png(37, 21), max_side=None)
    assert small.pixels.shape == (21, 37, 3) and (small.pixels == 0).all()
    assert decode_image(_gif_declaring(12, 10)).original_size == (12, 10)
    with Image.open(io.BytesIO(_jpeg_declaring(16, 16))) as image:
        image.load()


# --- rows 1-3: empty, not an image, real format wins ----------------------------------------------------------------

def test_zero_bytes_is_empty_file() -> None:
    with pytest.raises(InvalidImageError, match="empty") as info:
        decode_image(b"")
    _assert_typed(info.value)


@pytest.mark.parametrize(
    "data",
    [
        b"just some text, not a picture\n" * 4,
        b"\x7fELF\x02\x01\x01\x00" + bytes(56),
        b"MZ\x90\x00\x03\x00\x00\x00\x04\x00" + bytes(54),
        b"\x89PNG\r\n\x1a\n",  # a PNG signature and nothing else
        bytes(range(256)) * 4,
    ],
    ids=["text", "elf", "mz-exe", "png-signature-only", "binary-garbage"],
)
def test_non_image_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(InvalidImageError) as info:
        decode_image(data)
    _assert_typed(info.value)
    assert "not a valid image" in str(info.value) or "corrupted" in str(info.value)


@pytest.mark.parametrize("data", [b"\x7fELF\x02\x01\x01\x00" + bytes(56), b"MZ\x90\x00" + bytes(60), b"hello"])
def test_non_image_bytes_say_not_a_valid_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError, match="not a valid image"):
        decode_image(data)


def test_real_format_is_reported_whatever_the_name() -> None:
    # decode_image takes bytes only; JPEG bytes that a user named "x.png" are decoded and reported as JPEG.
    data = _encode(Image.fromarray(_rgb_noise()), "JPEG")
    decoded = decode_image(data)
    assert isinstance(decoded, DecodedImage)
    assert decoded.format == "JPEG"
    assert decoded.pixels.shape == (48, 64, 3) and decoded.pixels.dtype == np.uint8


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_decode(fmt: str) -> None:
    decoded = decode_image(_encode(Image.new("RGB", (16, 12), (200, 100, 50)), fmt))
    assert decoded.format == fmt
    assert decoded.pixels.shape == (12, 16, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.flags.c_contiguous
    tolerance = 0 if fmt in ("PNG", "BMP", "TIFF") else 8
    assert np.abs(decoded.pixels.astype(int) - (200, 100, 50)).max() <= tolerance


# --- size caps (rows 6-9) -------------------------------------------------------------------------------------------

def test_no_decoding_fixture_detects_decoding(no_decoding: None) -> None:
    with pytest.raises(AssertionError, match="pixel data was decoded"):
        decode_image(_bilevel_png(64, 48))


def test_file_over_max_bytes_is_rejected_before_decoding(no_decoding: None) -> None:
    data = _bilevel_png(64, 48)  # built without Pillow: the fixture already forbids decoding
    with pytest.raises(ImageTooLargeError, match="too large") as info:
        decode_image(data, max_bytes=len(data) - 1)
    _assert_typed(info.value)
    assert isinstance(info.value, InvalidImageError)


def test_file_at_max_bytes_is_accepted() -> None:
    data = _encode(Image.fromarray(_rgb_noise()), "PNG")
    assert decode_image(data, max_bytes=len(data)).pixels.shape == (48, 64, 3)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("width", "height"),
    [(6000, 5000), (10000, 10000), (30000, 30000)],
    ids=["30MP-over-our-cap", "100MP-pillow-warns-only", "900MP-pillow-bomb-error"],
)
def test_declared_pixel_count_is_rejected_without_decoding(width: int, height: int, no_decoding: None) -> None:
    data = _bilevel_png(width, height)
    assert len(data) < 200_000  # a small file that would expand to width * height pixels
    with pytest.raises(ImageTooLargeError, match="(?i)too large") as info:
        decode_image(data)
    _assert_typed(info.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize("make", [_gif_declaring, _jpeg_declaring], ids=["gif-screen", "jpeg-sof"])
@pytest.mark.parametrize(("width", "height"), [(6000, 5000), (20000, 20000)], ids=["30MP", "400MP"])
def test_crafted_headers_are_rejected_without_decoding(make, width: int, height: int, no_decoding: None) -> None:
    with pytest.raises(ImageTooLargeError):
        decode_image(make(width, height))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(6000, 5000), (10000, 10000)])
def test_pixel_cap_message_gives_megapixels(width: int, height: int) -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(_bilevel_png(width, height))
    message = str(info.value)
    assert MP_MESSAGE.search(message), message
    assert f"{width * height / 1e6:.1f} MP > {MAX_PIXELS / 1e6:.0f} MP" in message


def test_pixel_cap_message_gives_megapixels_for_a_pillow_bomb() -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(_bilevel_png(30000, 30000))
    assert MP_MESSAGE.search(str(info.value)), str(info.value)


def test_pixel_cap_does_not_depend_on_warning_filters() -> None:
    data = _bilevel_png(10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError):
            decode_image(data)


def test_custom_pixel_cap_is_inclusive() -> None:
    data = _encode(Image.new("RGB", (50, 40)), "PNG")
    assert decode_image(data, max_pixels=2000).pixels.shape == (40, 50, 3)
    with pytest.raises(ImageTooLargeError, match="MP"):
        decode_image(data, max_pixels=1999)


def test_pillow_limit_is_untouched_and_restorable(monkeypatch: pytest.MonkeyPatch) -> None:
    # A smaller Pillow limit set only inside this test (monkeypatch restores it) also ends as ImageTooLargeError.
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError):
        decode_image(_encode(Image.new("RGB", (20, 20)), "PNG"))
    monkeypatch.undo()
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_large_jpeg_is_downscaled_once_with_a_note() -> None:
    gradient = np.zeros((2000, 3000, 3), dtype=np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 3000, dtype=np.uint8)[None, :]
    gradient[..., 2] = 120
    decoded = decode_image(_encode(Image.fromarray(gradient), "JPEG", quality=90))
    assert decoded.pixels.shape == (683, 1024, 3)
    assert max(decoded.pixels.shape[:2]) == MAX_SIDE
    assert decoded.original_size == (3000, 2000)
    assert any(note.startswith("downscaled from 3000x2000 to 1024x683") for note in decoded.notes), decoded.notes
    # Content survives the downscale: red grows left to right, blue stays near 120.
    assert decoded.pixels[:, :40, 0].mean() < 30 < 225 < decoded.pixels[:, -40:, 0].mean()
    assert abs(float(decoded.pixels[..., 2].mean()) - 120) < 6


def test_large_jpeg_with_draft_decoding_keeps_aspect_and_colour() -> None:
    # > 2 x max_side: decoded at reduced scale (draft) and then resized to the exact longest side.
    decoded = decode_image(_encode(Image.new("RGB", (4400, 2200), (30, 160, 90)), "JPEG"), max_side=512)
    assert decoded.pixels.shape == (256, 512, 3)
    assert decoded.original_size == (4400, 2200)
    assert np.abs(decoded.pixels.astype(int) - (30, 160, 90)).max() <= 6


def test_max_side_none_keeps_the_size() -> None:
    decoded = decode_image(_encode(Image.new("RGB", (1300, 20)), "PNG"), max_side=None)
    assert decoded.pixels.shape == (20, 1300, 3)
    assert not any("downscaled" in note for note in decoded.notes)


def test_small_image_is_not_resized() -> None:
    array = _rgb_noise(100, 120)
    decoded = decode_image(_encode(Image.fromarray(array), "PNG"))
    np.testing.assert_array_equal(decoded.pixels, array)
    assert decoded.notes == ()
    assert decoded.original_size == (120, 100)


# --- row 10: tiny images ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 2), (1, 64), (64, 1), (7, 300)])
def test_tiny_images_decode_with_a_note(width: int, height: int) -> None:
    decoded = decode_image(_encode(Image.new("RGB", (width, height), (9, 8, 7)), "PNG"))
    assert decoded.pixels.shape == (height, width, 3)
    assert (decoded.pixels == (9, 8, 7)).all()
    assert any("tiny" in note and f"{width}x{height}" in note for note in decoded.notes), decoded.notes


def test_eight_pixels_is_not_tiny() -> None:
    decoded = decode_image(_encode(Image.new("RGB", (TINY_SIDE, TINY_SIDE)), "PNG"))
    assert not any("tiny" in note for note in decoded.notes)


# --- row 11: truncated files -----------------------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_truncated_files_are_invalid(fmt: str) -> None:
    data = _encode(Image.fromarray(_rgb_noise(64, 64)), fmt)
    with pytest.raises(InvalidImageError, match="truncated|corrupted") as info:
        decode_image(data[: len(data) // 2])
    _assert_typed(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_truncated_png_is_invalid() -> None:
    data = _encode(Image.fromarray(_rgb_noise(64, 64)), "PNG")
    with pytest.raises(InvalidImageError, match="truncated|corrupted"):
        decode_image(data[: len(data) // 2])


def test_truncated_header_is_invalid() -> None:
    data = _encode(Image.fromarray(_rgb_noise(64, 64)), "PNG")
    with pytest.raises(InvalidImageError):
        decode_image(data[:20])


# --- row 12: EXIF orientation ----------------------------------------------------------------------------------------

def _asymmetric() -> np.ndarray:
    """Left half red, right half blue, a green top-left corner: every rotation and flip looks different."""
    array = np.zeros((20, 30, 3), dtype=np.uint8)
    array[:, :15] = (255, 0, 0)
    array[:, 15:] = (0, 0, 255)
    array[:5, :5] = (0, 255, 0)
    return array


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
@pytest.mark.parametrize(
    ("orientation", "turns"),
    [(1, 0), (3, 2), (6, -1), (8, 1)],  # np.rot90 turns: 6 = rotate 90 clockwise, 8 = 90 counter-clockwise
)
def test_exif_orientation_is_applied_once(fmt: str, orientation: int, turns: int) -> None:
    original = _asymmetric()
    data = _with_orientation(original, orientation, fmt)
    decoded = decode_image(data)
    expected = np.rot90(original, turns)
    tolerance = 0 if fmt == "PNG" else 12
    assert decoded.pixels.shape == expected.shape
    assert np.abs(decoded.pixels.astype(int) - expected).max() <= tolerance
    # Same as Pillow's own exif_transpose, and not applied twice (twice would be a further rotation).
    with Image.open(io.BytesIO(data)) as image:
        reference = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(decoded.pixels, reference)
    if turns:
        twice = np.rot90(original, 2 * turns)
        assert twice.shape != decoded.pixels.shape or np.abs(decoded.pixels.astype(int) - twice).max() > 100
    height, width = expected.shape[:2]
    assert decoded.original_size == (width, height)


def test_exif_rotation_and_downscale_of_a_large_jpeg() -> None:
    # Portrait phone photo: stored 2400 x 1200 (landscape) with orientation 6; shown 1200 x 2400, then downscaled.
    stored = np.zeros((1200, 2400, 3), dtype=np.uint8)
    stored[:, :1200] = (255, 0, 0)
    stored[:, 1200:] = (0, 0, 255)
    decoded = decode_image(_with_orientation(stored, 6, "JPEG"), max_side=512)
    assert decoded.original_size == (1200, 2400)
    assert decoded.pixels.shape == (512, 256, 3)
    assert any(note.startswith("downscaled from 1200x2400 to 256x512") for note in decoded.notes), decoded.notes
    # Rotated 90 degrees clockwise: the stored left (red) half is now on top.
    assert np.abs(decoded.pixels[:200].astype(int) - (255, 0, 0)).max() <= 12
    assert np.abs(decoded.pixels[-200:].astype(int) - (0, 0, 255)).max() <= 12


# --- rows 13-18: modes -----------------------------------------------------------------------------------------------

def test_cmyk_jpeg_becomes_rgb() -> None:
    data = _encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "CMYK"
    decoded = decode_image(data)
    assert decoded.pixels.shape == (16, 16, 3) and decoded.pixels.dtype == np.uint8
    assert np.abs(decoded.pixels.astype(int) - (255, 0, 0)).max() <= 8
    assert any("CMYK" in note for note in decoded.notes)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([[0, 257, 40000, 65535]], dtype=np.uint16).repeat(3, axis=0)
    data = _encode(Image.fromarray(values), fmt)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode.startswith("I;16")
    decoded = decode_image(data)
    assert decoded.pixels.shape == (3, 4, 3)
    assert decoded.pixels[0, :, 0].tolist() == [0, 1, 156, 255]  # 40000 / 257 = 155.6, not 255
    assert (decoded.pixels == decoded.pixels[..., :1]).all()
    assert any("16-bit" in note for note in decoded.notes)


def test_16_bit_rgb_tiff_is_scaled_not_clipped() -> None:
    values = np.zeros((4, 6, 3), dtype=np.uint16)
    values[..., 0], values[..., 1], values[..., 2] = 40000, 65535, 257
    decoded = decode_image(_tiff_rgb16(values))
    assert decoded.format == "TIFF"
    assert decoded.pixels.shape == (4, 6, 3)
    assert np.abs(decoded.pixels.astype(int) - (156, 255, 1)).max() <= 1


def test_32_bit_integer_image_in_16_bit_range_is_scaled() -> None:
    decoded = decode_image(_encode(Image.fromarray(np.full((8, 8), 40000, dtype=np.int32)), "TIFF"))
    assert (decoded.pixels == 156).all()


def test_32_bit_integer_image_out_of_range_is_rejected() -> None:
    with pytest.raises(InvalidImageError, match="unsupported image mode I") as info:
        decode_image(_encode(Image.fromarray(np.full((8, 8), -5, dtype=np.int32)), "TIFF"))
    _assert_typed(info.value)


def test_float_tiff_is_rejected() -> None:
    data = _encode(Image.fromarray(np.ones((8, 8), dtype=np.float32)), "TIFF")
    with pytest.raises(InvalidImageError, match="unsupported image mode F") as info:
        decode_image(data)
    _assert_typed(info.value)


def test_palette_png_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((3, 2), 1)
    decoded = decode_image(_encode(image, "PNG", transparency=0))  # index 0 (red) is fully transparent
    assert decoded.pixels.shape == (8, 8, 3)
    assert decoded.pixels[2, 3].tolist() == [0, 0, 255]
    assert decoded.pixels[0, 0].tolist() == [255, 255, 255]
    assert any("white" in note for note in decoded.notes)


def test_palette_png_without_transparency_keeps_colours() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    decoded = decode_image(_encode(image, "PNG"))
    assert (decoded.pixels == (0, 0, 255)).all()
    assert decoded.notes == ()


def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    rgba[0, 1, 3] = 128
    decoded = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert decoded.pixels.shape == (8, 8, 3)
    assert decoded.pixels[0, 0].tolist() == [255, 255, 255]
    assert decoded.pixels[1, 1].tolist() == [10, 20, 30]
    half = 128 / 255
    expected = np.array([10, 20, 30]) * half + 255 * (1 - half)
    assert np.abs(decoded.pixels[0, 1].astype(float) - expected).max() <= 1.0


def test_opaque_rgba_has_no_transparency_note() -> None:
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    rgba[..., :3] = (1, 2, 3)
    decoded = decode_image(_encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (decoded.pixels == (1, 2, 3)).all()
    assert not any("transparent" in note for note in decoded.notes)


def test_la_is_composited_on_white() -> None:
    gray = np.full((8, 8), 50, dtype=np.uint8)
    alpha = np.full((8, 8), 255, dtype=np.uint8)
    alpha[4, 4] = 0
    decoded = decode_image(_encode(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"))
    assert decoded.pixels[4, 4].tolist() == [255, 255, 255]
    assert decoded.pixels[0, 0].tolist() == [50, 50, 50]


def test_grayscale_is_replicated_to_three_channels() -> None:
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    decoded = decode_image(_encode(Image.fromarray(gray, "L"), "PNG"))
    assert decoded.pixels.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[..., channel], gray)


def test_bilevel_is_replicated_to_three_channels() -> None:
    bits = np.arange(64).reshape(8, 8) % 3 == 0
    image = Image.fromarray(bits)
    assert image.mode == "1"
    decoded = decode_image(_encode(image, "PNG"))
    assert decoded.pixels.shape == (8, 8, 3)
    np.testing.assert_array_equal(decoded.pixels, np.where(bits, 255, 0).astype(np.uint8)[..., None].repeat(3, 2))


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF", "WEBP"], ids=["gif", "apng", "multipage-tiff", "webp"])
def test_animated_image_uses_first_frame(fmt: str) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (16, 16), colour) for colour in colours]
    params: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    if fmt == "WEBP":
        params["lossless"] = True
    decoded = decode_image(_encode(frames[0], fmt, **params))
    assert decoded.format == fmt
    assert "animated image: using frame 1 of 3" in decoded.notes
    assert np.abs(decoded.pixels.astype(int) - (255, 0, 0)).max() <= 2


# --- row 19: formats that are never opened ---------------------------------------------------------------------------

def _other_format_samples() -> dict[str, bytes]:
    samples = {
        "eps": b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\nshowpage\n",
        "psd-header": b"8BPS\x00\x01" + bytes(6) + struct.pack(">HIIHH", 3, 10, 10, 8, 3) + bytes(64),
        "svg": b'<?xml version="1.0"?><svg xmlns="http://www.w3.org/2000/svg" width="10" height="10">'
               b'<script>alert(1)</script><rect width="10" height="10"/></svg>',
        "fits": b"SIMPLE  =                    T" + b" " * 50 + b"BITPIX  =                    8" + b" " * 49,
    }
    image = Image.new("RGB", (8, 8), (1, 2, 3))
    for fmt in ("ICO", "PPM", "TGA", "PCX", "DDS", "QOI"):
        try:
            samples[fmt.lower()] = _encode(image, fmt)
        except (KeyError, OSError, ValueError):  # a writer this Pillow build lacks
            continue
    return samples


@pytest.mark.parametrize("name", sorted(_other_format_samples()))
def test_formats_outside_the_allow_list_are_rejected(name: str) -> None:
    data = _other_format_samples()[name]
    with pytest.raises(InvalidImageError) as info:
        decode_image(data)
    _assert_typed(info.value)


def test_allow_list_excludes_risky_formats() -> None:
    assert set(imaging.ALLOWED_FORMATS) == {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
    assert not {"EPS", "PSD", "SVG", "FITS", "ICO"} & set(imaging.ALLOWED_FORMATS)


# --- row 20: bytes only ----------------------------------------------------------------------------------------------

def test_decode_image_takes_bytes_only_and_never_opens_files(monkeypatch: pytest.MonkeyPatch) -> None:
    parameters = inspect.signature(decode_image).parameters
    assert list(parameters) == ["data", "max_bytes", "max_pixels", "max_side"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in parameters.items() if name != "data")

    def no_files(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"filesystem access: {args!r}")

    data = _encode(Image.fromarray(_rgb_noise()), "PNG")
    monkeypatch.setattr("builtins.open", no_files)
    monkeypatch.setattr("os.open", no_files)
    assert decode_image(data).pixels.shape == (48, 64, 3)
    for name in ("../../etc/passwd.png", "a\x00.png", "<img src=x onerror=alert(1)>.png"):
        with pytest.raises(InvalidImageError):
            decode_image(name.encode())  # a file name passed by mistake is just non-image bytes


def test_bytearray_input_is_accepted() -> None:
    data = _encode(Image.fromarray(_rgb_noise()), "PNG")
    assert decode_image(bytearray(data)).pixels.shape == (48, 64, 3)


def test_result_is_frozen() -> None:
    decoded = decode_image(_encode(Image.new("RGB", (10, 10)), "PNG"))
    with pytest.raises(AttributeError):
        decoded.format = "PNG"  # type: ignore[misc]


# --- ensure_rgb_uint8 ------------------------------------------------------------------------------------------------

def test_ensure_rgb_uint8_passes_rgb_through() -> None:
    image = _rgb_noise(5, 7)
    assert ensure_rgb_uint8(image) is image


def test_ensure_rgb_uint8_replicates_grayscale() -> None:
    gray = np.arange(35, dtype=np.uint8).reshape(5, 7)
    out = ensure_rgb_uint8(gray)
    assert out.shape == (5, 7, 3) and out.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], gray)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((5, 7, 3), dtype=np.float32),
        np.zeros((5, 7, 3), dtype=np.uint16),
        np.zeros((5, 7, 3), dtype=np.int64),
        np.zeros((5, 7, 4), dtype=np.uint8),
        np.zeros((5, 7, 1), dtype=np.uint8),
        np.zeros((2, 5, 7, 3), dtype=np.uint8),
        np.zeros(7, dtype=np.uint8),
        [[0, 1], [2, 3]],
        None,
    ],
    ids=["float32", "uint16", "int64", "rgba", "one-channel", "batch", "1-d", "list", "none"],
)
def test_ensure_rgb_uint8_rejects_other_contracts(image: object) -> None:
    with pytest.raises(InvalidImageError) as info:
        ensure_rgb_uint8(image)  # type: ignore[arg-type]
    _assert_typed(info.value)
