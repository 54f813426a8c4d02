"""AppTest of the CAM Explorer's "Compare methods" view (ui.explorer.cam_grid): one overlay per method and
layer, all from one ``compute_cam_grid`` call whose cells equal camlib's one-method calls; a method that cannot explain
the layers is reported in its row while the others are drawn; slow methods show their cost and wait; an error keeps the
last grid."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from helpers.apptest import APP, TIMEOUT
from streamlit.testing.v1 import AppTest

from camlib.cam import METHODS, compute_cams
from camlib.errors import MethodError, NonFiniteError
from camlib.models import DEFAULT_MODEL, prepare_input
from camlib.pixel_attribution import PIXEL_METHODS, attribution_images
from ui import keys, models
from ui.explorer import cam_grid, cam_view, cams

LAYERS = ["blocks.5", "bn2"]  # blocks.5 does not feed the classifier directly: CAM refuses it


class Spy:
    """Wraps ``cams.compute_cam_grid``: records each call's layers, methods, input and results."""

    def __init__(self) -> None:
        self.calls: list[tuple[tuple[str, ...], tuple[str, ...], object, dict]] = []
        self.real = cams.compute_cam_grid

    def __call__(self, model, x, layers, methods, **kwargs):
        results = self.real(model, x, layers, methods, **kwargs)
        self.calls.append((tuple(layers), tuple(methods), x.clone(), results))
        return results


def _open_grid(monkeypatch: pytest.MonkeyPatch) -> tuple[AppTest, Spy]:
    cams._cam_store.clear()  # each test starts from computed-nothing (the store is process-wide)
    spy = Spy()
    monkeypatch.setattr(cams, "compute_cam_grid", spy)
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.radio(key=keys.CAM_VIEW).set_value("Compare methods").run()
    assert not at.exception, [e.value for e in at.exception]
    return at, spy


def _no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_the_grid_is_one_overlay_per_method_and_layer_from_one_call_equal_to_one_method_calls(monkeypatch):
    at, spy = _open_grid(monkeypatch)
    spy.calls.clear()
    at.multiselect(key=keys.cam_layers(DEFAULT_MODEL)).set_value(list(LAYERS)).run()
    _no_errors(at)
    [(layers, methods, x, results)] = spy.calls  # every method and layer from one pass
    assert layers == tuple(LAYERS) and methods == cam_grid.DEFAULT_METHODS
    assert len(at.image) == len(methods) * len(layers)
    labels = [m.value for m in at.markdown]
    assert any("5 methods x 2 layers, computed together" in label for label in labels)
    model = models.resolve_model(DEFAULT_MODEL, "cpu").model
    for method in methods:
        for layer in layers:
            alone = compute_cams(model, x, [layer], method=method, class_idx=results[method].class_idx)
            np.testing.assert_allclose(results[method].maps[layer], alone.maps[layer], atol=1e-5)

    at.radio(key=keys.CAM_VIEW).set_value("One method").run()  # the single view finds the grid's results
    _no_errors(at)
    assert len(spy.calls) == 1
    assert any("from the cache" in m.value for m in at.markdown)


def test_a_method_that_cannot_explain_a_layer_is_reported_and_the_others_are_drawn(monkeypatch):
    at, _ = _open_grid(monkeypatch)
    at.multiselect(key=keys.cam_layers(DEFAULT_MODEL)).set_value(list(LAYERS)).run()
    at.multiselect(key=keys.CAM_GRID_METHODS).set_value(["gradcam", "cam", "eigencam"]).run()
    _no_errors(at)
    [warning] = [w.value for w in at.warning if "cannot explain" in w.value]
    assert warning.startswith("CAM cannot explain blocks") and "global average" in warning  # marked in the picker
    assert len(at.image) == 2 * len(LAYERS)  # Grad-CAM and Eigen-CAM rows


