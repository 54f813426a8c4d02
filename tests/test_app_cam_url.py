"""AppTest of the CAM Explorer's shareable link (ui.explorer.cam_url): the settings of one session, written
to the URL query, reproduce the same maps in another session; a bad part of a link is named and the rest applies."""

from __future__ import annotations

import io
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from helpers.apptest import APP, TIMEOUT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from streamlit.testing.v1 import AppTest

from camlib.cam import METHODS
from camlib.cifar import CLASS_NAMES
from camlib.cost import PassTimes
from camlib.errors import InputError
from camlib.models import MODELS
from camlib.pixel_attribution import PIXEL_METHODS
from camlib.samples import SAMPLES
from ui import keys, models, widgets
from ui.explorer import cam_grid, cam_view
from ui.explorer.cam_url import QUERY_KEYS, VIEWS, parse_link

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
    assert list(theirs.outcomes) == list(mine.outcomes) == ["gradcam", "layercam"]
    for method, view in mine.outcomes.items():
        assert theirs.outcomes[method].result.class_idx == view.result.class_idx == [3]
        for layer in ("layer2", "layer3"):
            np.testing.assert_array_equal(theirs.outcomes[method].result.raw[layer], view.result.raw[layer])
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


# --- strict values, caps and downloads -----------------------------------------------------------------------------


def _texts(at: AppTest) -> list[str]:
    """Every message the page shows: errors, warnings, infos, captions and markdown."""
    return [e.value for kind in (at.error, at.warning, at.info, at.caption, at.markdown) for e in kind]


@pytest.mark.bad_input(73)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("²", "class must be a whole number in 0..999 written in the digits 0-9, got '²'"),
        ("٣", "class must be a whole number in 0..999 written in the digits 0-9, got '٣'"),
        ("9" * 5_000, "class must be a whole number in 0..999, got 5,000 characters (at most 30)"),
        ("1000", "class must be in 0..999, got 1000"),
    ],
)
def test_a_class_isdigit_accepts_but_int_refuses_is_named_and_the_rest_applies(value, message):
    """``"²".isdigit()`` is True and ``int("²")`` raises: the page used to stop with a ValueError; a 5,000-digit
    number hit Python's 4,300-digit limit; ``"٣"`` (Arabic-Indic 3) became class 3."""
    at = _open({"class": value, "method": "layercam", "sample": "coffee (cup)"})
    [error] = [e.value for e in at.error]
    assert error.startswith("Part of the link could not be applied") and _unescaped(error).endswith(message)
    assert at.radio(key=keys.CAM_CLASS_MODE).value == "Top-1 prediction"  # not a silent class 0 or 3
    assert at.selectbox(key=keys.CAM_METHOD).value == "layercam"
    assert at.selectbox(key=f"{keys.CAM}_sample").value == "coffee (cup)"
    assert at.session_state[keys.CAM_LAST_VIEW][0].result.method == "layercam"


def _unescaped(markdown: str) -> str:
    return re.sub(r"\\(.)", r"\1", markdown).replace("\u2060", "")


@pytest.mark.bad_input(73)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("cat:99999", "cifar index of cat must be in 0..999, got 99999"),
        ("dog:-1", "cifar index of dog must be in 0..999, got -1"),
        ("cat:²", "cifar index of cat must be a whole number in 0..999 written in the digits 0-9, got '²'"),
        ("cat", "cifar must be class:index, e.g. cat:3, got 'cat'"),
    ],
)
def test_an_out_of_range_image_index_is_named_never_image_0(value, message):
    at = _open({"model": MODEL, "cifar": value, "method": "layercam"})
    [error] = [e.value for e in at.error]
    assert _unescaped(error).endswith(message)
    # the page's own default (the first class's first image), with the error: the link's class is not half-applied
    assert at.selectbox(key=f"{keys.CAM}_cifar_class").value == "airplane"
    assert at.number_input(key=f"{keys.CAM}_cifar_index").value == 0
    assert at.selectbox(key=f"{keys.CAM}_model").value == MODEL
    assert at.selectbox(key=keys.CAM_METHOD).value == "layercam"
    assert not at.exception


