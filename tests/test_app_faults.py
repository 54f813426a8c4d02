"""AppTest: the app-wide inputs (data root, device) and fault injection into every cache call a page makes.

A page talks to models and data only through the modules of ``ENTRY_MODULES`` (``ui.models``, ``ui.explorer.cams``,
``ui.checkpoint_store``...). The fault-injection tests run each page once, record which of those modules' functions it
reached, then make each one in turn raise a camlib error and rerun: the page must show the error (``st.error`` or
``st.warning``) and never a traceback. The list of functions is discovered, not written here, so a new cache call is
covered the day a page makes it.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Callable
from types import ModuleType

import pytest
import torch
from helpers.apptest import APP, TIMEOUT
from streamlit.testing.v1 import AppTest

from camlib.cifar import default_root, detect_source
from camlib.device import available_devices
from camlib.errors import InputError
from ui import checkpoint_store, datasets, jobs, keys, models, overlays, stores
from ui.explorer import cams
from ui.gallery import predictions
from ui.text import escape

CAM, LAB, GALLERY = "app_pages/cam_explorer.py", "app_pages/augmentation_lab.py", "app_pages/misclassifications.py"
HAS_CIFAR = default_root() is not None and detect_source(default_root()) is not None
ENTRY_MODULES = (models, datasets, stores, overlays, jobs, cams, predictions, checkpoint_store)
# Kept across the faulty rerun (clearing them costs 10,000 predictions); a page reaches them directly when it uses them.
KEPT_CACHES = {"get_cifar", "dataset_predictions", "get_model"}


def _public_functions(module: ModuleType) -> list[str]:
    """The public top-level functions a module defines (cached ones included), from its source."""
    tree = ast.parse(inspect.getsource(module))
    return [node.name for node in tree.body if isinstance(node, ast.FunctionDef) and not node.name.startswith("_")]


def _open(page: str, *, model_loop: bool = False, view: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if page != CAM:
        at.switch_page(page)
    at.run()
    if model_loop:
        at.toggle(key=keys.AUG_MODEL_LOOP).set_value(True).run()
    if view is not None:  # the CAM Explorer's other views
        at.radio(key=keys.CAM_VIEW).set_value(view).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def _wrap(monkeypatch: pytest.MonkeyPatch, calls: list[str], fault: str | None = None) -> None:
    """Record every call into the entry modules; the function named ``fault`` raises a camlib error instead."""
    for module in ENTRY_MODULES:
        for name in _public_functions(module):
            original: Callable = getattr(module, name)

            def wrapper(*args, _name=name, _original=original, **kwargs):
                calls.append(_name)
                if _name == fault:
                    raise InputError(_message(_name))
                return _original(*args, **kwargs)

            monkeypatch.setattr(module, name, wrapper)


def _message(name: str) -> str:
    """The injected error's message, naming the function in words Markdown leaves alone (no underscores)."""
    return "injected fault in " + name.replace("_", " ")


def _clear_caches() -> None:
    """Empty the caches in front of the entry functions, so a rerun reaches the functions behind them again."""
    for module in ENTRY_MODULES:
        for name, value in vars(module).items():
            if hasattr(value, "clear") and callable(value) and name not in KEPT_CACHES:
                value.clear()


def _shown(at: AppTest) -> list[str]:
    return [e.value for e in at.error] + [w.value for w in at.warning]