def test_a_method_camlib_refuses_only_at_compute_time_is_reported_in_its_row(monkeypatch):
    """A refusal the structure does not predict (MethodSpec.refusal says None) comes from compute_cam_grid as a
    MethodError: that row is a warning and the other methods are still drawn."""
    at, _ = _open_grid(monkeypatch)
    monkeypatch.setattr(models, "method_refusals", lambda *args: {})
    at.multiselect(key=keys.cam_layers(DEFAULT_MODEL)).set_value(list(LAYERS)).run()
    at.multiselect(key=keys.CAM_GRID_METHODS).set_value(["gradcam", "cam", "eigencam"]).run()
    _no_errors(at)
    [warning] = [w.value for w in at.warning if "cannot explain" in w.value]
    assert warning.startswith("CAM cannot explain these layers") and "global average" in warning
    assert len(at.image) == 2 * len(LAYERS)


def test_a_slow_method_in_the_grid_shows_its_cost_and_waits_for_the_button(monkeypatch):
    at, spy = _open_grid(monkeypatch)
    drawn = len(at.image)
    monkeypatch.setattr(models, "forward_seconds", lambda model_key, device: 0.05)
    spy.calls.clear()
    at.multiselect(key=keys.CAM_GRID_METHODS).select("scorecam").run()
    _no_errors(at)
    assert cam_grid.option_label("scorecam").startswith("Score-CAM (slow: ")
    [estimate] = at.info
    assert "1,280 extra forward passes" in estimate.value
    assert at.button(key=keys.CAM_GRID_START).label.startswith(r"Compute Score\-CAM")
    assert not spy.calls and len(at.image) == drawn  # nothing started; the last grid stays
    assert "Showing the last grid until you start this one." in [c.value for c in at.caption]


def test_the_button_computes_the_slow_method_with_a_progress_bar(monkeypatch):
    """Score-CAM on the CIFAR-10 ResNet-20's last stage (64 channels) in the grid, after the button."""
    at, spy = _open_grid(monkeypatch)
    monkeypatch.setattr(cam_view, "SLOW_S", -1.0)
    at.selectbox(key=f"{keys.CAM}_model").set_value("cifar10_resnet20").run()
    at.multiselect(key=keys.CAM_GRID_METHODS).set_value(["gradcam", "scorecam"]).run()
    _no_errors(at)
    spy.calls.clear()
    at.button(key=keys.CAM_GRID_START).click().run()
    _no_errors(at)
    [(_, methods, _, results)] = spy.calls
    assert methods == ("scorecam",)  # Grad-CAM came from the cache
    assert set(results) == {"scorecam"} and len(at.image) == 2


def test_an_error_keeps_the_last_grid(monkeypatch):
    at, _ = _open_grid(monkeypatch)

    def fails(*args, **kwargs):
        raise NonFiniteError("the model produced NaN")

    monkeypatch.setattr(cams, "compute_cam_grid", fails)
    at.multiselect(key=keys.CAM_GRID_METHODS).set_value(["gradcam", "layercam"]).run()  # both cached: no call
    _no_errors(at)
    drawn = len(at.image)
    assert drawn == 2
    at.multiselect(key=keys.cam_layers(DEFAULT_MODEL)).set_value(list(LAYERS)).run()
    assert not at.exception
    assert [e.value for e in at.error] == ["Cannot compute the grid: the model produced NaN"]
    assert "Showing the last grid." in [c.value for c in at.caption]
    assert len(at.image) == drawn


