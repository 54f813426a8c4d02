"""Shareable CAM Explorer state: the model, view, method (or the grid's methods), target layers, class and image
live in the URL query (``st.query_params``), so a link reproduces the maps (the Lab has ``ui.lab.url``).

``apply_link`` runs before the page's widgets are drawn and loads the settings from the query on the session's first
run only (a link opened in a tab, or pasted into one: both load the page, a new session). Later reruns never read it
back: a browser sends its URL's query with each rerun, and one sent before the page's own last update reached it
would otherwise put old settings back (an upload replaced by the sample photo of an earlier URL). ``write_link`` puts
the current settings back after the page is drawn. Only registry models and images anyone can open are shared: a
checkpoint or an uploaded image leaves its key out.

A link is untrusted text, read by ``parse_link`` as strictly as the pickers allow: every number with
``camlib.parsing.parse_int`` and its range (a class of the model, an image among that class's test images), every
name against its registry, at most ``widgets.MAX_LAYERS`` layers and ``cam_grid.MAX_METHODS`` methods. Each part
that fails is named in one ``st.error`` and the rest applies; none is replaced by a default. A link only sets what
the pickers set, so the same estimates and start buttons apply (``cam_view.ready_to_start``), and a model whose
weights are not cached waits for the page's download button (``ui.downloads``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import streamlit as st

from camlib.cam import METHODS
from camlib.cifar import CLASS_NAMES
from camlib.errors import CamlibError, InputError
from camlib.models import DEFAULT_MODEL, MODELS, class_names_for
from camlib.parsing import parse_int
from camlib.pixel_attribution import PIXEL_METHODS
from camlib.samples import SAMPLES
from ui import datasets, downloads, keys, models, widgets
from ui.explorer import cam_grid
from ui.text import md

QUERY_KEYS = ("model", "view", "method", "methods", "layers", "class", "sample", "cifar")
VIEWS = {"one": "One method", "compare": "Compare methods", "pixel": "Pixel attribution"}  # query value -> label
_SHOWN = 40  # characters of a refused value quoted in a message


@dataclass(frozen=True)
class Link:
    """What a link sets, each part None when the link does not set it (or it was refused)."""

    model: str | None = None
    view: str | None = None
    method: str | None = None
    methods: tuple[str, ...] | None = None
    layers: tuple[str, ...] | None = None
    class_idx: int | None = None
    sample: str | None = None
    cifar: tuple[str, int] | None = None


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise InputError(message)


def _quote(text: str) -> str:
    return repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}... ({len(text):,} characters)"


def _names(text: str, what: str, cap: int) -> tuple[str, ...]:
    """A comma-separated list of at most ``cap`` distinct names (repeats once), counted before it is split."""
    _check(text.count(",") < 2 * cap, f"{what}: a link names at most {cap}, got {text.count(',') + 1:,}")
    names = tuple(dict.fromkeys(n for n in text.split(",") if n))
    _check(bool(names), f"{what}: the link names none")
    _check(len(names) <= cap, f"{what}: a link names at most {cap} (as the picker), got {len(names)}")
    return names


def parse_link(
    query: Mapping[str, object],
    *,
    current_model: str,
    layer_names: Callable[[str], Sequence[str]],
    cifar_members: Callable[[str], int],
) -> tuple[Link, list[str]]:
    """The settings a CAM Explorer link sets, and a message for each part refused (the others still apply).

    Args:
        query: the URL query, name -> value (``st.query_params``); keys other than ``QUERY_KEYS`` are ignored, and a
            value that is not a string is refused.
        current_model: the model the layers and class apply to when the link names none (or a refused one).
        layer_names: a model's candidate layers (``models.get_layers``); may raise ``CamlibError`` (e.g. weights
            not downloaded), which refuses the layers part.
        cifar_members: the number of CIFAR-10 test images of a class on this server; may raise ``CamlibError``.

    Returns:
        ``(link, problems)``: ``problems`` holds one message per refused part, naming it.
    """
    parts: dict[str, object] = {}
    problems: list[str] = []
    wanted = {k: query[k] for k in QUERY_KEYS if k in query}

    def part(name: str, read: Callable[[str], object]) -> None:
        if name not in wanted:
            return
        value = wanted[name]
        try:
            _check(isinstance(value, str), f"{name} must be text, got {type(value).__name__}")
            parts[name] = read(value)
        except CamlibError as error:
            problems.append(str(error))

    part("model", lambda v: _checked(v in MODELS, v, f"model must be one of {', '.join(MODELS)}"))
    model = parts.get("model", current_model if current_model in MODELS else DEFAULT_MODEL)
    part("layers", lambda v: _layers(v, model, layer_names))
    part("class", lambda v: parse_int(v, "class", minimum=0, maximum=len(class_names_for(MODELS[model])) - 1))
    part("view", lambda v: _checked(v in VIEWS, v, f"view must be one of {', '.join(VIEWS)}"))
    registry = PIXEL_METHODS if parts.get("view") == "pixel" else METHODS
    part("method", lambda v: _checked(v in registry, v, f"method must be one of {', '.join(registry)}"))
    part("methods", lambda v: _methods(v))
    if "sample" in wanted:
        part("sample", lambda v: _checked(v in SAMPLES, v, f"sample must be one of {', '.join(SAMPLES)}"))
    else:
        part("cifar", lambda v: _cifar(v, model, cifar_members))
    link = Link(
        model=parts.get("model"),
        view=parts.get("view"),
        method=parts.get("method"),
        methods=parts.get("methods"),
        layers=parts.get("layers"),
        class_idx=parts.get("class"),
        sample=parts.get("sample"),
        cifar=parts.get("cifar"),
    )
    return link, problems


def _checked(ok: bool, value: str, message: str) -> str:
    _check(ok, f"{message}, got {_quote(value)}")
    return value


def _layers(text: str, model: str, layer_names: Callable[[str], Sequence[str]]) -> tuple[str, ...]:
    layers = _names(text, "layers", widgets.MAX_LAYERS)
    known = set(layer_names(model))
    unknown = [n for n in layers if n not in known]
    _check(not unknown, f"layers must be layers of {model}, got {_quote(','.join(unknown))}")
    return layers


def _methods(text: str) -> tuple[str, ...]:
    methods = _names(text, "methods", cam_grid.MAX_METHODS)
    unknown = [m for m in methods if m not in METHODS]
    _check(not unknown, f"methods must be among {', '.join(METHODS)}, got {_quote(','.join(unknown))}")
    return methods


def _cifar(text: str, model: str, cifar_members: Callable[[str], int]) -> tuple[str, int]:
    """``class:position`` among that class's test images, e.g. ``cat:3``."""
    name, colon, position = text.partition(":")
    _check(bool(colon) and name in CLASS_NAMES, f"cifar must be class:index, e.g. cat:3, got {_quote(text)}")
    _check(MODELS[model].dataset == "cifar10", f"cifar images need a CIFAR-10 model, not {model}")
    members = cifar_members(name)
    return name, parse_int(position, f"cifar index of {name}", minimum=0, maximum=members - 1)


