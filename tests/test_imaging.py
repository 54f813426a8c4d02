"""Tests of camlib.imaging: safe decoding of user image bytes (bad-inputs catalogue rows 1-3 and 7-20).

Every bad file is generated in memory. Pillow's process-wide settings (``LOAD_TRUNCATED_IMAGES``,
``MAX_IMAGE_PIXELS``) are never changed here.
"""

from __future__ import annotations

import inspect
import io
import json
import re
import struct
import time
import warnings
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from helpers.images import bilevel_png, encode, gif_declaring, png_chunk, with_orientation
from helpers.memory import DECODE_SCRIPT, RSS_BASELINE, run_python
from PIL import GifImagePlugin, Image, ImageFile, ImageOps, JpegImagePlugin, PngImagePlugin, TiffImagePlugin

from camlib import imaging
from camlib.errors import CamlibError, ImageTooLargeError, InputError, InvalidImageError
from camlib.imaging import (
    FRAMES_COUNTED,
    MAX_PIXELS,
    MAX_SIDE,
    MAX_UPLOAD_BYTES,
    TINY_SIDE,
    DecodedImage,
    decode_image,
    ensure_rgb_uint8,
)

MP_MESSAGE = re.compile(r"\d+(\.\d+)? MP > \d+ MP")  # "image too large (30.0 MP > 25 MP)"


# --- helpers -------------------------------------------------------------------------------------------------------


def _rgb_noise(height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _jpeg_declaring(width: int, height: int) -> bytes:
    """A small JPEG whose SOF0 frame header declares ``width`` x ``height``."""
    data = bytearray(encode(Image.new("RGB", (16, 16), (10, 20, 30)), "JPEG"))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def _tiff_rgb16(array: np.ndarray) -> bytes:
    """An uncompressed little-endian 16-bit RGB TIFF (Pillow cannot write one)."""
    height, width, _ = array.shape
    pixels = array.astype("<u2").tobytes()
    bits = struct.pack("<3H", 16, 16, 16)
    tags = [
        (256, 3, 1, width),
        (257, 3, 1, height),
        (258, 3, 3, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, 0),
        (277, 3, 1, 3),
        (278, 3, 1, height),
        (279, 4, 1, len(pixels)),
    ]
    ifd_size = 2 + 12 * len(tags) + 4
    data_offset = 8 + len(bits) + ifd_size
    entries = b""
    for tag, kind, count, value in tags:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HH", value, 0) if kind == 3 and count == 1 else struct.pack("<I", value)
        entries += struct.pack("<HHI", tag, kind, count) + packed
    ifd = struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0)
    return b"II*\x00" + struct.pack("<I", 8 + len(bits)) + bits + ifd + pixels


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
    small = decode_image(bilevel_png(37, 21), max_side=None)
    assert small.pixels.shape == (21, 37, 3) and (small.pixels == 0).all()
    assert decode_image(gif_declaring(12, 10)).original_size == (12, 10)
    with Image.open(io.BytesIO(_jpeg_declaring(16, 16))) as image:
        image.load()


# --- rows 1-3: empty, not an image, real format wins ----------------------------------------------------------------


@pytest.mark.bad_input(1)
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
@pytest.mark.bad_input(2)
def test_non_image_bytes_are_rejected(data: bytes) -> None:
    with pytest.raises(InvalidImageError) as info:
        decode_image(data)
    _assert_typed(info.value)
    assert "not a valid image" in str(info.value) or "corrupted" in str(info.value)


@pytest.mark.bad_input(2)
@pytest.mark.parametrize("data", [b"\x7fELF\x02\x01\x01\x00" + bytes(56), b"MZ\x90\x00" + bytes(60), b"hello"])
def test_non_image_bytes_say_not_a_valid_image(data: bytes) -> None:
    with pytest.raises(InvalidImageError, match="not a valid image"):
        decode_image(data)


def test_real_format_is_reported_whatever_the_name() -> None:
    # JPEG bytes that a user named "x.png" are decoded and reported as JPEG.
    data = encode(Image.fromarray(_rgb_noise()), "JPEG")
    decoded = decode_image(data, filename="x.png")
    assert isinstance(decoded, DecodedImage)
    assert decoded.format == "JPEG"
    assert decoded.pixels.shape == (48, 64, 3) and decoded.pixels.dtype == np.uint8
    assert decoded.notes == ("the file is named .png but contains JPEG data; decoded as JPEG",)


_EXTENSIONS = {
    "PNG": ["png", "PNG", "apng"],
    "JPEG": ["jpg", "JPEG", "jpe", "jfif"],
    "WEBP": ["webp"],
    "BMP": ["bmp", "dib"],
    "TIFF": ["tif", "tiff"],
    "GIF": ["gif"],
}


@pytest.mark.bad_input(3)
@pytest.mark.parametrize("fmt", sorted(_EXTENSIONS))
def test_a_name_that_disagrees_with_the_content_gets_a_note(fmt: str) -> None:
    data = encode(Image.fromarray(_rgb_noise(16, 16)), fmt)
    for extension in _EXTENSIONS[fmt]:  # matching names (any case): no note
        assert decode_image(data, filename=f"holiday.{extension}").notes == ()
    for name in ("holiday", "", "a.b/holiday"):  # no extension: nothing to compare
        assert decode_image(data, filename=name).notes == ()
    others = [extension for other, names in _EXTENSIONS.items() if other != fmt for extension in names]
    for extension in [*others, "heic", "txt"]:
        note = f"the file is named .{extension.lower()} but contains {fmt} data; decoded as {fmt}"
        decoded = decode_image(data, filename=f"../dir/holiday.{extension}")
        assert decoded.notes == (note,) and decoded.format == fmt


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_allowed_formats_decode(fmt: str) -> None:
    decoded = decode_image(encode(Image.new("RGB", (16, 12), (200, 100, 50)), fmt))
    assert decoded.format == fmt
    assert decoded.pixels.shape == (12, 16, 3)
    assert decoded.pixels.dtype == np.uint8
    assert decoded.pixels.flags.c_contiguous
    tolerance = 0 if fmt in ("PNG", "BMP", "TIFF") else 8
    assert np.abs(decoded.pixels.astype(int) - (200, 100, 50)).max() <= tolerance


# --- size caps (rows 6-9) -------------------------------------------------------------------------------------------


def test_no_decoding_fixture_detects_decoding(no_decoding: None) -> None:
    with pytest.raises(AssertionError, match="pixel data was decoded"):
        decode_image(bilevel_png(64, 48))


def test_file_over_max_bytes_is_rejected_before_decoding(no_decoding: None) -> None:
    data = bilevel_png(64, 48)  # built without Pillow: the fixture already forbids decoding
    with pytest.raises(ImageTooLargeError, match="too large") as info:
        decode_image(data, max_bytes=len(data) - 1)
    _assert_typed(info.value)
    assert isinstance(info.value, InvalidImageError)