def test_the_grid_scores_its_cells_on_request_and_runs_the_sanity_checks(monkeypatch):
    """Scores on the compare view (CIFAR-10 ResNet-20, 2 methods x 2 layers): nothing is scored until asked; then a
    table of every cell with the most faithful layer, the curves of the best cell and, on request, its sanity checks."""
    at, _ = _open_grid(monkeypatch)
    at.selectbox(key=f"{keys.CAM}_model").set_value("cifar10_resnet20").run()
    at.multiselect(key=keys.cam_layers("cifar10_resnet20")).set_value(["layer2", "layer3"]).run()
    at.multiselect(key=keys.CAM_GRID_METHODS).set_value(["gradcam", "eigencam"]).run()
    _no_errors(at)
    assert at.button(key=keys.CAM_FAITH_START).label == "Score faithfulness (4 cells)"
    tables = len(at.dataframe)  # the layer inspector: nothing scored before the button
    at.button(key=keys.CAM_FAITH_START).click().run()
    _no_errors(at)
    assert len(at.dataframe) == tables + 1
    assert len(at.dataframe[-1].value) == 2
    [answer] = [m.value for m in at.markdown if "Most faithful layer on this image" in m.value]
    assert answer.endswith("The 7x7 rule suggests layer3.")  # ResNet-20's last stage is 8x8
    assert at.selectbox(key=keys.CAM_FAITH_CELL).value  # the best cell first
    at.button(key=keys.CAM_SANITY_START).click().run()
    _no_errors(at)
    assert "**Sanity check** (Adebayo et al., NeurIPS 2018)" in [m.value for m in at.markdown]
    verdicts = [w.value for w in at.warning if "not explaining the model" in w.value]
    verdicts += [s.value for s in at.success if "depends on the weights" in s.value]
    assert len(verdicts) == 1
    assert any("logit test (Sixt et al." in c.value for c in at.caption)


@pytest.mark.parametrize("method", list(PIXEL_METHODS))
def test_the_pixel_attribution_view_shows_camlibs_attribution(method):
    """Guided Backpropagation, Guided Grad-CAM and FullGrad on the default model (EfficientNet-Lite0: ReLU6, which
    camlib guides): the page shows what camlib.pixel_attribution computes for the same input."""
    cams.compute_pixel_maps.clear()
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.radio(key=keys.CAM_VIEW).set_value("Pixel attribution").run()
    at.selectbox(key=keys.CAM_PIXEL_METHOD).set_value(method).run()
    _no_errors(at)
    spec = PIXEL_METHODS[method]
    view, _ = at.session_state[keys.CAM_LAST_PIXEL]
    assert view.method == method and len(at.image) == 2  # the model's view and one attribution (one layer: bn2)
    loaded = models.resolve_model(DEFAULT_MODEL, "cpu")
    x = prepare_input(at.session_state[f"{keys.CAM}_last_image"].pixels, loaded.spec.preprocessing).tensor
    layers = (["bn2"],) if spec.needs_layers else ()
    expected = spec.compute(loaded.model, x, *layers, class_idx=view.class_idx)
    if spec.output == "map":
        np.testing.assert_allclose(view.shown[""], expected.maps[0], atol=1e-6)
    else:
        attributions = expected.attributions["bn2"] if spec.needs_layers else expected.attributions
        np.testing.assert_array_equal(
            view.shown["bn2" if spec.needs_layers else ""], attribution_images(attributions)[0]
        )


def test_a_pixel_method_that_does_not_apply_is_refused_and_the_last_result_stays(monkeypatch):
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.radio(key=keys.CAM_VIEW).set_value("Pixel attribution").run()
    _no_errors(at)

    def refuse(*args, **kwargs):
        raise MethodError("guided backpropagation needs a model with ReLUs")

    monkeypatch.setitem(PIXEL_METHODS, "guided_backprop", replace(PIXEL_METHODS["guided_backprop"], compute=refuse))
    cams.compute_pixel_maps.clear()
    at.radio(key=keys.CAM_CLASS_MODE).set_value("Choose a class").run()
    at.selectbox(key=keys.cam_class(DEFAULT_MODEL)).set_value(1).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "Cannot compute the attribution: guided backpropagation needs a model with ReLUs"
    ]
    assert "Showing the last attribution that worked." in [c.value for c in at.caption]
    assert len(at.image) == 2


