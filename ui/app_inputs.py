"""App-wide inputs, one widget and one key for every page: the CIFAR-10 data root, in the sidebar.

Each page that reads the root draws it through ``data_root_input`` (same key, kept for the session), rather than
``app.py``: AppTest (Streamlit 1.67) runs a ``switch_page`` without the main script's elements, so a widget drawn in
``app.py`` could not be driven by the page tests.
"""

from __future__ import annotations

import streamlit as st

from camlib.cifar import default_root
from ui import keys


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