def test_file_at_max_bytes_is_accepted() -> None:
    data = encode(Image.fromarray(_rgb_noise()), "PNG")
    assert decode_image(data, max_bytes=len(data)).pixels.shape == (48, 64, 3)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("width", "height"),
    [(6000, 5000), (10000, 10000), (30000, 30000)],
    ids=["30MP-over-our-cap", "100MP-pillow-warns-only", "900MP-pillow-bomb-error"],
)
@pytest.mark.bad_input(7, 8)
def test_declared_pixel_count_is_rejected_without_decoding(width: int, height: int, no_decoding: None) -> None:
    data = bilevel_png(width, height)
    assert len(data) < 200_000  # a small file that would expand to width * height pixels
    with pytest.raises(ImageTooLargeError, match="(?i)too large") as info:
        decode_image(data)
    _assert_typed(info.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(
    ("make", "width", "height"),
    [
        (gif_declaring, 6000, 5000),
        (gif_declaring, 20000, 20000),
        (_jpeg_declaring, 20000, 20000),
        (_jpeg_declaring, 16000, 12501),
        (_jpeg_declaring, 65535, 65535),
    ],
    ids=["gif-30MP", "gif-400MP", "jpeg-400MP", "jpeg-just-over-200MP", "jpeg-4295MP"],
)
@pytest.mark.bad_input(7)
def test_crafted_headers_are_rejected_without_decoding(make, width: int, height: int, no_decoding: None) -> None:
    with pytest.raises(ImageTooLargeError, match="MP > "):
        decode_image(make(width, height))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
@pytest.mark.parametrize(("width", "height"), [(6000, 5000), (10000, 10000)])
def test_pixel_cap_message_gives_megapixels(width: int, height: int) -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(bilevel_png(width, height))
    message = str(info.value)
    assert MP_MESSAGE.search(message), message
    assert f"{width * height / 1e6:.1f} MP > {MAX_PIXELS / 1e6:.0f} MP" in message


def test_pixel_cap_message_gives_megapixels_for_a_pillow_bomb() -> None:
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(bilevel_png(30000, 30000))
    assert MP_MESSAGE.search(str(info.value)), str(info.value)


@pytest.mark.bad_input(8)
def test_pixel_cap_does_not_depend_on_warning_filters() -> None:
    data = bilevel_png(10000, 10000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ImageTooLargeError):
            decode_image(data)


def test_custom_pixel_cap_is_inclusive() -> None:
    data = encode(Image.new("RGB", (50, 40)), "PNG")
    assert decode_image(data, max_pixels=2000).pixels.shape == (40, 50, 3)
    with pytest.raises(ImageTooLargeError, match="MP"):
        decode_image(data, max_pixels=1999)


def test_pillow_limit_is_untouched_and_restorable(monkeypatch: pytest.MonkeyPatch) -> None:
    # A smaller Pillow limit set only inside this test (monkeypatch restores it) also ends as ImageTooLargeError.
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageTooLargeError):
        decode_image(encode(Image.new("RGB", (20, 20)), "PNG"))
    monkeypatch.undo()
    assert before == Image.MAX_IMAGE_PIXELS
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


def test_large_jpeg_is_downscaled_once_with_a_note() -> None:
    gradient = np.zeros((2000, 3000, 3), dtype=np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 3000, dtype=np.uint8)[None, :]
    gradient[..., 2] = 120
    decoded = decode_image(encode(Image.fromarray(gradient), "JPEG", quality=90))
    assert decoded.pixels.shape == (683, 1024, 3)
    assert max(decoded.pixels.shape[:2]) == MAX_SIDE
    assert decoded.original_size == (3000, 2000)
    assert any(note.startswith("downscaled from 3000x2000 to 1024x683") for note in decoded.notes), decoded.notes
    # Content survives the downscale: red grows left to right, blue stays near 120.
    assert decoded.pixels[:, :40, 0].mean() < 30 < 225 < decoded.pixels[:, -40:, 0].mean()
    assert abs(float(decoded.pixels[..., 2].mean()) - 120) < 6


def test_large_jpeg_with_draft_decoding_keeps_aspect_and_colour() -> None:
    # > 2 x max_side: decoded at reduced scale (draft) and then resized to the exact longest side.
    decoded = decode_image(encode(Image.new("RGB", (4400, 2200), (30, 160, 90)), "JPEG"), max_side=512)
    assert decoded.pixels.shape == (256, 512, 3)
    assert decoded.original_size == (4400, 2200)
    assert np.abs(decoded.pixels.astype(int) - (30, 160, 90)).max() <= 6


def test_max_side_none_keeps_the_size() -> None:
    decoded = decode_image(encode(Image.new("RGB", (1300, 20)), "PNG"), max_side=None)
    assert decoded.pixels.shape == (20, 1300, 3)
    assert not any("downscaled" in note for note in decoded.notes)


def test_small_image_is_not_resized() -> None:
    array = _rgb_noise(100, 120)
    decoded = decode_image(encode(Image.fromarray(array), "PNG"))
    np.testing.assert_array_equal(decoded.pixels, array)
    assert decoded.notes == ()
    assert decoded.original_size == (120, 100)


# --- row 9: large phone photos (JPEG decoded at reduced scale) -------------------------------------------------------


def _jpeg_with_sof(data: bytes, marker: bytes, width: int, height: int) -> bytes:
    """``data`` (a JPEG) with its frame header ``marker`` (SOF0 / SOF2) patched to declare ``width`` x ``height``."""
    data = bytearray(data)
    sof = data.index(marker)
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


