"""Shareable CAM Explorer state: the model, view, method (or the grid's methods), target layers, class and image
live in the URL query (``st.query_params``), so a link reproduces the maps (issue #14; the Lab has ``ui.lab_url``).

``apply_link`` runs before the page's widgets are drawn and loads the settings from the query on the session's first
run only (a link opened in a tab, or pasted into one: both load the page, a new session). Later reruns never read it
back: a browser sends its URL's query with each rerun, and one sent before the page's own last update reached it
would otherwise put old settings back (an upload replaced by the sample photo of an earlier URL). A bad part is named
in an ``st.error`` and the rest still applies. ``write_link`` puts the current settings back after the page is
drawn. Only registry models and images anyone can open are shared: a checkpoint or an uploaded image leaves its key
out.
"""

from __future__ import annotations

import streamlit as st

from camlib.cam import METHODS
from camlib.cifar import CLASS_NAMES
from camlib.errors import CamlibError, InputError
from camlib.models import MODELS
from camlib.pixel_attribution import PIXEL_METHODS
from camlib.samples import SAMPLES
from ui import cache, keys
from ui.text import md

QUERY_KEYS = ("model", "view", "method", "methods", "layers", "class", "sample", "cifar")
VIEWS = {"one": "One method", "compare": "Compare methods", "pixel": "Pixel attribution"}  # query value -> label


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _load_model(wanted: dict[str, str], device: str) -> str:
    model = wanted.get("model", st.session_state.get(f"{keys.CAM}_model", ""))
    _check(model in MODELS, f"model must be one of {', '.join(MODELS)}, got {model!r}")
    st.session_state[f"{keys.CAM}_model"] = model
    names = [c.name for c in cache.get_layers(model, device)]
    if "layers" in wanted:
        layers = [n for n in wanted["layers"].split(",") if n]
        _check(
            bool(layers) and set(layers) <= set(names), f"layers must be layers of {model}, got {wanted['layers']!r}"
        )
        st.session_state[keys.cam_layers(model)] = layers
    if "class" in wanted:
        classes = len(cache.resolve_model(model, device).class_names)
        _check(wanted["class"].isdigit() and int(wanted["class"]) < classes, f"class must be 0..{classes - 1}")
        st.session_state[keys.CAM_CLASS_MODE] = "Choose a class"
        st.session_state[keys.cam_class(model)] = int(wanted["class"])
    return model


def _load_methods(wanted: dict[str, str]) -> None:
    view = wanted.get("view", "one")
    _check(view in VIEWS, f"view must be one of {', '.join(VIEWS)}, got {view!r}")
    st.session_state[keys.CAM_VIEW] = VIEWS[view]
    if "method" in wanted:
        registry, key = (PIXEL_METHODS, keys.CAM_PIXEL_METHOD) if view == "pixel" else (METHODS, keys.CAM_METHOD)
        _check(wanted["method"] in registry, f"method must be one of {', '.join(registry)}")
        st.session_state[key] = wanted["method"]
    if "methods" in wanted:
        methods = [m for m in wanted["methods"].split(",") if m]
        _check(set(methods) <= set(METHODS), f"methods must be among {', '.join(METHODS)}")
        st.session_state[keys.CAM_GRID_METHODS] = methods


def _load_image(wanted: dict[str, str]) -> None:
    if "sample" in wanted:
        _check(wanted["sample"] in SAMPLES, f"sample must be one of {', '.join(SAMPLES)}")
        st.session_state[f"{keys.CAM}_source"] = "Sample photo"
        st.session_state[f"{keys.CAM}_sample"] = wanted["sample"]
    elif "cifar" in wanted:  # class:position among that class's test images
        name, _, position = wanted["cifar"].partition(":")
        _check(name in CLASS_NAMES and position.isdigit(), "cifar must be class:index, e.g. cat:3")
        st.session_state[f"{keys.CAM}_source"] = "CIFAR-10 test image"
        st.session_state[f"{keys.CAM}_cifar_class"] = name
        st.session_state[f"{keys.CAM}_cifar_index"] = int(position)


def apply_link(device: str) -> None:
    """Load the page's settings from the URL query when they are new to this session (before its widgets)."""
    if keys.CAM_LINK in st.session_state:  # once per session: see the module docstring
        return
    wanted = {k: st.query_params[k] for k in QUERY_KEYS if k in st.query_params}
    if not wanted:
        return
    st.session_state[keys.CAM_LINK] = wanted
    problems = []
    for load in (lambda: _load_model(wanted, device), lambda: _load_methods(wanted), lambda: _load_image(wanted)):
        try:
            load()
        except CamlibError as error:
            problems.append(str(error))
    if problems:
        st.error(md("Part of the link could not be applied: {problems}", problems="; ".join(problems)))


def write_link(model_key: str, layers: list[str], *, class_idx: int | None, image_name: str, uploaded: bool) -> None:
    """Put the current settings in the URL query (only what changed): ``class_idx`` None is the top-1 class; a
    checkpoint model writes nothing."""
    if model_key not in MODELS:
        return
    state = st.session_state
    view = next((k for k, label in VIEWS.items() if label == state.get(keys.CAM_VIEW)), "one")
    current = {"model": model_key, "view": view, "layers": ",".join(layers)}
    if view == "compare":
        current["methods"] = ",".join(state.get(keys.CAM_GRID_METHODS, []))
    else:
        current["method"] = str(state.get(keys.CAM_PIXEL_METHOD if view == "pixel" else keys.CAM_METHOD, ""))
    if class_idx is not None:
        current["class"] = str(class_idx)
    if not uploaded and image_name in SAMPLES:
        current["sample"] = image_name
    elif not uploaded and state.get(f"{keys.CAM}_source") == "CIFAR-10 test image":
        current["cifar"] = f"{state.get(f'{keys.CAM}_cifar_class')}:{state.get(f'{keys.CAM}_cifar_index', 0)}"
    for key in QUERY_KEYS:
        if key not in current and key in st.query_params:
            del st.query_params[key]
        elif key in current and st.query_params.get(key) != current[key]:
            st.query_params[key] = current[key]
    state[keys.CAM_LINK] = current
