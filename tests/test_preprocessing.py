"""Tests of camlib.models' preprocessing (``prepare_input``, ``prepare_batch``): torchvision's resize + centre crop,
in memory bounded for any aspect ratio (bad-inputs catalogue row 63).

The reference is ``TF.center_crop(TF.resize(x, [resize], antialias=True), [crop, crop])`` on uint8 tensors, which is
what torchvision's ``ImageClassification`` transform does before normalising.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from helpers.memory import DECODE_SCRIPT, RSS_BASELINE, run_python
from PIL import Image

from camlib import models
from camlib.errors import InputError, InvalidImageError
from camlib.models import MAX_RESIZED_PIXELS, Preprocessing, prepare_batch, prepare_input

PREPROCESSINGS = [
    Preprocessing(resize=256, crop=224),
    Preprocessing(resize=32, crop=32),
    Preprocessing(resize=64, crop=56),
]
# (height, width): square, 4:3, 3:4, 16:9, 9:16, 1:3, 3:1, odd, tiny, 1xN, Nx1 and thin strips.
SHAPES = [
    (300, 300),
    (300, 400),
    (400, 300),
    (360, 640),
    (640, 360),
    (100, 300),
    (300, 100),
    (301, 451),
    (7, 9),
    (1, 1),
    (2, 2),
    (1, 37),
    (37, 1),
    (17, 1000),
    (500, 3),
]


def _reference(images: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """uint8 ``(N, 3, crop, crop)``: torchvision's resize (shorter side, bilinear, antialiased) and centre crop."""
    batch = torch.from_numpy(np.array(images)).permute(0, 3, 1, 2)
    return TF.center_crop(TF.resize(batch, [pre.resize], antialias=True), [pre.crop, pre.crop])


