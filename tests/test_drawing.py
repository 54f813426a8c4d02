"""camlib/drawing.py: PNG and .npy bytes round-trip exactly; upscaling, labels and grids keep the pixel contract."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
from PIL import Image

from camlib.augment.grid import tile_grid
from camlib.drawing import JPEG_QUALITY, fast_jpeg, fast_png, grid_png, label_tiles, npy_bytes, png_bytes, upscale_tiles
from camlib.errors import InputError


def _image(height: int = 5, width: int = 7, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


@pytest.mark.parametrize("encode", [png_bytes, fast_png])
def test_png_round_trip_equals_the_input(encode) -> None:
    image = _image()
    png = encode(image)
    assert png.startswith(b"\x89PNG")
    np.testing.assert_array_equal(_decode(png), image)  # lossless, RGB order kept (fast_png goes through BGR)


def test_fast_png_refuses_what_it_cannot_encode() -> None:
    with pytest.raises(InputError):
        fast_png(np.zeros((0, 4, 3), np.uint8))


@pytest.mark.parametrize("name", ["chelsea", "astronaut", "coffee"])
def test_fast_jpeg_keeps_a_photo_within_its_quality_and_the_channel_order(name: str) -> None:
    """A real photo (scikit-image's) through ``fast_jpeg`` decodes (Pillow) to the same picture: PSNR above 35 dB at
    the default quality, higher at 100, each channel in its place (OpenCV encodes BGR), and fewer bytes than PNG."""
    photo = np.ascontiguousarray(getattr(skimage.data, name)()[:256, :256])
    psnr = {}
    for quality in (JPEG_QUALITY, 100):
        jpeg = fast_jpeg(photo, quality=quality)
        assert jpeg.startswith(b"\xff\xd8\xff")  # a JPEG SOI marker
        decoded = _decode(jpeg).astype(np.float64)
        psnr[quality] = 10 * np.log10(255**2 / np.mean((decoded - photo) ** 2))
        channel_means = decoded.reshape(-1, 3).mean(axis=0)
        np.testing.assert_allclose(channel_means, photo.reshape(-1, 3).mean(axis=0), atol=2.0)
    assert 35 < psnr[JPEG_QUALITY] < psnr[100]
    assert len(fast_jpeg(photo)) < len(fast_png(photo)) / 2


@pytest.mark.parametrize("array", [np.arange(12, dtype=np.float32).reshape(3, 4), np.array([-1, 2], np.int64)])
def test_npy_round_trip_keeps_dtype_shape_and_values(array: np.ndarray) -> None:
    back = np.load(io.BytesIO(npy_bytes(array)), allow_pickle=False)
    assert back.dtype == array.dtype and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_upscale_tiles_repeats_each_pixel_by_an_integer_factor() -> None:
    tiles = np.stack([_image(4, 6, seed) for seed in range(3)])
    big = upscale_tiles(tiles, 10)  # shorter side 4 -> factor 3 (12 >= 10)
    assert big.shape == (3, 12, 18, 3) and big.dtype == np.uint8
    np.testing.assert_array_equal(big[:, ::3, ::3], tiles)
    assert upscale_tiles(tiles, 4) is tiles  # already large enough: no copy


def test_label_tiles_draws_in_the_bottom_left_corner_only_and_copies() -> None:
    tiles = np.full((2, 64, 64, 3), 128, np.uint8)
    out = label_tiles(tiles, ["cat", "dog"], flagged=[False, True])
    assert (tiles == 128).all()  # the input is untouched
    assert (out[:, :32] == 128).all()  # the top half is untouched
    assert (out[0, -1, 0] == 0).all() and tuple(out[1, -1, 0]) == (200, 30, 30)  # black, red where flagged


def test_grid_png_is_the_upscaled_labelled_tile_grid() -> None:
    tiles = np.stack([_image(8, 8, seed) for seed in range(6)])
    np.testing.assert_array_equal(
        _decode(grid_png(tiles, 2, 3, min_tile_px=16)), tile_grid(upscale_tiles(tiles, 16), 2, 3)
    )
    labelled = _decode(grid_png(tiles, 2, 3, min_tile_px=16, labels=list("abcdef")))
    np.testing.assert_array_equal(labelled, tile_grid(label_tiles(upscale_tiles(tiles, 16), list("abcdef")), 2, 3))


def test_drawing_and_the_gallery_modules_do_not_import_albumentations() -> None:
    """The Misclassification page draws with ``camlib.drawing``; importing it in a fresh process (a new server's first
    page) must not import the Lab's Albumentations, about a second on this machine: ``grid_png`` imports it itself."""
    code = (
        "import sys\n"
        "import camlib.cifar, camlib.drawing, camlib.evaluation, camlib.models, camlib.overlay\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in {'albumentations', 'camlib'} and 'augment' in m"
        " or m.startswith('albumentations')))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert result.stdout.strip() == "[]", result.stdout