@pytest.mark.bad_input(72)
def test_a_link_naming_every_layer_and_every_method_gets_the_pickers_caps():
    """The probe's link (every layer, every method) took 204 s and 2.4 GB; the pickers hold at most
    ``MAX_LAYERS`` layers and ``MAX_METHODS`` methods, and so does a link: both parts are refused by name, the
    page draws its default grid."""
    names = [c.name for c in models.get_layers(MODEL, "cpu")]
    assert len(names) > widgets.MAX_LAYERS and len(METHODS) > cam_grid.MAX_METHODS
    start = time.perf_counter()
    at = _open({"model": MODEL, "view": "compare", "layers": ",".join(names), "methods": ",".join(METHODS)})
    assert time.perf_counter() - start < 120
    [error] = [_unescaped(e.value) for e in at.error]
    assert f"layers: a link names at most {widgets.MAX_LAYERS}" in error
    assert f"methods: a link names at most {cam_grid.MAX_METHODS}" in error
    layers = at.multiselect(key=keys.cam_layers(MODEL))
    methods = at.multiselect(key=keys.CAM_GRID_METHODS)
    assert layers.proto.max_selections == widgets.MAX_LAYERS and methods.proto.max_selections == cam_grid.MAX_METHODS
    assert len(layers.value) == 1 and methods.value == list(cam_grid.DEFAULT_METHODS)
    grid = at.session_state[keys.CAM_LAST_GRID][0]
    assert list(grid.outcomes) == list(cam_grid.DEFAULT_METHODS)


SLOW_LAYERS = ["layer1", "layer2", "layer3", "stem"]


