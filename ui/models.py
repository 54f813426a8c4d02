"""Model caches: registry models loaded once per (key, device) and shared by every session, the checkpoint models
beside them, their candidate layers, the methods each layer refuses, the model's forward time and one image's class
probabilities.

Models are cached with ``st.cache_resource`` per (model key, device) and shared by every session: camlib treats them
as read-only (per-model lock, no backward(), hooks removed, modes restored). Every function that runs a model takes
the session's ``device`` (``ui.app_inputs.device_input``: "cpu", "cuda:0"...), so each device has its own copy and
its own cached results, and runs it inside ``ui.jobs.model_job``.
"""

from __future__ import annotations

import numpy as np
import streamlit as st

from camlib.cam import METHODS
from camlib.cost import time_forward
from camlib.device import parse_device
from camlib.evaluation import predict_probabilities
from camlib.layers import LayerInfo, list_candidate_layers
from camlib.models import LoadedModel, load_model
from ui import jobs
from ui.checkpoint_store import get_checkpoint, is_checkpoint_key
from ui.server import memory
from ui.stores import CACHE_TTL


@st.cache_resource(max_entries=6, show_spinner="Loading model...")
def get_model(key: str, device: str) -> LoadedModel:
    """A registry model on ``device``, loaded once per process and device and shared by all sessions (read-only).

    Raises:
        CamlibError: from ``camlib.models.load_model`` (unknown key, weights unavailable) or
            ``camlib.device.parse_device`` (a device this machine does not have).
    """
    loaded = load_model(key, allow_download=False, device=parse_device(device))
    memory.note_model_load()  # the next app run freezes it (ui.server.memory.freeze_at_run_start)
    return loaded


def resolve_model(key: str, device: str) -> LoadedModel:
    """The model behind a registry key (``get_model``) or a checkpoint key (``ui.checkpoint_store``).

    Raises:
        UnknownModelError: a checkpoint key no longer in the shared store (bounded: the oldest checkpoints go).
        CamlibError: from ``get_model`` (unknown key, weights unavailable).
    """
    if is_checkpoint_key(key):
        return get_checkpoint(key, device)
    return get_model(key, device)


@st.cache_resource(max_entries=16, show_spinner=False)
def get_layers(key: str, device: str) -> list[LayerInfo]:
    """The candidate target layers of a model, with their output shapes at the model's input size (a dry forward)."""
    loaded = resolve_model(key, device)
    crop = loaded.spec.preprocessing.crop
    with jobs.model_job(heavy=False):
        return list_candidate_layers(loaded.model, (crop, crop))


@st.cache_resource(max_entries=64, show_spinner=False)
def method_refusals(key: str, device: str, layers: tuple[str, ...]) -> dict[str, str]:
    """``{method: "layer: reason"}`` for the registry methods that cannot explain one of ``layers`` of the model, from
    its structure (``MethodSpec.refusal`` with the layer inspector's layouts); the pickers grey those out.

    Raises:
        CamlibError: from ``resolve_model`` and ``get_layers`` (``LayerError`` for a layer the model does not have).
    """
    loaded, infos = resolve_model(key, device), {c.name: c for c in get_layers(key, device)}
    refused = {}
    for name, spec in METHODS.items():
        for layer in layers:
            info = infos.get(layer)
            reason = spec.refusal(loaded.model, layer, info.layout if info else None)  # structure only, no run
            if reason:
                refused[name] = f"{layer}: {reason}"
                break
    return refused


@st.cache_data(max_entries=32, ttl=CACHE_TTL, show_spinner=False)
def predict(model_key: str, device: str, image: np.ndarray) -> np.ndarray:
    """Class probabilities ``(num_classes,)`` for one image (no gradients)."""
    loaded = resolve_model(model_key, device)
    with jobs.model_job(heavy=False):
        return predict_probabilities(loaded.model, image[None], loaded.spec.preprocessing)[0]


@st.cache_resource(max_entries=8, show_spinner="Timing the model once, to estimate slow methods...")
def forward_seconds(model_key: str, device: str) -> float:
    """One image's forward time of the model on ``device``, s (``camlib.cost.time_forward`` at the model's input size),
    measured once per process; the basis of the slow-method estimate."""
    loaded = resolve_model(model_key, device)
    with jobs.model_job(heavy=False):
        return time_forward(loaded.model, loaded.spec.preprocessing.crop)
