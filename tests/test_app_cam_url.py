"""AppTest of the CAM Explorer's shareable link (ui.cam_url, issue #14): the settings of one session, written to the
URL query, reproduce the same maps in another session; a bad part of a link is named and the rest applies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from streamlit.testing.v1 import AppTest

from ui import keys

TIMEOUT = 300
APP = str(Path(__file__).resolve().parents[1] / "app.py")
MODEL = "cifar10_resnet20"


def _open(query: dict[str, str] | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    for name, value in (query or {}).items():
        at.query_params[name] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _query(at: AppTest) -> dict[str, str]:
    return {
        name: at.query_params[name][0] if isinstance(at.query_params[name], list) else at.query_params[name]
        for name in at.query_params
    }


def test_a_link_reproduces_the_grid_in_another_session():
    first = _open()
    first.selectbox(key=f"{keys.CAM}_model").set_value(MODEL).run()
    first.radio(key=f"{keys.CAM}_source").set_value("CIFAR-10 test image").run()
    first.selectbox(key=f"{keys.CAM}_cifar_class").set_value("dog").run()
    first.number_input(key=f"{keys.CAM}_cifar_index").set_value(2).run()
    first.multiselect(key=keys.cam_layers(MODEL)).set_value(["layer2", "layer3"]).run()
    first.radio(key=keys.CAM_VIEW).set_value("Compare methods").run()
    first.multiselect(key=keys.CAM_GRID_METHODS).set_value(["gradcam", "layercam"]).run()
    first.radio(key=keys.CAM_CLASS_MODE).set_value("Choose a class").run()
    first.selectbox(key=keys.cam_class(MODEL)).set_value(3).run()
    assert not first.exception and not first.error
    link = _query(first)
    assert link == {
        "model": MODEL,
        "view": "compare",
        "methods": "gradcam,layercam",
        "layers": "layer2,layer3",
        "class": "3",
        "cifar": "dog:2",
    }

    second = _open(link)
    assert not second.error, [e.value for e in second.error]
    assert second.multiselect(key=keys.CAM_GRID_METHODS).value == ["gradcam", "layercam"]
    mine, theirs = first.session_state[keys.CAM_LAST_GRID][0], second.session_state[keys.CAM_LAST_GRID][0]
    assert list(theirs.views) == list(mine.views) == ["gradcam", "layercam"]
    for method, view in mine.views.items():
        assert theirs.views[method].result.class_idx == view.result.class_idx == [3]
        for layer in ("layer2", "layer3"):
            np.testing.assert_array_equal(theirs.views[method].result.raw[layer], view.result.raw[layer])
    assert _query(second) == link  # opening a link does not change it


def test_a_link_to_one_method_on_a_sample_photo():
    link = {
        "model": "efficientnet_lite0",
        "view": "one",
        "method": "layercam",
        "layers": "bn2",
        "sample": "coffee (cup)",
    }
    at = _open(link)
    assert not at.error
    assert at.selectbox(key=keys.CAM_METHOD).value == "layercam"
    assert at.selectbox(key=f"{keys.CAM}_sample").value == "coffee (cup)"
    assert at.session_state[keys.CAM_LAST_VIEW][0].result.method == "layercam"
    assert _query(at) == link


def test_a_bad_part_of_a_link_is_named_and_the_rest_applies():
    at = _open({"model": MODEL, "layers": "layer3,nope", "method": "layercam", "sample": "astronaut"})
    [error] = [e.value for e in at.error]
    assert error.startswith("Part of the link could not be applied") and "layers must be layers of" in error
    assert at.selectbox(key=f"{keys.CAM}_model").value == MODEL
    assert at.selectbox(key=keys.CAM_METHOD).value == "layercam"
    at = _open({"model": "nope"})
    assert any("model must be one of" in e.value for e in at.error)
    assert not at.exception


def test_a_stale_query_sent_with_a_later_rerun_never_puts_old_settings_back():
    """A browser sends its URL's query with every rerun; one sent before the page's own update reached it must not be
    applied again (it replaced a new upload by an earlier URL's sample photo in the browser test)."""
    at = _open({"model": "efficientnet_lite0", "method": "layercam", "sample": "coffee (cup)"})
    at.selectbox(key=keys.CAM_METHOD).set_value("gradcam").run()
    at.selectbox(key=f"{keys.CAM}_sample").set_value("rocket").run()
    at.query_params["method"], at.query_params["sample"] = "layercam", "coffee (cup)"  # the stale URL
    at.run()
    assert not at.exception and not at.error
    assert at.selectbox(key=keys.CAM_METHOD).value == "gradcam"
    assert at.selectbox(key=f"{keys.CAM}_sample").value == "rocket"
    assert _query(at)["sample"] == "rocket"
