"""App-wide inputs, one widget and one key for every page: the CIFAR-10 data root and the device, in the sidebar.

Each page that reads them draws them through ``data_root_input`` and ``device_input`` (same key, kept for the
session), rather than
``app.py``: AppTest (Streamlit 1.67) runs a ``switch_page`` without the main script's elements, so a widget drawn in
``app.py`` could not be driven by the page tests.
"""

from __future__ import annotations

import streamlit as st

from camlib.cifar import default_root
from camlib.device import available_devices, default_device
from camlib.errors import InputError
from ui import keys
from ui.text import md


def data_root_input() -> str:
    """The CIFAR-10 data root text input, in the sidebar (default: ``camlib.cifar.default_root()``, from
    ``CAMLIB_CIFAR10_ROOT``); its value, shared by every page."""
    return st.sidebar.text_input(
        "CIFAR-10 data root",
        value=str(default_root() or ""),
        key=keys.DATA_ROOT,
        persist_state="session",
        help="A folder with cifar-10-batches-py/ (official release) or train/, test/ image folders.",
    )


def device_input() -> str:
    """The device selectbox, in the sidebar: the devices this machine has (``camlib.device.available_devices``),
    starting at ``camlib.device.default_device()`` (``$CAMLIB_DEVICE``, else CUDA when available, else CPU). A bad
    ``$CAMLIB_DEVICE`` is shown as an error and the CPU is used. Returns the canonical name ("cpu", "cuda:0"...),
    which keys the shared model cache (``ui.models``): each device has its own copy of a model."""
    options = list(available_devices())
    try:
        start = str(default_device())
    except InputError as error:
        st.sidebar.error(md("{error}. Using the CPU.", error=error))
        start = "cpu"
    return st.sidebar.selectbox(
        "Device",
        options,
        index=options.index(start) if start in options else 0,
        key=keys.DEVICE,
        persist_state="session",
        help="Where models run. Each device keeps its own copy of a model, shared by every session.",
    )
