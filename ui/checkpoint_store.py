"""The store of user checkpoints loaded in this process, shared by every session and bounded in models and bytes.

A checkpoint is loaded once per (architecture, file content, device) and used under a model key
``checkpoint:{arch}:{hash}``; ``ui.models.resolve_model`` turns such a key and a device (or a registry key) into the
loaded model.
"""

from __future__ import annotations

import hashlib
import threading

import streamlit as st
import torch

from camlib.errors import CheckpointError, UnknownModelError
from camlib.models import MAX_CHECKPOINT_BYTES, LoadedModel, load_checkpoint

CHECKPOINT_PREFIX = "checkpoint:"
CHECKPOINT_STORE_MODELS = 4
CHECKPOINT_STORE_BYTES = 2 * MAX_CHECKPOINT_BYTES  # weights of user checkpoints kept for all sessions together
_STORE_LOCK = threading.Lock()


@st.cache_resource(show_spinner=False)
def _checkpoint_models() -> dict[str, LoadedModel]:
    """The shared store of loaded user checkpoints, ``"{key}@{device}"`` -> model, oldest first (bounded by
    ``register_checkpoint``)."""
    return {}


@st.cache_resource(show_spinner=False)
def _upload_keys() -> dict[str, str]:
    """``"{upload id}:{architecture}"`` -> model key: a rerun with the same upload does not hash the file again."""
    return {}


@st.cache_resource(show_spinner=False)
def _refusals() -> dict[str, str]:
    """``"{upload id}:{architecture}"`` -> why the upload was refused: a rerun with the same refused upload (every
    widget change reruns the page) shows the reason again without reading the file again."""
    return {}


def _remember(table: dict[str, str], upload: str, value: str) -> None:
    """``table[upload] = value`` in a table shared by every session; the newest ``8 * CHECKPOINT_STORE_MODELS`` stay."""
    with _STORE_LOCK:
        table[upload] = value
        while len(table) > 8 * CHECKPOINT_STORE_MODELS:
            table.pop(next(iter(table)))


def _weight_bytes(loaded: LoadedModel) -> int:
    return sum(t.numel() * t.element_size() for t in loaded.model.state_dict().values())


def _slot(key: str, device: str) -> str:
    """Where a checkpoint loaded on ``device`` sits in the store: each device has its own copy."""
    return f"{key}@{device}"


def is_checkpoint_key(key: str) -> bool:
    """Whether a model key names a user checkpoint (from ``register_checkpoint``) rather than a registry model."""
    return key.startswith(CHECKPOINT_PREFIX)


def register_checkpoint(arch: str, data: bytes, filename: str, *, device: str, upload_id: str = "") -> str:
    """Load a user checkpoint (safely) onto ``device`` and return the model key under which the page can use it.

    The key is the architecture and the file's SHA-256, so a file several sessions upload is loaded once. With
    ``upload_id`` (Streamlit's ``UploadedFile.file_id``, new for every upload) later reruns skip the hashing (1.0 s
    for a 528 MB VGG-16-BN checkpoint on this project's CPU machine). The store, shared by every session, keeps at most
    ``CHECKPOINT_STORE_MODELS`` models and ``CHECKPOINT_STORE_BYTES`` of weights; the oldest are dropped first. The
    same file on another device is another entry (loaded again from ``data``, never copied from a shared model). A
    refused upload is remembered by ``upload_id`` too: its reruns raise the same ``CheckpointError`` without reading it.

    Raises:
        CheckpointError, UnknownModelError: from ``camlib.models.load_checkpoint``.
    """
    store, by_upload, refused = _checkpoint_models(), _upload_keys(), _refusals()
    upload = f"{upload_id}:{arch}"
    reason = refused.get(upload) if upload_id else None  # one lookup: another session may drop the entry meanwhile
    if reason is not None:
        raise CheckpointError(reason)
    remembered = by_upload.get(upload) if upload_id else None
    if remembered is not None and _slot(remembered, device) in store:
        return remembered
    key = f"{CHECKPOINT_PREFIX}{arch}:{hashlib.sha256(data).hexdigest()[:16]}"
    if _slot(key, device) not in store:
        try:
            with st.spinner("Loading checkpoint..."):
                loaded = load_checkpoint(arch, data, filename, device=torch.device(device))
        except CheckpointError as error:
            if upload_id:
                _remember(refused, upload, str(error))
            raise
        size = _weight_bytes(loaded)
        with _STORE_LOCK:  # the store is shared by every session
            while store and (
                len(store) >= CHECKPOINT_STORE_MODELS
                or size + sum(map(_weight_bytes, store.values())) > CHECKPOINT_STORE_BYTES
            ):
                store.pop(next(iter(store)))
            store[_slot(key, device)] = loaded
    if upload_id:
        _remember(by_upload, upload, key)
    return key


def get_checkpoint(key: str, device: str) -> LoadedModel:
    """The loaded checkpoint behind a key from ``register_checkpoint``, on ``device``.

    Raises:
        UnknownModelError: the key is not in the shared store on this device (bounded: the oldest checkpoints go).
    """
    store = _checkpoint_models()
    if _slot(key, device) not in store:
        raise UnknownModelError(
            "this checkpoint is no longer loaded (the app keeps only the latest ones): upload it again"
        )
    return store[_slot(key, device)]