@pytest.mark.bad_input(9)
@pytest.mark.parametrize(
    ("width", "height", "scale"), [(8000, 6000, 4), (12000, 9000, 8), (16000, 12500, 8)], ids=["48MP", "108MP", "200MP"]
)
def test_large_jpeg_headers_within_the_jpeg_cap_are_decoded_reduced(width: int, height: int, scale: int) -> None:
    # A 16x16 JPEG declaring a phone-photo size (libjpeg fills what the data does not cover): accepted by the caps
    # and decoded at 1/scale: the full-size canvas never exists.
    data = _jpeg_declaring(width, height)
    seen: list[tuple[int, int]] = []
    original_load = JpegImagePlugin.JpegImageFile.load

    def spy(self: Image.Image) -> object:
        seen.append(self.size)
        return original_load(self)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(JpegImagePlugin.JpegImageFile, "load", spy)
        decoded = decode_image(data)
    reduced = (-(-width // scale), -(-height // scale))  # libjpeg rounds up
    assert seen and set(seen) == {reduced}  # every load() (a second one is a no-op) at the reduced size
    assert decoded.notes[0] == f"decoded at 1/{scale} size: {width}x{height} -> {reduced[0]}x{reduced[1]}"
    assert decoded.original_size == (width, height) and max(decoded.pixels.shape) == MAX_SIDE


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_large_jpeg_without_downscaling_keeps_the_25_mp_cap(no_decoding: None) -> None:
    with pytest.raises(ImageTooLargeError, match=r"48\.0 MP > 25 MP"):
        decode_image(_jpeg_declaring(8000, 6000), max_side=None)


def test_large_progressive_jpeg_is_refused_without_decoding(no_decoding: None) -> None:
    # A progressive JPEG holds every DCT coefficient of the full image whatever the output scale.
    small = encode(Image.new("RGB", (16, 16), (10, 20, 30)), "JPEG", progressive=True)
    data = _jpeg_with_sof(small, b"\xff\xc2", 8000, 6000)
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(data)
    assert str(info.value) == (
        "image too large (48.0 MP > 25 MP): 8000x6000 pixels; a progressive JPEG cannot be decoded at reduced size"
    )


def test_progressive_jpeg_within_the_cap_is_decoded_reduced() -> None:
    data = encode(Image.new("RGB", (4400, 2200), (30, 160, 90)), "JPEG", progressive=True)
    decoded = decode_image(data, max_side=512)
    assert decoded.notes == ("decoded at 1/8 size: 4400x2200 -> 550x275", "downscaled from 4400x2200 to 512x256")
    assert np.abs(decoded.pixels.astype(int) - (30, 160, 90)).max() <= 6


@pytest.mark.parametrize(("width", "height", "scale", "drafted"), [(5, 5000, 4, "2x1250"), (5000, 8, 8, "625x1")])
def test_thin_jpeg_strips_are_decoded_reduced_with_the_right_scale(
    width: int, height: int, scale: int, drafted: str
) -> None:
    # libjpeg's scale: the largest of 8, 4, 2, 1 <= min(5 // 1, 5000 // 512) = 5, or min(5000 // 512, 8 // 1) = 8.
    decoded = decode_image(encode(Image.new("RGB", (width, height), (200, 40, 40)), "JPEG"), max_side=512)
    assert decoded.notes[0] == f"decoded at 1/{scale} size: {width}x{height} -> {drafted}"
    assert max(decoded.pixels.shape) == 512
    assert np.abs(decoded.pixels.astype(int) - (200, 40, 40)).max() <= 12


def test_cmyk_jpeg_is_decoded_reduced() -> None:
    data = encode(Image.new("CMYK", (4400, 2200), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    decoded = decode_image(data, max_side=512)
    assert decoded.pixels.shape == (256, 512, 3)
    assert decoded.notes == (
        "CMYK image converted to RGB",
        "decoded at 1/8 size: 4400x2200 -> 550x275",
        "downscaled from 4400x2200 to 512x256",
    )
    assert np.abs(decoded.pixels.astype(int) - (255, 0, 0)).max() <= 8


@pytest.mark.parametrize(
    ("side", "reduced"),
    [(1200, "decoded at 1/4 size: 1200x2400 -> 300x600"), (2200, "decoded at 1/8 size: 2200x4400 -> 275x550")],
)
def test_exif_rotation_and_reduced_decoding_of_a_large_jpeg(side: int, reduced: str) -> None:
    """A portrait phone photo: stored ``2 side x side`` (landscape) with EXIF orientation 6, shown ``side x 2 side``;
    the reduced decoding and the downscale are said in display orientation, and the picture is rotated 90 degrees
    clockwise (the stored left, red, half is on top)."""
    stored = np.zeros((side, 2 * side, 3), dtype=np.uint8)
    stored[:, :side] = (255, 0, 0)
    stored[:, side:] = (0, 0, 255)
    decoded = decode_image(with_orientation(stored, 6, "JPEG"), max_side=512)
    assert decoded.original_size == (side, 2 * side)
    assert decoded.pixels.shape == (512, 256, 3)
    assert decoded.notes == (reduced, f"downscaled from {side}x{2 * side} to 256x512")
    assert np.abs(decoded.pixels[:200].astype(int) - (255, 0, 0)).max() <= 12
    assert np.abs(decoded.pixels[-200:].astype(int) - (0, 0, 255)).max() <= 12


def test_memory_measurement_sees_what_the_script_allocates() -> None:
    # The harness is not blind: with this process holding 300 MB, a child that allocates 200 MB reports ~200 MB.
    held = np.ones(300 * 2**20, np.uint8)
    script = (
        "import cv2\nimport numpy as np\n"  # imported before the baseline: cv2's import alone is 25-30 MB
        + RSS_BASELINE
        + """
block = np.ones(200 * 2**20, np.uint8)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024)
"""
    )
    assert 195 < float(run_python(script)) < 230
    assert held.all()


_GENERATE_JPEG = """
import sys
from PIL import Image
width, height, path = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
ramp = Image.linear_gradient("L")  # 256 x 256, smooth: the JPEG stays around 1-2 MB
red = ramp.resize((width, height), Image.Resampling.NEAREST)
green = ramp.rotate(90).resize((width, height), Image.Resampling.NEAREST)
Image.merge("RGB", (red, green, Image.new("L", (width, height), 90))).save(path, "JPEG", quality=80)
"""


@pytest.fixture(scope="session")
def phone_photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 48 MP (8000 x 6000) and a 108 MP (12000 x 9000) baseline JPEG, made once per session in a subprocess."""
    folder = tmp_path_factory.mktemp("phone_photos")
    photos = {"48MP": (8000, 6000), "108MP": (12000, 9000)}
    for name, (width, height) in photos.items():
        run_python(_GENERATE_JPEG, width, height, folder / f"{name}.jpg")
    return {name: folder / f"{name}.jpg" for name in photos}


@pytest.mark.slow
@pytest.mark.bad_input(9)
@pytest.mark.parametrize(
    ("name", "notes", "shape"),
    [
        (
            "48MP",
            ["decoded at 1/4 size: 8000x6000 -> 2000x1500", "downscaled from 8000x6000 to 1024x768"],
            [768, 1024, 3],
        ),
        (
            "108MP",
            ["decoded at 1/8 size: 12000x9000 -> 1500x1125", "downscaled from 12000x9000 to 1024x768"],
            [768, 1024, 3],
        ),
    ],
)
def test_phone_photos_decode_in_bounded_memory_and_time(
    phone_photos: dict[str, Path], name: str, notes: list[str], shape: list[int]
) -> None:
    path = phone_photos[name]
    assert path.stat().st_size < MAX_UPLOAD_BYTES
    result = json.loads(run_python(DECODE_SCRIPT, path).strip().splitlines()[-1])
    assert result["notes"] == notes and result["shape"] == shape
    # The full-size RGB would be 144 MB (48 MP) or 324 MB (108 MP) as numpy, 4/3 of that in Pillow.
    assert result["extra_mb"] < 60, result  # measured: about 20 MB
    assert result["s"] < 10, result  # measured: 0.2 s
    # The content survived: a horizontal red ramp (mean ~127), a vertical green ramp, blue 90.
    assert result["mean"] == pytest.approx([127.5, 127.5, 90], abs=4)


def _diagonal(width: int, height: int) -> np.ndarray:
    """A ``(height, width)`` uint8 pattern that PNG compresses well (a 25 MP image stays under the upload cap)."""
    return ((np.arange(width)[None, :] * 7 + np.arange(height)[:, None] * 13) % 256).astype(np.uint8)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "bound_mb"), [("L", 60), ("RGB", 150), ("RGB rotated", 150), ("RGBA", 250), ("16-bit", 180)]
)
def test_25_mp_images_decode_without_full_size_copies(kind: str, bound_mb: float, tmp_path: Path) -> None:
    # Pillow holds 25 MP as 25 MB (L), 50 MB (16-bit) or 100 MB (RGB, RGBA). Before: 121, 622, 193, 193 and 479 MB
    # (an int64 and a float64 copy of 16-bit pixels, an RGB-to-RGB copy, a full-size rotation, a full-size composite).
    diagonal = _diagonal(5000, 5000)
    rgb = np.stack([diagonal, 255 - diagonal, diagonal // 2], axis=2)
    params: dict[str, object] = {}
    if kind == "L":
        image = Image.fromarray(diagonal)
    elif kind == "16-bit":
        image = Image.fromarray(diagonal.astype(np.uint16) * 257)
    elif kind == "RGBA":
        image = Image.fromarray(np.concatenate([rgb, (diagonal % 2 * 255)[..., None]], axis=2).astype(np.uint8))
    else:
        image = Image.fromarray(rgb)
        if kind == "RGB rotated":
            exif = Image.Exif()
            exif[0x0112] = 6
            params["exif"] = exif.tobytes()
    path = tmp_path / "image.png"
    image.save(path, "PNG", **params)
    del image, rgb
    result = json.loads(run_python(DECODE_SCRIPT, path).strip().splitlines()[-1])
    assert result["shape"] == [1024, 1024, 3]
    assert result["extra_mb"] < bound_mb, result  # measured: 31, 121, 121, 216 and 145 MB


@pytest.mark.bad_input(14)
def test_16_bit_scaling_is_exact_for_every_value() -> None:
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    decoded = decode_image(encode(Image.fromarray(values), "PNG"), max_side=None)
    np.testing.assert_array_equal(decoded.pixels[..., 0], np.round(values / 257.0).astype(np.uint8))


def test_alpha_composited_after_the_downscale_matches_compositing_first() -> None:
    # Pillow resizes RGBA with premultiplied alpha, so both orders give the same image up to rounding (random alpha
    # is the worst case).
    rng = np.random.default_rng(3)
    rgba = np.concatenate(
        [_diagonal(1600, 1200)[..., None].repeat(3, axis=2), rng.integers(0, 256, (1200, 1600, 1), dtype=np.uint8)],
        axis=2,
    )
    decoded = decode_image(encode(Image.fromarray(rgba), "PNG"), max_side=400)
    white = Image.new("RGBA", (1600, 1200), (255, 255, 255, 255))
    first = (
        Image.alpha_composite(white, Image.fromarray(rgba)).convert("RGB").resize((400, 300), Image.Resampling.LANCZOS)
    )
    difference = np.abs(decoded.pixels.astype(int) - np.asarray(first, dtype=int))
    assert difference.max() <= 6 and difference.mean() < 0.5  # 8-bit premultiplied values round low alphas


@pytest.mark.bad_input(9)
def test_a_900_mp_png_bomb_is_still_refused_fast() -> None:
    data = bilevel_png(30000, 30000)
    assert len(data) < 200_000
    start = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="MP > 25 MP"):
        decode_image(data)
    assert time.perf_counter() - start < 0.5  # header only; decoding would take seconds and 900 MB


@pytest.mark.bad_input(63)
@pytest.mark.parametrize(("width", "height"), [(65536, 1), (1, 65536), (25_000_000, 1), (1, 25_000_000)])
def test_sides_over_65535_pixels_are_refused_without_decoding(width: int, height: int, no_decoding: None) -> None:
    # A 1 x 25,000,000 strip is within the pixel cap, but Pillow keeps a pointer per row (200 MB of them) and
    # resampling it builds a 1.2 GB coefficient table.
    with pytest.raises(ImageTooLargeError) as info:
        decode_image(bilevel_png(width, height))
    assert str(info.value) == f"image too long: {width}x{height} pixels; each side must be at most 65,535 pixels"


@pytest.mark.parametrize(("width", "height"), [(65535, 1), (1, 65535)])
def test_sides_of_65535_pixels_are_accepted(width: int, height: int) -> None:
    decoded = decode_image(bilevel_png(width, height))
    assert decoded.original_size == (width, height)
    assert sorted(decoded.pixels.shape[:2]) == [1, MAX_SIDE] and (decoded.pixels == 0).all()


# --- row 10: tiny images ---------------------------------------------------------------------------------------------


@pytest.mark.bad_input(10)
@pytest.mark.parametrize(("width", "height"), [(1, 1), (2, 2), (1, 64), (64, 1), (7, 300)])
def test_tiny_images_decode_with_a_note(width: int, height: int) -> None:
    decoded = decode_image(encode(Image.new("RGB", (width, height), (9, 8, 7)), "PNG"))
    assert decoded.pixels.shape == (height, width, 3)
    assert (decoded.pixels == (9, 8, 7)).all()
    assert any("tiny" in note and f"{width}x{height}" in note for note in decoded.notes), decoded.notes


def test_eight_pixels_is_not_tiny() -> None:
    decoded = decode_image(encode(Image.new("RGB", (TINY_SIDE, TINY_SIDE)), "PNG"))
    assert not any("tiny" in note for note in decoded.notes)


# --- row 11: truncated files -----------------------------------------------------------------------------------------


@pytest.mark.bad_input(11)
@pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")
@pytest.mark.parametrize("fmt", ["JPEG", "WEBP", "BMP", "TIFF", "GIF"])
def test_truncated_files_are_invalid(fmt: str) -> None:
    data = encode(Image.fromarray(_rgb_noise(64, 64)), fmt)
    with pytest.raises(InvalidImageError, match="truncated|corrupted") as info:
        decode_image(data[: len(data) // 2])
    _assert_typed(info.value)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.bad_input(11)
def test_truncated_png_is_invalid() -> None:
    data = encode(Image.fromarray(_rgb_noise(64, 64)), "PNG")
    with pytest.raises(InvalidImageError, match="truncated|corrupted"):
        decode_image(data[: len(data) // 2])


def test_truncated_header_is_invalid() -> None:
    data = encode(Image.fromarray(_rgb_noise(64, 64)), "PNG")
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
@pytest.mark.bad_input(12)
def test_exif_orientation_is_applied_once(fmt: str, orientation: int, turns: int) -> None:
    original = _asymmetric()
    data = with_orientation(original, orientation, fmt)
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


# --- rows 13-18: modes -----------------------------------------------------------------------------------------------


@pytest.mark.bad_input(13)
def test_cmyk_jpeg_becomes_rgb() -> None:
    data = encode(Image.new("CMYK", (16, 16), (0, 255, 255, 0)), "JPEG", quality=95)  # pure red in CMYK
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "CMYK"
    decoded = decode_image(data)
    assert decoded.pixels.shape == (16, 16, 3) and decoded.pixels.dtype == np.uint8
    assert np.abs(decoded.pixels.astype(int) - (255, 0, 0)).max() <= 8
    assert any("CMYK" in note for note in decoded.notes)


@pytest.mark.bad_input(14)
@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_16_bit_grayscale_is_scaled_not_clipped(fmt: str) -> None:
    values = np.array([[0, 257, 40000, 65535]], dtype=np.uint16).repeat(3, axis=0)
    data = encode(Image.fromarray(values), fmt)
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode.startswith("I;16")
    decoded = decode_image(data)
    assert decoded.pixels.shape == (3, 4, 3)
    assert decoded.pixels[0, :, 0].tolist() == [0, 1, 156, 255]  # 40000 / 257 = 155.6, not 255
    assert (decoded.pixels == decoded.pixels[..., :1]).all()
    assert any("16-bit" in note for note in decoded.notes)


@pytest.mark.bad_input(14)
def test_16_bit_rgb_tiff_is_scaled_not_clipped() -> None:
    values = np.zeros((4, 6, 3), dtype=np.uint16)
    values[..., 0], values[..., 1], values[..., 2] = 40000, 65535, 257
    decoded = decode_image(_tiff_rgb16(values))
    assert decoded.format == "TIFF"
    assert decoded.pixels.shape == (4, 6, 3)
    assert np.abs(decoded.pixels.astype(int) - (156, 255, 1)).max() <= 1


@pytest.mark.bad_input(18)
def test_32_bit_integer_image_in_16_bit_range_is_scaled() -> None:
    decoded = decode_image(encode(Image.fromarray(np.full((8, 8), 40000, dtype=np.int32)), "TIFF"))
    assert (decoded.pixels == 156).all()


@pytest.mark.bad_input(18)
def test_32_bit_integer_image_out_of_range_is_rejected() -> None:
    with pytest.raises(InvalidImageError, match="unsupported image mode I") as info:
        decode_image(encode(Image.fromarray(np.full((8, 8), -5, dtype=np.int32)), "TIFF"))
    _assert_typed(info.value)


@pytest.mark.bad_input(18)
def test_float_tiff_is_rejected() -> None:
    data = encode(Image.fromarray(np.ones((8, 8), dtype=np.float32)), "TIFF")
    with pytest.raises(InvalidImageError, match="unsupported image mode F") as info:
        decode_image(data)
    _assert_typed(info.value)


@pytest.mark.bad_input(15)
def test_palette_png_with_transparency_is_composited_on_white() -> None:
    image = Image.new("P", (8, 8), 0)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((3, 2), 1)
    decoded = decode_image(encode(image, "PNG", transparency=0))  # index 0 (red) is fully transparent
    assert decoded.pixels.shape == (8, 8, 3)
    assert decoded.pixels[2, 3].tolist() == [0, 0, 255]
    assert decoded.pixels[0, 0].tolist() == [255, 255, 255]
    assert any("white" in note for note in decoded.notes)


def test_palette_png_without_transparency_keeps_colours() -> None:
    image = Image.new("P", (8, 8), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    decoded = decode_image(encode(image, "PNG"))
    assert (decoded.pixels == (0, 0, 255)).all()
    assert decoded.notes == ()


@pytest.mark.bad_input(15)
def test_rgba_is_composited_on_white() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., :3] = (10, 20, 30)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    rgba[0, 1, 3] = 128
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert decoded.pixels.shape == (8, 8, 3)
    assert decoded.pixels[0, 0].tolist() == [255, 255, 255]
    assert decoded.pixels[1, 1].tolist() == [10, 20, 30]
    half = 128 / 255
    expected = np.array([10, 20, 30]) * half + 255 * (1 - half)
    assert np.abs(decoded.pixels[0, 1].astype(float) - expected).max() <= 1.0


def test_opaque_rgba_has_no_transparency_note() -> None:
    rgba = np.full((8, 8, 4), 255, dtype=np.uint8)
    rgba[..., :3] = (1, 2, 3)
    decoded = decode_image(encode(Image.fromarray(rgba, "RGBA"), "PNG"))
    assert (decoded.pixels == (1, 2, 3)).all()
    assert not any("transparent" in note for note in decoded.notes)


@pytest.mark.bad_input(15)
def test_la_is_composited_on_white() -> None:
    gray = np.full((8, 8), 50, dtype=np.uint8)
    alpha = np.full((8, 8), 255, dtype=np.uint8)
    alpha[4, 4] = 0
    decoded = decode_image(encode(Image.fromarray(np.dstack([gray, alpha]), "LA"), "PNG"))
    assert decoded.pixels[4, 4].tolist() == [255, 255, 255]
    assert decoded.pixels[0, 0].tolist() == [50, 50, 50]


@pytest.mark.bad_input(16)
def test_grayscale_is_replicated_to_three_channels() -> None:
    gray = (np.arange(64, dtype=np.uint8).reshape(8, 8) * 4).astype(np.uint8)
    decoded = decode_image(encode(Image.fromarray(gray, "L"), "PNG"))
    assert decoded.pixels.shape == (8, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(decoded.pixels[..., channel], gray)


@pytest.mark.bad_input(16)
def test_bilevel_is_replicated_to_three_channels() -> None:
    bits = np.arange(64).reshape(8, 8) % 3 == 0
    image = Image.fromarray(bits)
    assert image.mode == "1"
    decoded = decode_image(encode(image, "PNG"))
    assert decoded.pixels.shape == (8, 8, 3)
    np.testing.assert_array_equal(decoded.pixels, np.where(bits, 255, 0).astype(np.uint8)[..., None].repeat(3, 2))


@pytest.mark.parametrize(
    ("fmt", "note"),
    [
        ("GIF", "animated image: using frame 1 (frames not counted)"),
        ("PNG", "animated image: using frame 1 of 3"),
        ("TIFF", "multi-page image: using page 1 of 3"),
        ("WEBP", "animated image: using frame 1 of 3"),
    ],
    ids=["gif", "apng", "multipage-tiff", "webp"],
)
@pytest.mark.bad_input(17)
def test_animated_image_uses_first_frame(fmt: str, note: str) -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (16, 16), colour) for colour in colours]
    params: dict[str, object] = {"save_all": True, "append_images": frames[1:]}
    if fmt == "WEBP":
        params["lossless"] = True
    decoded = decode_image(encode(frames[0], fmt, **params))
    assert decoded.format == fmt
    assert decoded.notes == (note,)
    assert np.abs(decoded.pixels.astype(int) - (255, 0, 0)).max() <= 2


@pytest.mark.parametrize("fmt", ["GIF", "PNG", "TIFF", "WEBP"])
def test_single_frame_files_have_no_frame_note(fmt: str) -> None:
    assert decode_image(encode(Image.new("RGB", (16, 16), (1, 2, 3)), fmt)).notes == ()


def _many_page_tiff(pages: int) -> bytes:
    """An uncompressed 1x1 grayscale TIFF of ``pages`` pages: page 1 is 200, the others 50 (12 bytes a page)."""
    header = b"II*\x00" + struct.pack("<I", 8)
    entry_count = 8
    ifd_size = 2 + 12 * entry_count + 4
    parts = [header]
    offset = 8
    for page in range(pages):
        pixel_offset = offset + ifd_size
        next_offset = 0 if page == pages - 1 else pixel_offset + 2  # pixel byte + pad to an even offset
        tags = [
            (256, 3, 1, 1),
            (257, 3, 1, 1),
            (258, 3, 1, 8),
            (259, 3, 1, 1),
            (262, 3, 1, 1),
            (273, 4, 1, pixel_offset),
            (278, 3, 1, 1),
            (279, 4, 1, 1),
        ]
        entries = b"".join(
            struct.pack("<HHI", tag, kind, count)
            + (struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value))
            for tag, kind, count, value in tags
        )
        parts.append(struct.pack("<H", entry_count) + entries + struct.pack("<I", next_offset))
        parts.append(bytes([200 if page == 0 else 50, 0]))
        offset = pixel_offset + 2
    return b"".join(parts)


def _many_frame_gif(frames: int) -> bytes:
    """A 1x1 GIF of ``frames`` frames: frame 1 is palette index 0 (red), the others index 1 (blue)."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + bytes([255, 0, 0, 0, 0, 255])
    control = b"\x21\xf9\x04\x00\x0a\x00\x00\x00"  # 0.1 s a frame
    descriptor = b"\x2c" + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    # LZW, minimum code size 2, 3-bit codes LSB first: clear (4), the index, end (5).
    first = control + descriptor + b"\x02\x02\x44\x01\x00"
    other = control + descriptor + b"\x02\x02\x4c\x01\x00"
    return header + first + other * (frames - 1) + b"\x3b"


def _many_frame_apng(frames: int) -> bytes:
    """A 1x1 RGB APNG of ``frames`` frames: frame 1 is red, the others blue."""
    red, blue = zlib.compress(b"\x00\xff\x00\x00"), zlib.compress(b"\x00\x00\x00\xff")

    def control(sequence: int) -> bytes:
        return png_chunk(b"fcTL", struct.pack(">IIIIIHHBB", sequence, 1, 1, 0, 0, 1, 10, 0, 0))

    parts = [
        b"\x89PNG\r\n\x1a\n",
        png_chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)),
        png_chunk(b"acTL", struct.pack(">II", frames, 0)),
        control(0),
        png_chunk(b"IDAT", red),
    ]
    sequence = 1
    for _ in range(frames - 1):
        parts += [control(sequence), png_chunk(b"fdAT", struct.pack(">I", sequence + 1) + blue)]
        sequence += 2
    parts.append(png_chunk(b"IEND", b""))
    return b"".join(parts)


def test_many_frame_helpers_are_valid_files() -> None:
    for data, frames in [(_many_page_tiff(5), 5), (_many_frame_gif(5), 5), (_many_frame_apng(5), 5)]:
        with Image.open(io.BytesIO(data)) as image:
            assert image.n_frames == frames
            image.seek(frames - 1)
            image.load()


@pytest.mark.bad_input(17)
@pytest.mark.parametrize(
    ("make", "plugin", "note", "pixel"),
    [
        (
            _many_page_tiff,
            TiffImagePlugin.TiffImageFile,
            f"multi-page image: using page 1 (more than {FRAMES_COUNTED} pages)",
            (200, 200, 200),
        ),
        (
            _many_frame_gif,
            GifImagePlugin.GifImageFile,
            "animated image: using frame 1 (frames not counted)",
            (255, 0, 0),
        ),
        (_many_frame_apng, PngImagePlugin.PngImageFile, "animated image: using frame 1 of 20000", (255, 0, 0)),
    ],
    ids=["tiff", "gif", "apng"],
)
def test_many_frame_files_use_frame_1_without_walking_the_frames(
    make, plugin: type, note: str, pixel: tuple[int, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # 60,000 TIFF pages took 19.2 s when the frames were counted; now at most FRAMES_COUNTED page headers are read.
    data = make(20_000)
    steps: list[int] = []
    original_seek = plugin._seek

    def spy(self: Image.Image, frame: int, *args: object, **kwargs: object) -> None:
        steps.append(frame)
        original_seek(self, frame, *args, **kwargs)

    monkeypatch.setattr(plugin, "_seek", spy)
    start = time.perf_counter()
    decoded = decode_image(data)
    elapsed = time.perf_counter() - start
    assert decoded.notes == (note, f"tiny image (1x1): below {TINY_SIDE} px the CAM is not meaningful")
    assert decoded.pixels.tolist() == [[list(pixel)]]
    assert max(steps, default=0) <= FRAMES_COUNTED + 1 and len(steps) <= 2 * FRAMES_COUNTED + 4, steps[-5:]
    assert elapsed < 2, elapsed  # walking all 20,000 frames takes several seconds


def test_tiff_pages_are_counted_up_to_the_limit() -> None:
    for pages in (2, FRAMES_COUNTED, FRAMES_COUNTED + 1):
        notes = decode_image(_many_page_tiff(pages)).notes
        expected = (
            f"multi-page image: using page 1 of {pages}"
            if pages <= FRAMES_COUNTED
            else f"multi-page image: using page 1 (more than {FRAMES_COUNTED} pages)"
        )
        assert notes[0] == expected


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
            samples[fmt.lower()] = encode(image, fmt)
        except (KeyError, OSError, ValueError):  # a writer this Pillow build lacks
            continue
    return samples


@pytest.mark.bad_input(19)
@pytest.mark.parametrize("name", sorted(_other_format_samples()))
def test_formats_outside_the_allow_list_are_rejected(name: str) -> None:
    data = _other_format_samples()[name]
    with pytest.raises(InvalidImageError) as info:
        decode_image(data)
    _assert_typed(info.value)


@pytest.mark.bad_input(19)
def test_allow_list_excludes_risky_formats() -> None:
    assert set(imaging.ALLOWED_FORMATS) == {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
    assert not {"EPS", "PSD", "SVG", "FITS", "ICO"} & set(imaging.ALLOWED_FORMATS)


# --- row 20: bytes only ----------------------------------------------------------------------------------------------


@pytest.mark.bad_input(20)
def test_decode_image_takes_bytes_only_and_never_opens_files(monkeypatch: pytest.MonkeyPatch) -> None:
    parameters = inspect.signature(decode_image).parameters
    assert list(parameters) == ["data", "max_bytes", "max_pixels", "max_side", "filename"]
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for name, p in parameters.items() if name != "data")

    def no_files(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"filesystem access: {args!r}")

    data = encode(Image.fromarray(_rgb_noise()), "PNG")
    monkeypatch.setattr("builtins.open", no_files)
    monkeypatch.setattr("os.open", no_files)
    assert decode_image(data, filename="../../etc/passwd.png").pixels.shape == (48, 64, 3)  # a name, never opened
    for name in ("../../etc/passwd.png", "a\x00.png", "<img src=x onerror=alert(1)>.png"):
        with pytest.raises(InvalidImageError):
            decode_image(name.encode())  # a file name passed by mistake is just non-image bytes


def test_bytearray_input_is_accepted() -> None:
    data = encode(Image.fromarray(_rgb_noise()), "PNG")
    assert decode_image(bytearray(data)).pixels.shape == (48, 64, 3)


def test_result_is_frozen() -> None:
    decoded = decode_image(encode(Image.new("RGB", (10, 10)), "PNG"))
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
        np.zeros((0, 7, 3), dtype=np.uint8),
        np.zeros((5, 0), dtype=np.uint8),
    ],
    ids=["float32", "uint16", "int64", "rgba", "one-channel", "batch", "1-d", "list", "none", "no-rows", "no-columns"],
)
def test_ensure_rgb_uint8_rejects_other_contracts(image: object) -> None:
    with pytest.raises(InvalidImageError) as info:
        ensure_rgb_uint8(image)  # type: ignore[arg-type]
    _assert_typed(info.value)


def test_ensure_rgb_batch_passes_batches_through() -> None:
    images = np.zeros((2, 5, 7, 3), np.uint8)
    assert imaging.ensure_rgb_batch(images) is images


@pytest.mark.parametrize(
    "images",
    [
        None,
        [[0]],
        np.zeros((5, 7, 3), np.uint8),
        np.zeros((2, 5, 7, 3), np.float32),
        np.zeros((2, 3, 5, 7), np.uint8),
        np.zeros((0, 5, 7, 3), np.uint8),
        np.zeros((2, 5, 0, 3), np.uint8),
    ],
    ids=["none", "list", "one-image", "float32", "nchw", "no-images", "no-columns"],
)
def test_ensure_rgb_batch_rejects_other_contracts(images: object) -> None:
    with pytest.raises(InvalidImageError, match="images") as info:
        imaging.ensure_rgb_batch(images)  # type: ignore[arg-type]
    _assert_typed(info.value)


@pytest.mark.parametrize(
    ("keyword", "value"),
    [
        ("max_bytes", 0),
        ("max_bytes", 1.5),
        ("max_bytes", True),
        ("max_pixels", -1),
        ("max_pixels", "25"),
        ("max_side", 0),
        ("filename", b"x.png"),
        ("filename", None),
    ],
)
def test_decode_image_refuses_bad_options_by_name(keyword: str, value: object) -> None:
    data = encode(Image.new("RGB", (4, 4)), "PNG")
    with pytest.raises(InputError, match=keyword) as info:
        decode_image(data, **{keyword: value})
    _assert_typed(info.value)


@pytest.mark.parametrize("data", [None, "image.png", [137, 80], np.zeros(8, np.uint8)], ids=str)
def test_decode_image_refuses_data_that_is_not_bytes(data: object) -> None:
    with pytest.raises(InputError, match="data must be the file's bytes"):
        decode_image(data)  # type: ignore[arg-type]


# --- transparency in every form the accepted formats declare it (row 78) -----------------------------------------

KEYED_SIZE = (20, 24)  # the example: 480 pixels, every third one black and declared transparent


def _keyed_grey(levels: int) -> np.ndarray:
    """``(24, 20)`` sample values cycling 0, 1, 2 (times ``levels``): 160 of the 480 pixels hold 0, the key."""
    return (np.arange(480).reshape(24, 20) % 3 * levels).astype(np.uint16)


def _png(samples: np.ndarray, colour_type: int, depth: int, trns: bytes | None) -> bytes:
    """A PNG written from its specification (Pillow writes no 16-bit RGB, no 2- or 4-bit grey, no 16-bit key):
    ``samples`` ``(H, W)`` or ``(H, W, 3)``, unfiltered rows, an optional ``tRNS`` payload."""
    height, width = samples.shape[:2]
    if depth < 8:
        bits = np.unpackbits(samples.astype(np.uint8)[..., None], axis=-1)[..., 8 - depth :]
        rows = [np.packbits(bits[y].ravel()).tobytes() for y in range(height)]
    else:
        rows = [samples[y].astype(">u2" if depth == 16 else "u1").tobytes() for y in range(height)]
    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + (png_chunk(b"tRNS", trns) if trns is not None else b"")
        + png_chunk(b"IDAT", zlib.compress(b"".join(b"\x00" + row for row in rows)))
        + png_chunk(b"IEND", b"")
    )


def _pillow_on_white(data: bytes) -> np.ndarray:
    """The reference: Pillow's own RGBA conversion of the file, composited on white with Pillow's alpha_composite."""
    rgba = Image.open(io.BytesIO(data)).convert("RGBA")
    return np.asarray(Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB"))


def _bmp_with_alpha(rgba: np.ndarray) -> bytes:
    """A 32-bit BMP with a BITMAPV4HEADER whose bit fields include an alpha mask (Pillow writes BMP without one)."""
    height, width, _ = rgba.shape
    pixels = rgba[::-1][..., [2, 1, 0, 3]].tobytes()  # bottom-up rows, BGRA
    header = struct.pack("<IiiHHIIiiII", 108, width, height, 1, 32, 3, len(pixels), 2835, 2835, 0, 0)
    header += struct.pack("<4I", 0x00FF0000, 0x0000FF00, 0x000000FF, 0xFF000000) + b"BGRs" + bytes(48)
    offset = 14 + len(header)
    return b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset) + header + pixels


def _tiff_with_alpha(samples: np.ndarray, photometric: str, extra: str) -> bytes:
    tifffile = pytest.importorskip("tifffile")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, samples, photometric=photometric, extrasamples=[extra])
    return buffer.getvalue()


