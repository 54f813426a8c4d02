"""Downloads the pages start, with a progress bar: torchvision weights into torch's cache, CIFAR-10 into a data root.

Nothing is downloaded without a click on a button of the page: a link or a query naming a model whose weights are
not cached selects nothing new until the visitor presses "Download". The operator turns downloads off with
``CAMLIB_DOWNLOADS=off`` (the buttons are then replaced by a note) and caps the disk they use with
``CAMLIB_DOWNLOAD_MAX_MB`` (``camlib.models.download_allowance``). Messages name no server path: "the torch cache".
"""

from __future__ import annotations

from collections.abc import Callable

import streamlit as st
from streamlit.delta_generator import DeltaGenerator

from camlib.cifar import download_cifar10
from camlib.errors import CamlibError
from camlib.models import (
    DOWNLOADS_ENV,
    download_allowance,
    download_file,
    downloads_enabled,
    get_spec,
    torchvision_cache_path,
)
from ui.text import md


def weights_missing(key: str) -> bool:
    """Whether registry model ``key`` needs a download first: torchvision weights not in the torch cache.

    Raises:
        CamlibError: an unknown key (``camlib.models.get_spec``).
    """
    spec = get_spec(key)
    return spec.source == "torchvision" and not torchvision_cache_path(spec).exists()


def offer_weights(key: str, *, button_key: str) -> None:
    """For a model whose weights are missing (``weights_missing``): say so and, where the operator allows downloads,
    show a button that downloads them into the torch cache with a progress bar and reruns the page. Downloads only
    on the click; a failure is shown with ``st.error``.
    """
    spec = get_spec(key)
    if not downloads_enabled():
        st.warning(
            md(
                "{model}'s pretrained weights are not on this server, and downloads are turned off here "
                "({env}). Ask the operator to place them in the torch cache, or pick another model.",
                model=spec.label,
                env=f"${DOWNLOADS_ENV}",
            )
        )
        return
    st.info(md("{model}'s pretrained weights are not on this server yet.", model=spec.label))
    if not st.button(md("Download {model} weights", model=spec.label), key=button_key):
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

    path = torchvision_cache_path(spec)
    _download_then_rerun(
        bar, lambda: download_file(spec.weights_url, path, progress=report, max_bytes=download_allowance(path.parent))
    )


def cifar_download_button(root: str, *, key: str) -> None:
    """A button that downloads the official CIFAR-10 release into ``root`` and reruns; an error is shown. Where the
    operator turned downloads off, a note instead of the button."""
    if not downloads_enabled():
        st.caption(md("Downloads are turned off on this server ({env}).", env=f"${DOWNLOADS_ENV}"))
        return
    if not st.button("Download CIFAR-10 into the data root", key=key):
        return
    bar = st.progress(0.0, text="Downloading CIFAR-10...")

    def report(done: int, total: int) -> None:
        bar.progress(
            min(1.0, done / total) if total else 0.0,
            text=md("{done:.0f} / {total:.0f} MB", done=done / 1e6, total=total / 1e6),
        )

    _download_then_rerun(bar, lambda: download_cifar10(root, report))


def _download_then_rerun(bar: DeltaGenerator, download: Callable[[], object]) -> None:
    """Run ``download`` under its progress ``bar`` (removed however it ends), then rerun the page; a camlib error is
    shown with ``st.error`` instead."""
    try:
        download()
    except CamlibError as error:
        st.error(md("{error}", error=error))
        return
    finally:
        bar.empty()
    st.rerun()
