"""Tests of ui.explorer.faithfulness_view: the faithfulness grid waits for its button, then shows the method
x layer table with the best cell highlighted and the "most faithful layer" answer; the curves chart has the baselines'
traces; the sanity panel draws its curve and strip and flags a map that survives randomisation; errors are st.error."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from camlib.errors import LayerError
from camlib.metrics import DeletionInsertion, FaithfulnessScores, RoadResult, baseline_maps
from ui import keys
from ui.explorer import cams, faithfulness_view

TIMEOUT = 300


def _section(model_key: str, layers: tuple[str, ...], methods: tuple[str, ...], class_idx: int) -> None:
    """The AppTest script: a seeded 32x32 image and the whole section, as the CAM Explorer mounts it."""
    import numpy as np

    from ui.explorer import faithfulness_view

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    faithfulness_view.faithfulness_section(model_key, "cpu", image, layers=layers, methods=methods, class_idx=class_idx)


@pytest.fixture(autouse=True)
def _fresh_caches():
    st.cache_data.clear()
    yield
    st.cache_data.clear()


def _app(methods: tuple[str, ...] = ("gradcam", "randomcam"), layers: tuple[str, ...] = ("layer2", "layer3")):
    at = AppTest.from_function(_section, default_timeout=TIMEOUT, args=("cifar10_resnet20", layers, methods, 3)).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _figure(at: AppTest, key: str) -> dict:
    [chart] = [c for c in at.get("plotly_chart") if c.proto.id.endswith(key) or key in c.proto.id]
    return json.loads(chart.proto.spec)


def test_the_grid_waits_for_its_button_then_shows_the_table_the_best_cell_and_the_curves_with_baselines():
    at = _app()
    assert not at.dataframe and not at.error  # nothing computed before the button
    assert at.button(key=keys.CAM_FAITH_START).label == "Score faithfulness (4 cells)"
    at.button(key=keys.CAM_FAITH_START).click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    [table] = at.dataframe
    frame = table.value
    assert list(frame.columns) == ["layer2", "layer3"] and list(frame.index) == ["Grad-CAM", "Random-CAM (baseline)"]
    assert all("del " in text and "ins " in text and "ROAD " in text for text in frame.to_numpy().ravel())
    styles = table.proto.arrow_data.styler.styles
    assert faithfulness_view.BEST_STYLE.split(";")[0] in styles and styles.count("background-color") == 1
    [answer] = [m.value for m in at.markdown if m.value.startswith("**Most faithful layer on this image")]
    best = at.selectbox(key=keys.CAM_FAITH_CELL).value  # the picker starts at the best cell
    assert answer.startswith(f"**Most faithful layer on this image: {best.split(' · ')[1]}**")
    traces = [t["name"] for t in _figure(at, keys.CAM_FAITH_CURVES)["data"]]
    assert {"baseline: random", "baseline: gaussian", "baseline: edges"} <= set(traces)
    assert len(traces) == 8  # 4 series x (deletion, insertion)
    # A rerun shows the stored grid at once (no button), and another cell's curves.
    other = at.selectbox(key=keys.CAM_FAITH_CELL).options[1]
    at.selectbox(key=keys.CAM_FAITH_CELL).select_index(1).run()
    assert not at.exception and at.dataframe and [b.key for b in at.button] == [keys.CAM_SANITY_START]
    assert _figure(at, keys.CAM_FAITH_CURVES)["data"][0]["name"] == other
    assert at.button(key=keys.CAM_SANITY_START).label == "Run the sanity checks"


def _scores(deletion: float, insertion: float, road: float) -> FaithfulnessScores:
    fractions = np.linspace(0, 1, 3)
    curves = DeletionInsertion(
        fractions,
        np.full((1, 3), deletion, np.float32),
        np.full((1, 3), insertion, np.float32),
        np.array([deletion]),
        np.array([insertion]),
    )
    return FaithfulnessScores(curves, RoadResult((50,), "combined", None, None, np.array([road], np.float32)))


def test_the_frame_marks_cells_that_do_not_beat_the_baselines_and_the_best_cell():
    grid = faithfulness_view.GridScores(
        cells={
            ("gradcam", "a"): _scores(0.2, 0.8, 0.3),
            ("gradcam", "b"): _scores(0.3, 0.7, 0.2),
            ("eigencam", "a"): _scores(0.6, 0.5, 0.0),
            ("eigencam", "b"): _scores(0.25, 0.75, 0.25),
        },
        baselines={"random": _scores(0.5, 0.5, 0.1), "edges": _scores(0.4, 0.6, 0.1)},
        class_idx=0,
        elapsed_s=1.0,
    )
    frame, best = faithfulness_view.faithfulness_frame(grid)
    assert best == ("gradcam", "a")
    assert frame.loc["Eigen-CAM", "a"].endswith("⚠") and not frame.loc["Grad-CAM", "a"].endswith("⚠")
    assert frame.loc["Grad-CAM", "b"] == "del 0.300 · ins 0.700 · ROAD +0.200"
    figure = faithfulness_view.curves_figure(grid, ("eigencam", "b"))
    assert [t.name for t in figure.data] == ["Eigen-CAM · b"] * 2 + ["baseline: random"] * 2 + ["baseline: edges"] * 2


def _sanity_app(monkeypatch: pytest.MonkeyPatch, *, edges: bool) -> AppTest:
    if edges:  # a "method" whose map is the image's edges: it cannot depend on the weights

        def edge_cams(model, x, layers, *, method, class_idx):
            return SimpleNamespace(maps={layers[0]: baseline_maps(x, "edges")})

        monkeypatch.setattr(faithfulness_view, "compute_cams", edge_cams)
    at = _app(methods=("gradcam",), layers=("layer3",))
    at.button(key=keys.CAM_FAITH_START).click().run()
    at.button(key=keys.CAM_SANITY_START).click().run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def test_the_sanity_panel_draws_the_curve_and_the_strip_and_passes_grad_cam(monkeypatch: pytest.MonkeyPatch):
    at = _sanity_app(monkeypatch, edges=False)
    figure = _figure(at, keys.CAM_SANITY_CURVE)
    assert [t["name"] for t in figure["data"]] == ["Spearman", "SSIM"]
    assert figure["data"][0]["y"][0] == 1.0 and len(figure["data"][0]["y"]) > 20  # trained + every ResNet-20 layer
    assert len(at.get("image")) == faithfulness_view.STRIP_MAPS
    assert not any("not explaining the model" in w.value for w in at.warning) and not at.error
    assert any("depends on the weights" in s.value for s in at.success)
    assert any(c.value.startswith("Random-logit test") for c in at.caption)


def test_a_map_that_survives_randomising_the_whole_network_is_flagged(monkeypatch: pytest.MonkeyPatch):
    at = _sanity_app(monkeypatch, edges=True)
    [flag] = [w.value for w in at.warning]  # a finding about the method, not an error: st.warning
    assert not at.error
    assert "**not explaining the model**" in flag and "Spearman 1.00" in flag


def test_errors_are_shown_with_st_error_not_a_traceback(monkeypatch: pytest.MonkeyPatch):
    def failing(*args, **kwargs):
        raise LayerError("layer 'nope' is not in this model")

    monkeypatch.setattr(cams, "compute_cam", failing)
    at = _app()
    at.button(key=keys.CAM_FAITH_START).click().run()
    assert not at.exception
    [error] = at.error
    assert error.value.startswith("Cannot compute the faithfulness: layer") and not at.dataframe
    assert not at.get("progress")  # the bar is removed