def _alpha_ramp() -> np.ndarray:
    """``(24, 20, 4)`` uint8: seeded colours, alpha 0 on a third of the pixels, 255 on a third, partial elsewhere."""
    rgba = np.random.default_rng(78).integers(0, 256, (24, 20, 4), dtype=np.uint8)
    cycle = np.arange(480).reshape(24, 20) % 3
    rgba[..., 3] = np.where(cycle == 0, 0, np.where(cycle == 1, 255, rgba[..., 3]))
    return rgba


def _palette_with_partial_alpha() -> bytes:
    image = Image.fromarray((np.arange(480).reshape(24, 20) % 4).astype(np.uint8), "L").convert("P")
    image.putpalette([0, 0, 0, 200, 10, 10, 10, 200, 10, 10, 10, 200] + [0] * 756)
    return encode(image, "PNG", transparency=bytes([0, 255, 128, 40]))  # one alpha per palette entry


def _gif(mode: str) -> bytes:
    """A GIF whose transparency index is 0, on every third pixel: "P" with a colour palette, or "L", which Pillow
    opens when the palette is the 256 grey levels in order."""
    cycle = (np.arange(480).reshape(24, 20) % 3).astype(np.uint8)
    image = Image.fromarray(np.where(cycle == 0, 0, np.arange(480).reshape(24, 20) % 256).astype(np.uint8), "L")
    if mode == "P":
        image = Image.fromarray(cycle, "L").convert("P")
        image.putpalette([0, 0, 0, 250, 0, 0, 0, 0, 250] + [0] * 759)
    return encode(image, "GIF", transparency=0, optimize=False)  # optimize would drop unused grey levels