def _noise(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _resized_pixels(height: int, width: int, pre: Preprocessing) -> int:
    new_h, new_w, _, _ = models._resize_geometry(height, width, pre)
    return new_h * new_w


def _assert_within_one_grey_level(view: torch.Tensor, reference: torch.Tensor) -> None:
    difference = (view.int() - reference.int()).abs()
    assert int(difference.max()) <= 1
    assert float((difference > 0).float().mean()) < 0.01  # only float rounding ties differ


# --- the same pixels as torchvision ----------------------------------------------------------------------------------


@pytest.mark.bad_input(63)
@pytest.mark.parametrize("pre", PREPROCESSINGS, ids=lambda p: f"{p.resize}-{p.crop}")
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_prepare_input_matches_torchvision(shape: tuple[int, int], pre: Preprocessing) -> None:
    image = _noise(*shape)  # noise: the hardest case for a resize that is off by a fraction of a pixel
    view = torch.from_numpy(prepare_input(image, pre).model_view).permute(2, 0, 1)
    reference = _reference(image[None], pre)[0]
    if _resized_pixels(*shape, pre) <= MAX_RESIZED_PIXELS:
        assert torch.equal(view, reference)  # torchvision itself: bit-identical
    else:
        _assert_within_one_grey_level(view, reference)


@pytest.mark.parametrize(
    "pre", [*PREPROCESSINGS, Preprocessing(resize=100, crop=120)], ids=lambda p: f"{p.resize}-{p.crop}"
)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_crop_window_path_matches_torchvision(
    shape: tuple[int, int], pre: Preprocessing, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Force the bounded path (only the crop window is computed) on every size; crop > resize pads with zeros.
    monkeypatch.setattr(models, "MAX_RESIZED_PIXELS", 0)
    image = _noise(*shape, seed=1)
    view = torch.from_numpy(prepare_input(image, pre).model_view).permute(2, 0, 1)
    _assert_within_one_grey_level(view, _reference(image[None], pre)[0])


def test_crop_window_path_is_exact_on_a_smooth_image(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = np.linspace(0, 255, 480)[:, None, None]
    cols = np.linspace(0, 255, 640)[None, :, None]
    image = np.round(np.concatenate([rows + 0 * cols, 0 * rows + cols, (rows + cols) / 2], axis=2)).astype(np.uint8)
    monkeypatch.setattr(models, "MAX_RESIZED_PIXELS", 0)
    pre = Preprocessing(resize=256, crop=224)
    view = torch.from_numpy(prepare_input(image, pre).model_view).permute(2, 0, 1)
    reference = _reference(image[None], pre)[0]
    assert int((view.int() - reference.int()).abs().max()) <= 1
    assert float((view != reference).float().mean()) < 1e-3


def test_antialias_weights_are_normalised_and_local() -> None:
    for in_size, out_size in [(1000, 256), (3, 256), (256, 256), (451, 384), (1, 262144)]:
        indices, weights = models._antialias_weights(in_size, out_size, 0, out_size)
        np.testing.assert_allclose(weights.sum(axis=1), 1.0, atol=1e-12)
        assert (weights >= 0).all() and (indices >= 0).all() and (indices < in_size).all()
        # Output pixel i sits at input coordinate (i + 0.5) * in / out - 0.5 (align_corners=False); its weights lie
        # within the triangle's half-width max(in / out, 1) of it, and their centroid within half a pixel.
        centre = (np.arange(out_size) + 0.5) * in_size / out_size - 0.5
        support = max(in_size / out_size, 1.0)
        assert (np.abs(indices - centre[:, None])[weights > 0] < support + 0.5).all()
        centroid = (weights * indices).sum(axis=1)
        assert (np.abs(centroid - np.clip(centre, 0, in_size - 1)) <= 0.5 + 1e-9).all()


# --- the crop box ----------------------------------------------------------------------------------------------------


def test_crop_box_of_a_1_by_1024_strip() -> None:
    # Shorter side 1 -> 256, longer 1024 -> 262,144. Crop 224: top = 16, left = (262144 - 224) / 2 = 130,960.
    # Back to the original: both scales are 1 / 256.
    box = prepare_input(_noise(1, 1024), Preprocessing(resize=256, crop=224)).crop_box
    assert box == pytest.approx((130960 / 256, 16 / 256, 131184 / 256, 240 / 256), abs=1e-12)
    assert box == pytest.approx((511.5625, 0.0625, 512.4375, 0.9375), abs=1e-12)


@pytest.mark.bad_input(63)
@pytest.mark.parametrize("shape", [(1, 4000), (4000, 1), (3, 6000), (6000, 3), (200, 500), (500, 200)])
def test_crop_box_maps_the_model_view_back_onto_the_image(shape: tuple[int, int]) -> None:
    # Pixel values encode the position along the longer side: the view must come from inside the crop box.
    height, width = shape
    length = max(shape)
    ramp = np.linspace(0, 255, length).round().astype(np.uint8)
    image = np.broadcast_to((ramp[None, :] if width >= height else ramp[:, None])[..., None], (*shape, 3)).copy()
    pre = Preprocessing(resize=100, crop=80)
    prepared = prepare_input(image, pre)
    left, top, right, bottom = prepared.crop_box
    assert 0 <= left < right <= width and 0 <= top < bottom <= height
    assert (right - left) / width == pytest.approx(80 / (100 * width / min(shape)), rel=0.01)
    first, last = (
        (prepared.model_view[0, 0, 0], prepared.model_view[0, -1, 0])
        if width >= height
        else (prepared.model_view[0, 0, 0], prepared.model_view[-1, 0, 0])
    )
    start, stop = (left, right) if width >= height else (top, bottom)
    assert abs(int(first) - int(ramp[int(start)])) <= 2
    assert abs(int(last) - int(ramp[min(length - 1, int(stop))])) <= 2


# --- batches ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(32, 32), (40, 30), (1, 700), (3, 500)])
def test_prepare_batch_equals_prepare_input_per_image(shape: tuple[int, int]) -> None:
    images = np.stack([_noise(*shape, seed=s) for s in range(3)])
    pre = Preprocessing(resize=64, crop=56)
    batch = prepare_batch(images, pre)
    assert batch.shape == (3, 3, 56, 56) and batch.dtype == torch.float32
    for image, row in zip(images, batch, strict=True):
        torch.testing.assert_close(row, prepare_input(image, pre).tensor[0], atol=0, rtol=0)


def test_prepare_batch_in_chunks_equals_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    images = np.stack([_noise(40, 50, seed=s) for s in range(5)])
    pre = Preprocessing(resize=32, crop=28)
    whole = prepare_batch(images, pre)
    monkeypatch.setattr(models, "MAX_RESIZED_PIXELS", 2 * 32 * 40)  # two resized images per chunk: 3 chunks
    torch.testing.assert_close(prepare_batch(images, pre), whole, atol=0, rtol=0)
    torch.testing.assert_close(
        whole,
        (_reference(images, pre).float() / 255 - torch.tensor(pre.mean)[:, None, None])
        / torch.tensor(pre.std)[:, None, None],
        atol=1e-6,
        rtol=0,
    )


# --- bounded memory (row 63): a subprocess measures peak RSS ---------------------------------------------------------

_MEASURE = (
    """
import io, json, sys
import numpy as np
from PIL import Image
from camlib.imaging import decode_image
from camlib.models import Preprocessing, prepare_batch, prepare_input

def work(data):
    pixels = decode_image(data).pixels
    for pre in (Preprocessing(resize=256, crop=224), Preprocessing(resize=32, crop=32)):
        prepare_input(pixels, pre)
        prepare_batch(np.stack([pixels] * 4), pre)
    return pixels

files = sys.argv[1:]
datas = [open(path, "rb").read() for path in files]
warm_up = io.BytesIO()
Image.new("RGB", (64, 48), (90, 120, 150)).save(warm_up, "PNG")
work(warm_up.getvalue())  # one-time initialisation (thread pools, lazy imports) is not an upload's cost
"""
    + RSS_BASELINE
    + """
report = {}
for path, data in zip(files, datas):
    pixels = work(data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    report[path] = {"shape": list(pixels.shape), "extra_mb": (peak - baseline) / 1024}
print(json.dumps(report))
"""
)


def run_measurement(script: str, paths: list[Path]) -> dict[str, dict]:
    """Peak RSS over the baseline after imports (``extra_mb``, cumulative in file order) of ``script`` on ``paths``."""
    return json.loads(run_python(script, *paths).strip().splitlines()[-1])


def _png(width: int, height: int, mode: str = "RGB") -> bytes:
    """A diagonal pattern (compresses well: a 25 MP strip stays under the upload cap)."""
    diagonal = ((np.arange(width)[None, :] * 7 + np.arange(height)[:, None] * 13) % 256).astype(np.uint8)
    array = np.stack([diagonal, 255 - diagonal, diagonal // 2], axis=2) if mode == "RGB" else diagonal
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
@pytest.mark.bad_input(63)
def test_strips_decode_and_prepare_in_bounded_memory(tmp_path: Path) -> None:
    # Before the fix a 97-byte 4000x1 PNG cost 1.7 GB: resizing 1024x1 so its shorter side is 256 built 262,144x256.
    # 65,535 is the longest accepted side; 65,535 x 381 (grayscale, 25 MB decoded) is a strip at the pixel cap.
    sizes = [(4000, 1), (1, 5000), (6000, 3), (3, 6000), (65535, 1), (1, 65535), (65535, 381, "L"), (381, 65535, "L")]
    paths = []
    for width, height, *mode in sizes:
        path = tmp_path / f"{width}x{height}.png"
        path.write_bytes(_png(width, height, *mode))
        paths.append(path)
    report = run_measurement(_MEASURE, paths)
    for path in paths:
        assert report[str(path)]["extra_mb"] < 100, report  # measured: 29 MB
    assert report[str(paths[0])]["shape"] == [1, 1024, 3]
    assert report[str(paths[1])]["shape"] == [1024, 1, 3]


@pytest.mark.slow
@pytest.mark.bad_input(63)
def test_rgb_strip_at_the_pixel_cap_costs_no_more_than_a_square_photo(tmp_path: Path) -> None:
    # 25 MP of RGB is 100 MB in Pillow (4 bytes a pixel) whatever the shape: decoding the strip adds nothing to that
    # (preparing its 6 x 1024 result is covered above by the grayscale strips).
    strip, square = tmp_path / "strip.png", tmp_path / "square.png"
    strip.write_bytes(_png(65535, 381))
    square.write_bytes(_png(5000, 5000))
    strip_mb, square_mb = (
        json.loads(run_python(DECODE_SCRIPT, path).strip().splitlines()[-1])["extra_mb"] for path in (strip, square)
    )
    assert strip_mb <= square_mb + 10, (strip_mb, square_mb)  # measured: 91 MB and 120 MB
    assert square_mb < 4 * 25 + 40


def test_prepare_input_replicates_grayscale_and_refuses_other_contracts() -> None:
    gray = _noise(40, 50)[..., 0]
    pre = Preprocessing(resize=32, crop=28)
    torch.testing.assert_close(
        prepare_input(gray, pre).tensor,
        prepare_input(np.repeat(gray[..., None], 3, axis=2), pre).tensor,
        atol=0,
        rtol=0,
    )
    for bad in (gray.astype(np.float32), np.zeros((0, 5, 3), np.uint8), _noise(4, 4)[None]):
        with pytest.raises(InvalidImageError, match="image"):
            prepare_input(bad, pre)
    with pytest.raises(InvalidImageError, match="images"):
        prepare_batch(_noise(4, 4), pre)
    with pytest.raises(InputError, match="preprocessing"):
        prepare_input(gray, models.MODELS["resnet18"])  # type: ignore[arg-type]
