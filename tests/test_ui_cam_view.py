"""Tests of ui.explorer.cam_view: the slow-method estimate and start button, the progress callback reaching camlib, and
the reduced hover heatmap."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.apptest import APP, TIMEOUT
from streamlit.testing.v1 import AppTest

from camlib.cam import compute_cam_grid, compute_cams, shared_scale_maps
from camlib.errors import NonFiniteError
from camlib.overlay import map_to_original, upscale_nearest
from ui import figures, keys, models, overlays, stores
from ui.explorer import cam_view, cams
from ui.widgets import ChosenImage


@pytest.mark.parametrize("shape", [(224, 224), (225, 300), (112, 112), (7, 7), (1000, 30)])
def test_hover_map_is_block_means_no_longer_than_hover_px(shape):
    cam = np.random.default_rng(0).random(shape).astype(np.float32)
    small = cam_view.hover_map(cam)
    factor = max(1, -(-max(shape) // cam_view.HOVER_PX))
    assert max(small.shape) <= cam_view.HOVER_PX
    assert small.shape == (shape[0] // factor, shape[1] // factor)
    assert np.isclose(small[0, 0], cam[:factor, :factor].mean())
    assert np.isclose(
        small[-1, -1], cam[(small.shape[0] - 1) * factor :][:factor, (small.shape[1] - 1) * factor :][:, :factor].mean()
    )


def test_the_reduced_heatmap_hovers_in_the_full_maps_pixels():
    figure = figures.heatmap_figure(np.zeros((112, 56)), size=(224, 112))
    trace = figure.data[0]
    assert np.allclose(trace.x, np.arange(56) * 2 + 0.5) and np.allclose(trace.y, np.arange(112) * 2 + 0.5)
    same = figures.heatmap_figure(np.zeros((4, 4)))
    assert np.allclose(same.data[0].x, np.arange(4))


def _open() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


@pytest.mark.bad_input(68)
def test_a_slow_method_shows_its_estimate_and_waits_for_the_button(monkeypatch: pytest.MonkeyPatch) -> None:
    at = _open()
    before = [m.value for m in at.markdown if m.value.startswith("**Explaining class")]
    monkeypatch.setattr(models, "forward_seconds", lambda model_key, device: 0.05)  # 1,280 channels: 64 s

    def never(*args, **kwargs):
        raise AssertionError("a slow method started without the button")

    monkeypatch.setattr(cams, "compute_cam_grid", never)
    at.selectbox(key=keys.CAM_METHOD).set_value("scorecam").run()
    assert not at.exception and not at.error
    [estimate] = at.info
    assert "1,280 extra forward passes" in estimate.value and "about 64 s on cpu" in estimate.value
    assert at.button(key=keys.CAM_START).label.startswith("Compute Score")
    assert [m.value for m in at.markdown if m.value.startswith("**Explaining class")] == before  # the last result
    assert "Showing the last result until you start this one." in [c.value for c in at.caption]


@pytest.mark.bad_input(68)
def test_the_button_runs_the_method_with_a_progress_callback_and_the_page_shows_camlibs_maps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Score-CAM on the CIFAR-10 ResNet-20 (64 channels): the page's progress callback is called once per batch and
    the map shown is camlib's own Score-CAM of the same input."""
    monkeypatch.setattr(cam_view, "SLOW_S", -1.0)  # every perturbation method asks first
    calls: list[tuple[int, int]] = []
    inputs: list[torch.Tensor] = []

    def recording(model, x, layers, methods, **kwargs):
        inputs.append(x.clone())
        progress = kwargs.pop("progress")
        report = None if progress is None else lambda d, t: (calls.append((d, t)), progress(d, t))
        return compute_cam_grid(model, x, layers, methods, progress=report, **kwargs)

    monkeypatch.setattr(cams, "compute_cam_grid", recording)
    cams._cam_store.clear()
    at = _open()
    at.selectbox(key=f"{keys.CAM}_model").set_value("cifar10_resnet20").run()
    inputs.clear()  # the Grad-CAM of the new model
    at.selectbox(key=keys.CAM_METHOD).set_value("scorecam").run()
    assert not inputs
    at.button(key=keys.CAM_START).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [x] = inputs
    assert calls and calls[-1][0] == calls[-1][1] == len(calls)  # one call per batch, the last one complete
    line = next(m.value for m in at.markdown if m.value.startswith("**Explaining class"))
    assert "Score\\-CAM" in line
    layers = at.session_state[keys.cam_layers("cifar10_resnet20")]
    expected = compute_cams(models.get_model("cifar10_resnet20", "cpu").model, x, layers, method="scorecam")
    shown = at.session_state[keys.CAM_LAST_VIEW][0].result
    for layer in layers:
        np.testing.assert_allclose(shown.maps[layer], expected.maps[layer], atol=1e-6)
    # A rerun that changes only the overlay reuses the result: no new computation, no button.
    at.slider(key=f"{keys.CAM}_alpha").set_value(0.7).run()
    assert len(inputs) == 1 and not at.info