# Every way an accepted format declares transparency that Pillow's RGBA conversion reads right.
PILLOW_TRANSPARENCY_CASES = {
    "png-L-tRNS": lambda: encode(Image.fromarray((_keyed_grey(100)).astype(np.uint8), "L"), "PNG", transparency=0),
    "png-RGB-tRNS": lambda: encode(
        Image.fromarray(np.dstack([_keyed_grey(100), _keyed_grey(50), _keyed_grey(20)]).astype(np.uint8), "RGB"),
        "PNG",
        transparency=(0, 0, 0),
    ),
    "png-1-tRNS": lambda: _png(_keyed_grey(1) % 2, 0, 1, struct.pack(">H", 0)),
    "png-P-tRNS-index": lambda: encode(
        Image.fromarray(_keyed_grey(1).astype(np.uint8), "L").convert("P"), "PNG", transparency=0
    ),
    "png-P-tRNS-partial-alpha": _palette_with_partial_alpha,
    "png-LA": lambda: encode(Image.fromarray(_alpha_ramp()[..., [0, 3]], "LA"), "PNG"),
    "png-RGBA": lambda: encode(Image.fromarray(_alpha_ramp(), "RGBA"), "PNG"),
    "png-RGBA-16-bit": lambda: _png(_alpha_ramp().astype(np.uint16) * 257 + 3, 6, 16, None),
    "png-LA-16-bit": lambda: _png((_alpha_ramp().astype(np.uint16) * 257 + 3)[..., [0, 3]], 4, 16, None),
    "gif-P-index": lambda: _gif("P"),
    "gif-L-index": lambda: _gif("L"),
    "webp-RGBA": lambda: encode(Image.fromarray(_alpha_ramp(), "RGBA"), "WEBP", lossless=True),
    "webp-RGBA-lossy": lambda: encode(Image.fromarray(_alpha_ramp(), "RGBA"), "WEBP", quality=80),
    "tiff-RGBA-unassociated": lambda: _tiff_with_alpha(_alpha_ramp(), "rgb", "unassalpha"),
    "tiff-RGBA-associated": lambda: _tiff_with_alpha(_alpha_ramp(), "rgb", "assocalpha"),
    "tiff-RGBA-16-bit": lambda: _tiff_with_alpha(_alpha_ramp().astype(np.uint16) * 257 + 3, "rgb", "unassalpha"),
    "bmp-v4-alpha-mask": lambda: _bmp_with_alpha(_alpha_ramp()),
    "jpeg-none": lambda: encode(Image.fromarray(_alpha_ramp()[..., :3], "RGB"), "JPEG", quality=95),
}