def test_methods_that_cannot_explain_the_layers_are_marked_in_the_pickers_with_the_reason():
    """The original CAM needs the layer that feeds global pooling + Linear: on EfficientNet-Lite0's blocks.6 (320
    channels; the Linear takes 1,280) it is marked in both pickers and its reason (camlib's MethodSpec.refusal) is
    shown when it is picked."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    picker = at.selectbox(key=keys.CAM_METHOD)
    assert "CAM" in picker.options  # bn2 feeds the classifier: CAM is not marked
    at.multiselect(key=keys.cam_layers(DEFAULT_MODEL)).set_value(["blocks.6"]).run()
    _no_errors(at)
    picker = at.selectbox(key=keys.CAM_METHOD)
    assert "CAM (not for these layers)" in picker.options and "Grad-CAM" in picker.options
    model = models.resolve_model(DEFAULT_MODEL, "cpu").model
    [info] = [c for c in models.get_layers(DEFAULT_MODEL, "cpu") if c.name == "blocks.6"]
    assert "320 channels" in METHODS["cam"].refusal(model, "blocks.6", info.layout)
    at.selectbox(key=keys.CAM_METHOD).set_value("cam").run()
    assert not at.exception
    assert any(w.value.startswith("CAM cannot explain blocks") and "320 channels" in w.value for w in at.warning)
    at.radio(key=keys.CAM_VIEW).set_value("Compare methods").run()
    assert "CAM (not for these layers)" in at.multiselect(key=keys.CAM_GRID_METHODS).options


def test_the_counterfactual_toggle_shows_camlibs_counterfactual_map():
    """Grad-CAM's counterfactual map on the page is camlib's (its raw map is minus the plain one)."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    plain = at.session_state[keys.CAM_LAST_VIEW][0].result
    at.toggle(key=keys.CAM_COUNTERFACTUAL).set_value(True).run()
    _no_errors(at)
    against = at.session_state[keys.CAM_LAST_VIEW][0].result
    assert against.counterfactual and not plain.counterfactual
    np.testing.assert_allclose(against.raw["bn2"], -plain.raw["bn2"], rtol=1e-4, atol=1e-6)
    assert any("counterfactual: what speaks against the class" in m.value for m in at.markdown)
    at.selectbox(key=keys.CAM_METHOD).set_value("eigencam").run()  # no gradients: the toggle is not offered
    _no_errors(at)
    assert keys.CAM_COUNTERFACTUAL not in [t.key for t in at.toggle]


def test_aug_smooth_maps_survive_the_compact_cache():
    """aug_smooth's maps are the mean of 6 views' maps, not finish(raw): a cache hit must return them as computed."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.toggle(key=keys.CAM_AUG_SMOOTH).set_value(True).run()
    _no_errors(at)
    first = at.session_state[keys.CAM_LAST_VIEW][0]
    at.toggle(key=keys.CAM_AUG_SMOOTH).set_value(False).run()
    at.toggle(key=keys.CAM_AUG_SMOOTH).set_value(True).run()
    hit = at.session_state[keys.CAM_LAST_VIEW][0]
    assert hit.from_cache and not first.from_cache
    np.testing.assert_array_equal(hit.result.maps["bn2"], first.result.maps["bn2"])
    loaded = models.resolve_model(DEFAULT_MODEL, "cpu")
    x = prepare_input(at.session_state[f"{keys.CAM}_last_image"].pixels, loaded.spec.preprocessing).tensor
    expected = compute_cams(loaded.model, x, ["bn2"], class_idx=hit.result.class_idx, aug_smooth=True)
    np.testing.assert_allclose(hit.result.maps["bn2"], expected.maps["bn2"], atol=1e-5)


def test_a_stochastic_method_offers_its_seed_and_refinecam_shows_the_fused_map():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    at.selectbox(key=keys.CAM_METHOD).set_value("randomcam").run()
    first = at.session_state[keys.CAM_LAST_VIEW][0].result.raw["bn2"]
    at.number_input(key=keys.CAM_SEED).set_value(7).run()
    _no_errors(at)
    assert not np.array_equal(at.session_state[keys.CAM_LAST_VIEW][0].result.raw["bn2"], first)
    at.selectbox(key=keys.CAM_METHOD).set_value("refinecam").run()
    assert len(at.image) == 3  # bn2's map, the fused map, the map on the original image
    at.multiselect(key=keys.cam_layers(DEFAULT_MODEL)).set_value(["blocks.5", "bn2"]).run()
    _no_errors(at)
    assert len(at.image) == 4