def _layer_names(model: str, device: str) -> list[str]:
    if downloads.weights_missing(model):
        raise InputError(
            f"layers apply once {MODELS[model].label}'s weights are downloaded: press the download button, then "
            "open the link again"
        )
    return [c.name for c in models.get_layers(model, device)]


def _cifar_members(root: str, name: str) -> int:
    data = datasets.cifar_test_set(root)
    _check(data is not None, "cifar: no CIFAR-10 test images on this server (set the data root)")
    return int(np.count_nonzero(data.labels == data.class_names.index(name)))


def apply_link(device: str, root: str) -> None:
    """Load the page's settings from the URL query when they are new to this session (before its widgets); a part
    that ``parse_link`` refuses is named in an ``st.error`` and the rest applies."""
    if keys.CAM_LINK in st.session_state:  # once per session: see the module docstring
        return
    wanted = {k: st.query_params[k] for k in QUERY_KEYS if k in st.query_params}
    if not wanted:
        return
    st.session_state[keys.CAM_LINK] = wanted
    state = st.session_state
    link, problems = parse_link(
        wanted,
        current_model=state.get(f"{keys.CAM}_model", DEFAULT_MODEL),
        layer_names=lambda model: _layer_names(model, device),
        cifar_members=lambda name: _cifar_members(root, name),
    )
    model = link.model or state.get(f"{keys.CAM}_model", DEFAULT_MODEL)
    if link.model is not None:
        state[f"{keys.CAM}_model"] = link.model
    if link.layers is not None:
        state[keys.cam_layers(model)] = list(link.layers)
    if link.class_idx is not None:
        state[keys.CAM_CLASS_MODE] = "Choose a class"
        state[keys.cam_class(model)] = link.class_idx
    view = link.view or ("one" if "view" not in wanted else None)
    if view is not None:
        state[keys.CAM_VIEW] = VIEWS[view]
    if link.method is not None:
        state[keys.CAM_PIXEL_METHOD if view == "pixel" else keys.CAM_METHOD] = link.method
    if link.methods is not None:
        state[keys.CAM_GRID_METHODS] = list(link.methods)
    if link.sample is not None:
        state[f"{keys.CAM}_source"] = "Sample photo"
        state[f"{keys.CAM}_sample"] = link.sample
    elif link.cifar is not None:
        state[f"{keys.CAM}_source"] = "CIFAR-10 test image"
        state[f"{keys.CAM}_cifar_class"], state[f"{keys.CAM}_cifar_index"] = link.cifar
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