@pytest.mark.bad_input(78)
@pytest.mark.bad_input(15)
@pytest.mark.parametrize("case", list(PILLOW_TRANSPARENCY_CASES))
def test_transparency_equals_pillows_rgba_conversion_on_white(case: str) -> None:
    data = PILLOW_TRANSPARENCY_CASES[case]()
    if case.startswith("gif-"):  # both GIF modes are exercised
        assert Image.open(io.BytesIO(data)).mode == case.split("-")[1]
    expected = _pillow_on_white(data)
    decoded = decode_image(data)
    np.testing.assert_array_equal(decoded.pixels, expected)
    declares = case != "jpeg-none"
    assert declares == any("white background" in note for note in decoded.notes)
    if declares:  # the reference itself has transparent pixels: the case is not vacuous
        assert (Image.open(io.BytesIO(data)).convert("RGBA").getextrema()[3][0]) == 0


def test_a_format_camlib_does_not_accept_stays_refused() -> None:
    data = encode(Image.fromarray(_alpha_ramp(), "RGBA").resize((32, 32)), "ICO")
    with pytest.raises(InvalidImageError, match="not a valid image"):
        decode_image(data)


@pytest.mark.bad_input(78)
@pytest.mark.parametrize("depth", [1, 2, 4, 8, 16])
def test_a_grey_colour_key_at_every_png_depth_follows_the_specification(depth: int) -> None:
    """PNG 11.3.2.1: a grey image's pixels whose sample equals the tRNS key are transparent, at any bit depth. Pillow
    keeps 2-, 4- and 16-bit keyed images opaque, so the reference is the definition: white where the stored sample is
    the key, the same file without its tRNS chunk everywhere else."""
    top = 1 if depth == 1 else (2**depth - 1) // 2
    samples = _keyed_grey(top) if depth > 1 else _keyed_grey(1) % 2
    key = struct.pack(">H", 0)
    keyed, opaque = decode_image(_png(samples, 0, depth, key)), decode_image(_png(samples, 0, depth, None))
    transparent = samples == 0
    assert transparent.sum() == (160 if depth > 1 else 320)
    np.testing.assert_array_equal(keyed.pixels[transparent], 255)
    np.testing.assert_array_equal(keyed.pixels[~transparent], opaque.pixels[~transparent])
    assert (opaque.pixels[transparent] == 0).all()  # black before: 160 pixels off by 255 levels
    assert any("white background" in note for note in keyed.notes)