def _inject_each(page: str, monkeypatch: pytest.MonkeyPatch, **open_kwargs) -> list[str]:
    """Every entry function the page reaches, each made to fail in turn; returns the functions tried."""
    reached: list[str] = []
    with monkeypatch.context() as patch:
        _clear_caches()
        _wrap(patch, reached)
        at = _open(page, **open_kwargs)
        if open_kwargs.get("view"):  # what the view itself reaches, not the default view it was switched from
            reached.clear()
            _clear_caches()
            at.run()
    assert reached, "the page reached no cache function: the harness is broken"
    failures = []
    for name in dict.fromkeys(reached):
        at = _open(page, **open_kwargs)
        calls: list[str] = []
        with monkeypatch.context() as patch:
            _clear_caches()
            _wrap(patch, calls, fault=name)
            at.run()
        if at.exception:
            failures.append(f"{name}: traceback {[e.value for e in at.exception]}")
        elif name in calls and not any(_message(name) in text for text in _shown(at)):
            failures.append(f"{name}: the error is not shown ({_shown(at)})")
        elif name not in calls:
            failures.append(f"{name}: not reached on the rerun, so the fault was not tested")
    assert not failures, failures
    return list(dict.fromkeys(reached))


@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_cam_page_shows_every_cache_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    tried = _inject_each(CAM, monkeypatch)
    assert {"resolve_model", "get_layers", "predict", "compute_cam", "get_model"} <= set(tried)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("view", "entry"), [("Compare methods", "compute_grid"), ("Pixel attribution", "compute_pixel_maps")]
)
def test_cam_pages_other_views_show_every_cache_failure(monkeypatch: pytest.MonkeyPatch, view: str, entry: str):
    tried = _inject_each(CAM, monkeypatch, view=view)
    assert {"resolve_model", "get_layers", "predict", entry} <= set(tried)


@pytest.mark.slow
def test_lab_page_with_the_model_in_the_loop_shows_every_cache_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    tried = _inject_each(LAB, monkeypatch, model_loop=True)
    assert "get_model" in tried
    if HAS_CIFAR:
        assert "get_cifar" in tried


@pytest.mark.slow
@pytest.mark.skipif(not HAS_CIFAR, reason="needs the CIFAR-10 copy in ../shared")
def test_gallery_page_shows_every_cache_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    tried = _inject_each(GALLERY, monkeypatch)
    assert {"get_model", "get_cifar", "dataset_predictions", "get_layers", "gallery_cams"} <= set(tried)


# --- the device input ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", [CAM, LAB, GALLERY])
@pytest.mark.slow  # many seconds of AppTest; the page keeps quick tests of its main paths
def test_every_page_has_the_device_input_with_this_machines_devices(page: str) -> None:
    at = _open(page)
    [device] = [s for s in at.sidebar.selectbox if s.key == keys.DEVICE]
    assert device.options == list(available_devices()) and device.value == device.options[device.index]


def test_the_cam_names_the_device_it_ran_on() -> None:
    at = _open(CAM)
    chosen = at.selectbox(key=keys.DEVICE).value
    assert any(m.value.endswith(f" on {chosen}.") for m in at.markdown if m.value.startswith("**Explaining class"))


@pytest.mark.bad_input(43)
@pytest.mark.parametrize("value", ["gpu", "cuda:7"])
def test_a_bad_camlib_device_is_shown_and_the_cpu_is_used(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("CAMLIB_DEVICE", value)
    at = _open(CAM)
    assert any(escape("CAMLIB_DEVICE") in e.value and "Using the CPU" in e.value for e in at.sidebar.error)
    assert at.selectbox(key=keys.DEVICE).value == "cpu"
    assert any(m.value.startswith("**Explaining class") for m in at.markdown)


def test_each_device_has_its_own_copy_of_a_model() -> None:
    """The shared model cache is keyed by device: another device name gets another model, on that device."""
    on_cpu = models.get_model("cifar10_resnet20", "cpu")
    assert models.get_model("cifar10_resnet20", "cpu") is on_cpu
    other = models.get_model("cifar10_resnet20", "cpu:0")  # a second name this CPU-only machine can load
    assert other is not on_cpu and other.device == torch.device("cpu", 0)
    assert next(other.model.parameters()).data_ptr() != next(on_cpu.model.parameters()).data_ptr()
    with pytest.raises(InputError, match="device"):
        models.get_model("cifar10_resnet20", "gpu")
