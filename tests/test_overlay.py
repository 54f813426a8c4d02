"""Tests of camlib.overlay: colouring, blending and placing CAM maps (exact reference values, seeded inputs)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.image import show_cam_on_image

from camlib.errors import CamlibError
from camlib.overlay import (
    COLORMAPS,
    colorize,
    map_to_original,
    overlay_heatmap,
    overlay_like_pytorch_grad_cam,
    resize_map,
    signed_map,
    upscale_nearest,
)


def _image(height: int = 40, width: int = 56, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _cam(height: int = 40, width: int = 56, seed: int = 1) -> np.ndarray:
    cam = np.random.default_rng(seed).random((height, width), dtype=np.float32)
    cam[0, 0], cam[-1, -1] = 0.0, 1.0  # both ends of the range
    return cam


def _blend(image: np.ndarray, heat: np.ndarray, alpha: float) -> np.ndarray:
    """The documented formula ``(1 - alpha) * image + alpha * heat``, rounded, in float32 like camlib."""
    weight = np.float32(alpha)
    out = (np.float32(1.0) - weight) * image.astype(np.float32) + weight * heat.astype(np.float32)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


# --- pytorch-grad-cam reference --------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("image_weight", [0.5, 0.3, 0.8])
def test_overlay_like_pytorch_grad_cam_is_exact(seed: int, image_weight: float) -> None:
    image, cam = _image(seed=seed), _cam(seed=seed + 10)
    expected = show_cam_on_image(np.float32(image) / 255, cam, use_rgb=True, image_weight=image_weight)
    out = overlay_like_pytorch_grad_cam(image, cam, image_weight=image_weight)
    assert out.dtype == np.uint8 and out.shape == image.shape
    np.testing.assert_array_equal(out, expected)


def test_overlay_like_pytorch_grad_cam_default_weight() -> None:
    image, cam = _image(), _cam()
    expected = show_cam_on_image(image.astype(np.float32) / 255, cam, use_rgb=True)
    np.testing.assert_array_equal(overlay_like_pytorch_grad_cam(image, cam), expected)


# --- colorize --------------------------------------------------------------------------------------------------------


def test_colorize_jet_equals_opencv() -> None:
    cam = _cam()
    expected = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * cam), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    out = colorize(cam, "jet")
    assert out.dtype == np.uint8 and out.shape == cam.shape + (3,)
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(colorize(cam), expected)  # jet is the default


def test_colorize_jet_runs_from_blue_to_red() -> None:
    ends = colorize(np.array([[0.0, 1.0]], dtype=np.float32))
    assert ends[0, 0].tolist() == [0, 0, 128]  # dark blue in RGB order
    assert ends[0, 1].tolist() == [128, 0, 0]  # dark red


@pytest.mark.parametrize("name", sorted(COLORMAPS))
def test_every_colormap_matches_opencv(name: str) -> None:
    cam = _cam(8, 9)
    expected = cv2.cvtColor(cv2.applyColorMap(np.uint8(255 * cam), COLORMAPS[name]), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(colorize(cam, name), expected)


@pytest.mark.parametrize("name", ["rainbow", "JET", "", "COLORMAP_JET"])
def test_unknown_colormap(name: str) -> None:
    with pytest.raises(CamlibError, match="unknown colormap"):
        colorize(_cam(), name)
    with pytest.raises(CamlibError, match="unknown colormap"):
        overlay_heatmap(_image(), _cam(), colormap=name)


# --- overlay_heatmap -------------------------------------------------------------------------------------------------


def test_alpha_zero_is_the_image() -> None:
    image = _image()
    out = overlay_heatmap(image, _cam(), alpha=0.0)
    np.testing.assert_array_equal(out, image)
    assert out is not image


def test_alpha_one_is_the_heatmap() -> None:
    cam = _cam()
    np.testing.assert_array_equal(overlay_heatmap(_image(), cam, alpha=1.0), colorize(cam))
    np.testing.assert_array_equal(
        overlay_heatmap(_image(), cam, alpha=1.0, colormap="viridis"), colorize(cam, "viridis")
    )


@pytest.mark.parametrize("alpha", [0.5, 0.25, 0.7, 0.01])
def test_mid_alpha_is_the_documented_blend(alpha: float) -> None:
    image, cam = _image(), _cam()
    out = overlay_heatmap(image, cam, alpha=alpha)
    np.testing.assert_array_equal(out, _blend(image, colorize(cam), alpha))
    exact = (1 - alpha) * image.astype(np.float64) + alpha * colorize(cam).astype(np.float64)
    assert np.abs(out - exact).max() <= 0.5 + 1e-3  # rounded, not truncated


def test_default_alpha_is_half() -> None:
    image, cam = _image(), _cam()
    np.testing.assert_array_equal(overlay_heatmap(image, cam), overlay_heatmap(image, cam, alpha=0.5))


def test_overlay_does_not_modify_its_inputs() -> None:
    image, cam = _image(), _cam()
    image_copy, cam_copy = image.copy(), cam.copy()
    overlay_heatmap(image, cam, alpha=0.6, threshold=0.3, mask=cam > 0.5)
    np.testing.assert_array_equal(image, image_copy)
    np.testing.assert_array_equal(cam, cam_copy)


@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.5, 1.0])
def test_threshold_shows_the_image_below_it(threshold: float) -> None:
    image, cam = _image(), _cam()
    out = overlay_heatmap(image, cam, alpha=0.6, threshold=threshold)
    below = cam < threshold
    np.testing.assert_array_equal(out[below], image[below])
    np.testing.assert_array_equal(out[~below], _blend(image, colorize(cam), 0.6)[~below])
    if threshold == 0.0:
        np.testing.assert_array_equal(out, overlay_heatmap(image, cam, alpha=0.6))


def test_threshold_above_every_value_is_the_image() -> None:
    image = _image()
    np.testing.assert_array_equal(overlay_heatmap(image, _cam() * 0.5, alpha=0.9, threshold=0.6), image)


def test_mask_false_pixels_get_no_heat_and_are_dimmed() -> None:
    image, cam = _image(), _cam()
    mask = np.zeros(cam.shape, dtype=bool)
    mask[5:30, 10:40] = True
    out = overlay_heatmap(image, cam, alpha=0.5, mask=mask)
    np.testing.assert_array_equal(out[mask], overlay_heatmap(image, cam, alpha=0.5)[mask])
    dimmed = np.rint(image[~mask].astype(np.float32) * np.float32(0.45)).astype(np.uint8)
    np.testing.assert_array_equal(out[~mask], dimmed)
    bright = image[~mask] > 10
    assert (out[~mask][bright] < image[~mask][bright]).all()


def test_mask_all_true_changes_nothing() -> None:
    image, cam = _image(), _cam()
    np.testing.assert_array_equal(
        overlay_heatmap(image, cam, mask=np.ones(cam.shape, dtype=bool)), overlay_heatmap(image, cam)
    )


def test_mask_and_threshold_combine() -> None:
    image, cam = _image(), _cam()
    mask = np.zeros(cam.shape, dtype=bool)
    mask[:, :28] = True
    out = overlay_heatmap(image, cam, alpha=0.5, threshold=0.5, mask=mask)
    inside_cold = mask & (cam < 0.5)
    inside_hot = mask & (cam >= 0.5)
    np.testing.assert_array_equal(out[inside_cold], image[inside_cold])
    np.testing.assert_array_equal(out[inside_hot], _blend(image, colorize(cam), 0.5)[inside_hot])


@pytest.mark.parametrize("cam_shape", [(7, 7), (14, 20), (80, 112), (40, 1)])
def test_cam_of_another_size_is_resized_bilinearly(cam_shape: tuple[int, int]) -> None:
    image, cam = _image(), _cam(*cam_shape)
    out = overlay_heatmap(image, cam, alpha=0.5)
    resized = np.clip(cv2.resize(cam, (56, 40), interpolation=cv2.INTER_LINEAR), 0, 1)
    assert out.shape == image.shape
    np.testing.assert_array_equal(out, _blend(image, colorize(resized), 0.5))
    np.testing.assert_array_equal(resize_map(cam, (56, 40)), resized)


def test_resize_map_keeps_a_map_of_the_right_size() -> None:
    cam = _cam()
    assert resize_map(cam, (56, 40)) is cam
    out = resize_map(cam.astype(np.float64), (10, 20))
    assert out.shape == (20, 10) and out.dtype == np.float32
    assert out.min() >= 0 and out.max() <= 1


def test_float64_cam_is_accepted() -> None:
    image, cam = _image(), _cam()
    np.testing.assert_array_equal(overlay_heatmap(image, cam.astype(np.float64)), overlay_heatmap(image, cam))


@pytest.mark.parametrize(
    ("cam", "match"),
    [
        (np.full((40, 56), np.nan, dtype=np.float32), "NaN or Inf"),
        (np.where(np.eye(40, 56) > 0, np.nan, 0.5).astype(np.float32), "NaN or Inf"),
        (np.full((40, 56), np.inf, dtype=np.float32), "NaN or Inf"),
        (np.full((40, 56), -0.01, dtype=np.float32), r"\[0, 1\]"),
        (np.full((40, 56), 1.01, dtype=np.float32), r"\[0, 1\]"),
        (np.full((40, 56), 255.0, dtype=np.float32), r"\[0, 1\]"),
        (np.zeros((1, 40, 56), dtype=np.float32), "2-D"),
        (np.zeros(40, dtype=np.float32), "2-D"),
        ([[0.5]], "2-D"),
    ],
    ids=["all-nan", "some-nan", "inf", "negative", "above-one", "uint8-scale", "3-d", "1-d", "list"],
)
@pytest.mark.bad_input(34, 43)
def test_bad_cams_raise_typed_errors(cam: object, match: str) -> None:
    for overlay in (overlay_heatmap, overlay_like_pytorch_grad_cam):
        with pytest.raises(CamlibError, match=match) as info:
            overlay(_image(), cam)  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "image",
    [
        _image().astype(np.float32) / 255,
        _image().astype(np.uint16),
        _image().astype(np.int64),
        _image()[..., 0],
        np.dstack([_image(), np.full((40, 56), 255, dtype=np.uint8)]),
        _image()[None],
        _image().tolist(),
    ],
    ids=["float01", "uint16", "int64", "gray-2d", "rgba", "batch", "list"],
)
@pytest.mark.bad_input(43)
def test_bad_images_raise_typed_errors(image: object) -> None:
    for overlay in (overlay_heatmap, overlay_like_pytorch_grad_cam):
        with pytest.raises(CamlibError, match="uint8 RGB") as info:
            overlay(image, _cam())  # type: ignore[arg-type]
        assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("alpha", [-0.01, 1.01, 2.0, float("nan"), float("inf")])
def test_alpha_outside_unit_interval(alpha: float) -> None:
    with pytest.raises(CamlibError, match="alpha") as info:
        overlay_heatmap(_image(), _cam(), alpha=alpha)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "mask", [np.ones((20, 28), dtype=bool), np.ones((40, 56), dtype=np.uint8)], ids=["wrong-shape", "uint8-mask"]
)
def test_bad_mask_raises_a_typed_error(mask: np.ndarray) -> None:
    with pytest.raises(CamlibError):
        overlay_heatmap(_image(), _cam(), mask=mask)


# --- map_to_original -------------------------------------------------------------------------------------------------


def test_map_to_original_places_the_crop() -> None:
    cam = _cam(10, 12)
    full, inside = map_to_original(cam, (100, 120), (20.4, 10.6, 80.2, 70.4))
    # The box is rounded to whole pixels: left 20, top 11, right 80, bottom 70.
    assert full.shape == inside.shape == (100, 120)
    assert full.dtype == np.float32 and inside.dtype == bool
    expected_inside = np.zeros((100, 120), dtype=bool)
    expected_inside[11:70, 20:80] = True
    np.testing.assert_array_equal(inside, expected_inside)
    assert (full[~inside] == 0).all()
    np.testing.assert_array_equal(full[11:70, 20:80], resize_map(cam, (60, 59)))
    expected = np.clip(cv2.resize(cam, (60, 59), interpolation=cv2.INTER_LINEAR), 0, 1)
    np.testing.assert_allclose(full[11:70, 20:80], expected, atol=0)
    assert full.min() >= 0 and full.max() <= 1


def test_map_to_original_with_prepare_input_box() -> None:
    # The crop box prepare_input gives for a 300x451 image with resize 256 / crop 224.
    box = (80 * 451 / 384, 16 * 300 / 256, 304 * 451 / 384, 240 * 300 / 256)
    cam = np.zeros((224, 224), dtype=np.float32)
    cam[:, :112] = 1.0  # left half of what the model saw
    full, inside = map_to_original(cam, (300, 451), box)
    rows, cols = np.nonzero(inside)
    assert (rows.min(), rows.max() + 1, cols.min(), cols.max() + 1) == (19, 281, 94, 357)
    assert inside.sum() == (281 - 19) * (357 - 94)
    centre = (94 + 357) / 2
    assert full[150, 94 : int(centre) - 2].min() == 1.0
    assert full[150, int(centre) + 3 : 357].max() == 0.0


def test_map_to_original_whole_image_box() -> None:
    cam = _cam(30, 40)
    full, inside = map_to_original(cam, (30, 40), (0.0, 0.0, 40.0, 30.0))
    assert inside.all()
    np.testing.assert_array_equal(full, cam)


def test_map_to_original_clips_a_box_partly_outside() -> None:
    cam = _cam(10, 10)
    full, inside = map_to_original(cam, (100, 100), (-10.0, 60.0, 90.0, 160.0))
    expected_inside = np.zeros((100, 100), dtype=bool)
    expected_inside[60:100, 0:90] = True
    np.testing.assert_array_equal(inside, expected_inside)
    assert (full[~inside] == 0).all()
    assert np.isfinite(full).all() and full.min() >= 0 and full.max() <= 1


def test_map_to_original_clipping_keeps_the_map_aligned() -> None:
    cam = np.zeros((10, 10), dtype=np.float32)
    cam[:, :5] = 1.0  # hot over the box's left half: x in [-10, 40) of the original
    full, _ = map_to_original(cam, (100, 100), (-10.0, 0.0, 90.0, 100.0))
    unclipped = cv2.resize(cam, (100, 100), interpolation=cv2.INTER_LINEAR)  # the map over the whole box
    np.testing.assert_allclose(full[:, :90], unclipped[:, 10:], atol=1e-6)


@pytest.mark.parametrize(
    "box",
    [(200.0, 0.0, 300.0, 50.0), (-50.0, -50.0, -1.0, -1.0), (10.0, 10.0, 10.2, 40.0)],
    ids=["right-of-image", "above-left", "empty-after-rounding"],
)
def test_map_to_original_box_outside_gives_zeros(box: tuple[float, float, float, float]) -> None:
    full, inside = map_to_original(_cam(10, 10), (100, 100), box)
    assert not inside.any()
    assert (full == 0).all()


# --- upscale_nearest -------------------------------------------------------------------------------------------------


def test_upscale_nearest_blocks() -> None:
    image = _image(32, 32)
    out = upscale_nearest(image, 224)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8  # factor ceil(224 / 32) = 7
    for i in (0, 5, 31):
        for j in (0, 17, 31):
            assert (out[7 * i : 7 * i + 7, 7 * j : 7 * j + 7] == image[i, j]).all()
    np.testing.assert_array_equal(out, np.kron(image, np.ones((7, 7, 1), dtype=np.uint8)))


def test_upscale_nearest_uses_the_shorter_side_and_rounds_up() -> None:
    image = _image(10, 40)
    out = upscale_nearest(image, 25)
    assert out.shape == (30, 120, 3)  # factor ceil(25 / 10) = 3
    np.testing.assert_array_equal(out[::3, ::3], image)


def test_upscale_nearest_works_on_maps() -> None:
    cam = _cam(4, 4)
    out = upscale_nearest(cam, 8)
    assert out.shape == (8, 8) and out.dtype == cam.dtype
    np.testing.assert_array_equal(out[::2, ::2], cam)


@pytest.mark.parametrize("min_side", [32, 20, 1, 0])
def test_upscale_nearest_leaves_large_images_alone(min_side: int) -> None:
    image = _image(32, 48)
    assert upscale_nearest(image, min_side) is image


def test_upscale_nearest_single_pixel() -> None:
    pixel = np.array([[[1, 2, 3]]], dtype=np.uint8)
    out = upscale_nearest(pixel, 16)
    assert out.shape == (16, 16, 3)
    assert (out == (1, 2, 3)).all()


@pytest.mark.parametrize(("raw_shape", "shape"), [((7, 7), (224, 224)), ((8, 6), (224, 300)), ((14, 14), (14, 14))])
def test_signed_map_is_torchs_bilinear_resize_over_the_largest_absolute_value(raw_shape, shape):
    raw = np.random.default_rng(3).normal(size=raw_shape).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(raw)[None, None], size=shape, mode="bilinear", align_corners=False)[0, 0]
    signed = signed_map(raw, shape)
    assert signed.shape == shape and signed.dtype == np.float32
    np.testing.assert_allclose(signed, expected.numpy() / np.abs(raw).max(), atol=1e-5)
    assert np.abs(signed).max() <= 1.0


def test_signed_map_keeps_evidence_against_the_class_that_the_relu_drops():
    raw = np.array([[2.0, -4.0], [0.0, 1.0]], np.float32)  # at native size: exactly raw / 4
    np.testing.assert_array_equal(signed_map(raw, (2, 2)), [[0.5, -1.0], [0.0, 0.25]])
    assert not signed_map(np.zeros((3, 3), np.float32), (6, 6)).any()


@pytest.mark.parametrize(
    ("raw", "shape"),
    [
        (np.full((2, 2), np.nan, np.float32), (4, 4)),
        (np.zeros((2, 2), np.uint8), (4, 4)),
        (np.zeros((2, 2, 2), np.float32), (4, 4)),
        (np.zeros((2, 2), np.float32), (0, 4)),
        ("map", (4, 4)),
    ],
)
def test_signed_map_refuses_bad_input(raw, shape):
    with pytest.raises(CamlibError):
        signed_map(raw, shape)
