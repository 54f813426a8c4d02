"""Data caches: CIFAR-10 splits shared read-only by every session, and uploads decoded once."""

from __future__ import annotations

import streamlit as st

from camlib.cifar import CifarData, detect_source, load_cifar10
from camlib.imaging import DecodedImage, decode_image
from ui.stores import CACHE_TTL


@st.cache_data(max_entries=16, ttl=CACHE_TTL, show_spinner=False)
def decode_upload(data: bytes, filename: str = "") -> DecodedImage:
    """An upload decoded by ``camlib.imaging.decode_image``; ``filename`` only adds a note when its extension names
    another format than the bytes hold (e.g. JPEG bytes named .png are decoded as JPEG, and the note says so)."""
    return decode_image(data, filename=filename)


@st.cache_resource(max_entries=4, show_spinner="Loading CIFAR-10...")
def get_cifar(root: str, split: str) -> CifarData:
    """A CIFAR-10 split, loaded once per process and shared read-only by every session."""
    data = load_cifar10(root, split)
    data.images.setflags(write=False)
    data.labels.setflags(write=False)
    return data


def cifar_test_set(root: str) -> CifarData | None:
    """The CIFAR-10 test split under ``root`` (the app's data root), or None when no copy is there."""
    if not root or detect_source(root) is None:
        return None
    return get_cifar(root, "test")