@pytest.mark.bad_input(78)
@pytest.mark.parametrize("key_kind", ["black", "shares-high-bytes"])
def test_a_16_bit_rgb_colour_key_matches_libpng(key_kind: str) -> None:
    """16-bit RGB with a tRNS colour: libpng's tRNS expansion (OpenCV's IMREAD_UNCHANGED decodes it as alpha) is the
    reference of which pixels are transparent. The key compares all 16 bits: a pixel with the key's high bytes but
    other low bytes stays opaque."""
    cycle = np.arange(480).reshape(24, 20) % 3
    samples = np.stack([cycle * 20000, cycle * 9000 + 1, cycle * 300 + 2], axis=2).astype(np.uint16)
    key = (0, 1, 2) if key_kind == "black" else (20000, 9001, 302)
    if key_kind == "shares-high-bytes":  # same high bytes as the key, other low bytes: must stay opaque
        samples[0, :4] = (20000 + 1, 9001, 302)
    data = _png(samples, 2, 16, struct.pack(">HHH", *key))
    reference = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert reference.shape == (24, 20, 4) and reference.dtype == np.uint16
    transparent = reference[..., 3] == 0
    np.testing.assert_array_equal(transparent, (samples == np.array(key, np.uint16)).all(axis=2))  # PNG 11.3.2.1
    assert transparent.sum() == (160 if key_kind == "black" else 159)
    decoded, opaque = decode_image(data), decode_image(_png(samples, 2, 16, None))
    np.testing.assert_array_equal(decoded.pixels[transparent], 255)
    np.testing.assert_array_equal(decoded.pixels[~transparent], opaque.pixels[~transparent])
    if key_kind == "shares-high-bytes":
        assert not transparent[0, :4].any() and (decoded.pixels[0, :4] == opaque.pixels[0, :4]).all()


