"""Downloads the pages start, with a progress bar: torchvision weights into torch's cache, CIFAR-10 into a data root."""

from __future__ import annotations

import streamlit as st

from camlib.cifar import download_cifar10
from camlib.errors import CamlibError
from camlib.models import download_file, get_spec, torchvision_cache_path
from ui.text import md


def ensure_weights(key: str) -> None:
    """Download torchvision weights into torchvision's cache with a progress bar, once.

    Raises:
        CamlibError: from ``camlib.models`` (unknown key, download failed or offline).
    """
    spec = get_spec(key)
    if spec.source != "torchvision" or torchvision_cache_path(spec).exists():
        return
    bar = st.progress(0.0, text=md("Downloading {model} weights...", model=spec.label))

    def report(done: int, total: int) -> None:
        bar.progress(
            min(1.0, done / total) if total else 0.0,
            text=md(
                "Downloading {model} weights: {done:.1f} / {total:.1f} MB",
                model=spec.label,
                done=done / 1e6,
                total=total / 1e6,
            ),
        )

    try:
        download_file(spec.weights_url, torchvision_cache_path(spec), progress=report)
    finally:
        bar.empty()


def cifar_download_button(root: str, *, key: str) -> None:
    """A button that downloads the official CIFAR-10 release into ``root`` and reruns; an error is shown."""
    if not st.button("Download CIFAR-10 into the data root", key=key):
        return
    bar = st.progress(0.0, text="Downloading CIFAR-10...")

    def report(done: int, total: int) -> None:
        bar.progress(
            min(1.0, done / total) if total else 0.0,
            text=md("{done:.0f} / {total:.0f} MB", done=done / 1e6, total=total / 1e6),
        )

    try:
        download_cifar10(root, report)
    except CamlibError as error:
        st.error(md("{error}", error=error))
        return
    st.rerun()