@pytest.mark.bad_input(68)
def test_a_failed_slow_method_keeps_the_last_result(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cam_view, "SLOW_S", -1.0)

    def fail(*args, **kwargs):
        kwargs["progress"](1, 4)
        raise NonFiniteError("the model produced NaN scores")

    at = _open()
    before = [m.value for m in at.markdown if m.value.startswith("**Explaining class")]
    monkeypatch.setattr(cams, "compute_cam_grid", fail)
    cams._cam_store.clear()
    at.selectbox(key=keys.CAM_METHOD).set_value("scorecam").run()
    at.button(key=keys.CAM_START).click().run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Cannot compute the CAM: the model produced NaN scores"]
    assert [m.value for m in at.markdown if m.value.startswith("**Explaining class")] == before
    assert not at.get("progress")  # the bar went with the failed run


def _shown(image: np.ndarray) -> cam_view.Shown:
    """A ``Shown`` around a real Grad-CAM of a small convolutional model on ``image``'s centre crop."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()
    ).eval()
    crop = image[10:74, 20:84]
    x = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255
    result = compute_cam_grid(model, x, ["0", "1"], ["gradcam"], class_idx=1)["gradcam"]
    view = cams.CamOutcome(result=result, model_view=crop.copy(), crop_box=(20.0, 10.0, 84.0, 74.0))
    return cam_view.Shown(view, ("a", "b", "c", "d"), ChosenImage("random", image), None, "test", {})


@pytest.mark.parametrize("shared", [False, True])
def test_shown_derives_the_overlay_inputs_once_and_exactly(monkeypatch: pytest.MonkeyPatch, shared: bool) -> None:
    """An overlay change reruns the fragment with the same ``Shown``; the maps it draws, their placement on
    the original image and the overlay cache keys are derived on the first run only, and equal a fresh derivation."""
    image = np.random.default_rng(0).integers(0, 256, (90, 120, 3), dtype=np.uint8)
    shown = _shown(image)
    result = shown.view.result
    expected_maps = shared_scale_maps(result) if shared else result.maps
    for layer in result.layers:
        np.testing.assert_array_equal(shown.maps(shared)[layer], expected_maps[layer])
        tile = upscale_nearest(shown.view.model_view, cam_view.TILE_PX)
        np.testing.assert_array_equal(shown.tile, tile)
        assert shown.tile_key(shared, layer) == f"{stores.image_key(tile)}|{stores.image_key(expected_maps[layer][0])}"
        cam, inside, key = shown.on_original(shared, layer)
        ref_cam, ref_inside = map_to_original(expected_maps[layer][0], image.shape[:2], shown.view.crop_box)
        np.testing.assert_array_equal(cam, ref_cam)
        np.testing.assert_array_equal(inside, ref_inside)
        assert key == "|".join(stores.image_key(a) for a in (image, ref_cam, ref_inside))
    calls = []
    monkeypatch.setattr(overlays, "image_key", lambda array: calls.append(array) or "changed")
    for layer in result.layers:  # the fragment's next run: nothing hashed or placed again
        assert shown.tile_key(shared, layer) != "changed|changed"
        assert shown.on_original(shared, layer)[2] != "changed|changed|changed"
    assert calls == []