@pytest.mark.bad_input(78)
@pytest.mark.parametrize("channels", [[0, 3], [0, 1, 2, 3]], ids=["La", "RGBa"])
def test_associated_alpha_tiff_is_its_premultiplied_colour_on_white(channels: list[int]) -> None:
    """TIFF 6.0 ExtraSamples = 1 stores colour premultiplied by alpha, so on white it is ``c + 255 - alpha`` (the
    definition, up to one level of rounding). Pillow cannot convert grey "La" to RGBA itself: a mode no reference
    conversion covers, which was reported as a corrupted file."""
    samples = _alpha_ramp()[..., channels]
    alpha = samples[..., -1:].astype(np.int32)
    samples[..., :-1] = np.minimum(samples[..., :-1], samples[..., -1:])  # premultiplied: colour <= alpha
    photometric = "minisblack" if len(channels) == 2 else "rgb"
    decoded = decode_image(_tiff_with_alpha(samples, photometric, "assocalpha"))
    expected = samples[..., :-1].astype(np.int32) + 255 - alpha
    expected = np.repeat(expected, 3, axis=2) if len(channels) == 2 else expected
    assert np.abs(decoded.pixels.astype(np.int32) - expected).max() <= 1
    np.testing.assert_array_equal(decoded.pixels[alpha[..., 0] == 0], 255)