@pytest.mark.bad_input(72)
@pytest.mark.parametrize("slow", ["shapleycam", "sscam", "kpcacam"])
@pytest.mark.parametrize("by", ["link", "pickers"])
def test_a_slow_method_waits_for_the_same_button_from_a_link_as_from_the_pickers(monkeypatch, slow, by):
    """ShapleyCAM (a Hessian-vector product per layer: a gradient method), SS-CAM (35 forwards per channel: a
    perturbation method) and KPCA-CAM (a kernel eigenproblem per layer) above ``SLOW_S`` show the estimate and a
    button, whoever set them; the button starts it. The timings are fixed (1 s per Hessian product, 5 s per probe
    kernel eigenproblem) so the estimate does not depend on this machine."""
    monkeypatch.setattr(cam_view, "pass_seconds", lambda model_key, device: PassTimes(0.005, 0.015, 1.0, 5.0, 1.0))
    link = {"model": MODEL, "view": "compare", "methods": f"gradcam,{slow}", "layers": ",".join(SLOW_LAYERS)}
    if by == "link":
        at = _open(link)
    else:
        at = _open()
        at.selectbox(key=f"{keys.CAM}_model").set_value(MODEL).run()
        at.multiselect(key=keys.cam_layers(MODEL)).set_value(SLOW_LAYERS).run()
        at.radio(key=keys.CAM_VIEW).set_value("Compare methods").run()
        at.multiselect(key=keys.CAM_GRID_METHODS).set_value(["gradcam", slow]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    start = at.button(key=keys.CAM_GRID_START)
    assert _unescaped(start.label).startswith(f"Compute {METHODS[slow].label} (about")
    passes = {"shapleycam": "Hessian\\-vector products", "sscam": "extra forward passes", "kpcacam": "eigenproblems"}[
        slow
    ]
    assert any(passes in info.value for info in at.info), [i.value for i in at.info]
    kept = at.session_state[keys.CAM_LAST_GRID] if keys.CAM_LAST_GRID in at.session_state else None  # noqa: SIM401 (no .get)
    assert kept is None or slow not in kept[0].outcomes  # nothing slow ran before the click
    if by == "link" and slow == "shapleycam":
        start.click().run()
        assert not at.exception and not at.error
        assert set(at.session_state[keys.CAM_LAST_GRID][0].outcomes) == {"gradcam", "shapleycam"}


@pytest.mark.bad_input(72)
def test_a_method_refused_for_the_layers_offers_no_estimate_or_button(monkeypatch):
    """KPCA-CAM cannot explain EfficientNet-Lite0's 112x112 stem (its kernel would exceed the memory cap): the page
    says so and the computation refuses at once, so there is nothing to estimate and no Compute button to press."""
    monkeypatch.setattr(cam_view, "pass_seconds", lambda model_key, device: PassTimes(0.005, 0.015, 1.0, 5.0, 1.0))
    at = _open({"model": "efficientnet_lite0", "view": "one", "method": "kpcacam", "layers": "conv_stem"})
    assert not at.exception
    assert not [b for b in at.button if b.key == keys.CAM_START]
    assert not any("eigenproblem" in info.value for info in at.info), [i.value for i in at.info]
    shown = [m.value for m in (*at.error, *at.warning)]
    assert any("KPCA" in text and "conv\\_stem" in text for text in shown), shown


@pytest.fixture
def empty_torch_cache(monkeypatch, tmp_path) -> tuple[Path, list[str]]:
    """An empty torch cache and a recorded network: every URL ``urlopen`` is asked for, answered with bytes whose hash
    is wrong (so nothing is ever cached)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home-on-the-server"))
    monkeypatch.delenv("CAMLIB_DOWNLOADS", raising=False)
    urls: list[str] = []

    class Response(io.BytesIO):
        headers = {"Content-Length": "16"}

    def urlopen(url, timeout=None):
        urls.append(url)
        return Response(b"not the weights!")

    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    return tmp_path, urls


@pytest.mark.bad_input(74)
def test_a_link_to_an_uncached_model_downloads_nothing_until_the_click(empty_torch_cache):
    """The probe's link to VGG-16-BN started a 528 MB download on the server. Now the page says the weights are
    missing and offers a button; the bundled model stays in use; only the click downloads. No message names the
    server's folders."""
    tmp_path, urls = empty_torch_cache
    at = _open({"model": "vgg16_bn", "layers": "features.40", "method": "layercam", "sample": "coffee (cup)"})
    assert urls == []
    assert at.selectbox(key=f"{keys.CAM}_model").value == "vgg16_bn"
    assert at.session_state[f"{keys.CAM}_last_model"] == "efficientnet_lite0"  # still in use
    [error] = [_unescaped(e.value) for e in at.error]
    assert "layers apply once VGG-16-BN" in error
    button = at.button(key=f"{keys.CAM}_download_weights")
    assert _unescaped(button.label).startswith("Download VGG-16-BN")
    assert at.selectbox(key=keys.CAM_METHOD).value == "layercam"
    assert all(str(tmp_path) not in _unescaped(t) for t in _texts(at))
    button.click().run()
    assert urls == [MODELS["vgg16_bn"].weights_url]
    assert any("hash mismatch" in _unescaped(e.value) for e in at.error)
    assert all(str(tmp_path) not in _unescaped(t) and "torch-home" not in _unescaped(t) for t in _texts(at))
    assert not list((tmp_path / "torch-home-on-the-server").rglob("*.pth*"))
    assert not at.exception


@pytest.mark.bad_input(74)
def test_downloads_turned_off_by_the_operator_offer_no_button(empty_torch_cache, monkeypatch):
    tmp_path, urls = empty_torch_cache
    monkeypatch.setenv("CAMLIB_DOWNLOADS", "off")
    at = _open({"model": "resnet18", "method": "layercam"})
    assert urls == []
    assert not [b for b in at.button if b.key == f"{keys.CAM}_download_weights"]
    assert any("downloads are turned off here" in _unescaped(w.value) for w in at.warning)
    assert at.session_state[f"{keys.CAM}_last_model"] == "efficientnet_lite0"
    assert all(str(tmp_path) not in _unescaped(t) for t in _texts(at))


# --- the parser alone, fuzzed ----------------------------------------------------------------------------------------

FAKE_LAYERS = ("stem", "layer1", "layer2.0", "head,odd")  # a name with a comma can never be named by a link


def _fake_layers(model: str) -> tuple[str, ...]:
    if model == "vgg16_bn":  # as for a model whose weights are not downloaded
        raise InputError("layers apply once VGG-16-BN's weights are downloaded")
    return FAKE_LAYERS


def _fake_members(name: str) -> int:
    if name == "frog":  # as when no CIFAR-10 copy is on the server
        raise InputError("cifar: no CIFAR-10 test images on this server")
    return 7


_names = st.sampled_from(["stem", "layer1", "layer2.0", "gradcam", "scorecam", "sscam", "nope", "", "²", "layer1 "])
_values = st.one_of(
    st.text(max_size=50),
    st.text(alphabet="0123456789", min_size=4_290, max_size=4_400),  # around Python's 4,300-digit limit
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.integers(1, 5_000).map(lambda n: "[" * n + "]" * n),  # deep nesting, as text
    st.integers(1, 5_000).map(lambda n: '{"a":' * n + "1" + "}" * n),
    st.lists(_names, max_size=40).map(",".join),
    st.tuples(st.sampled_from(["cat", "dog", "frog", "Cat", "", "²"]), st.text(max_size=12)).map(":".join),
    st.sampled_from([*MODELS, "nope", *VIEWS, *METHODS, *PIXEL_METHODS, *SAMPLES]),
    st.one_of(st.none(), st.integers(), st.lists(st.text(max_size=3), max_size=3)),  # not text at all
)


@pytest.mark.bad_input(73, kind="HYP")
@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    query=st.dictionaries(st.sampled_from([*QUERY_KEYS, "other", "Class"]), _values, max_size=9),
    current=st.sampled_from([*MODELS, "checkpoint:abc"]),
)
def test_any_link_gives_valid_settings_or_a_named_problem_per_part(query, current):
    """Random Unicode, numbers past 4,300 digits, nesting 5,000 deep, lists past the caps and values that are not
    text: ``parse_link`` never raises; every part it sets is one the pickers could set, and every part given is
    either set or refused with a message that names it."""
    link, problems = parse_link(query, current_model=current, layer_names=_fake_layers, cifar_members=_fake_members)
    model = link.model or (current if current in MODELS else "efficientnet_lite0")
    assert link.model is None or link.model in MODELS
    assert link.layers is None or (set(link.layers) <= set(FAKE_LAYERS) and 1 <= len(link.layers) <= widgets.MAX_LAYERS)
    classes = 10 if MODELS[model].dataset == "cifar10" else 1000
    assert link.class_idx is None or (type(link.class_idx) is int and 0 <= link.class_idx < classes)
    assert link.view is None or link.view in VIEWS
    assert link.method is None or link.method in (PIXEL_METHODS if link.view == "pixel" else METHODS)
    assert link.methods is None or (
        set(link.methods) <= set(METHODS) and 1 <= len(link.methods) <= cam_grid.MAX_METHODS
    )
    assert link.sample is None or link.sample in SAMPLES
    if link.cifar is not None:
        assert link.cifar[0] in CLASS_NAMES and 0 <= link.cifar[1] < 7 and MODELS[model].dataset == "cifar10"
    given = [k for k in QUERY_KEYS if k in query and not (k == "cifar" and "sample" in query)]
    applied = {
        "model": link.model, "view": link.view, "method": link.method, "methods": link.methods,
        "layers": link.layers, "class": link.class_idx, "sample": link.sample, "cifar": link.cifar,
    }  # fmt: skip
    assert sorted(p.split()[0].rstrip(":") for p in problems) == sorted(k for k in given if applied[k] is None)
    assert all(isinstance(p, str) and len(p) < 2_000 for p in problems)
