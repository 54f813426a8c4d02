"""The Augmentation Lab's cost check before a grid, and its progress while drawing, as the CAM page's
(ui.explorer.cam_view).

- ``ready_to_draw``: a grid whose estimated time (``camlib.augment.estimate_grid``: each step timed on this machine
  with its own parameters, at the size it can get) exceeds ``SLOW_S`` waits for a button, with the estimate shown;
  once drawn, the same request is shown again without being drawn again.
- ``progress``: a progress bar whose callback ``augment_grid`` calls between tiles; Streamlit raises its rerun/stop
  request there, so a superseded run or a closed tab stops the grid at the next tile.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import streamlit as st

from camlib.augment import Pipeline, ProgressCallback, estimate_grid, pipeline_to_query
from camlib.errors import CamlibError
from ui import keys
from ui.explorer.cam_view import SLOW_S
from ui.text import md

QUIET_S = 0.5  # estimated seconds below which a grid is drawn without a progress bar


def request_key(pipeline: Pipeline, images: np.ndarray, chosen: list[int], *settings: object) -> str:
    """A digest of everything a grid depends on: the pipeline and seed, the chosen images' pixels and ``settings``
    (rows, cols, mode, labels, the model in the loop). Raises ``PipelineError`` for an invalid pipeline."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update(repr((pipeline_to_query(pipeline), int(pipeline.seed), chosen, settings, images.shape)).encode())
    digest.update(np.ascontiguousarray(images[chosen]).data)
    return digest.hexdigest()


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def estimate(pipeline: Pipeline, images: np.ndarray, tiles: int) -> float | None:
    """The grid's estimated seconds, measured only until it exceeds ``SLOW_S`` (a lower bound above it); None when
    the pipeline is invalid (the grid then shows the error)."""
    try:
        return estimate_grid(pipeline, int(images.shape[1]), int(images.shape[2]), tiles, budget=SLOW_S).seconds
    except CamlibError:
        return None


def ready_to_draw(request: str, seconds: float | None, tiles: int) -> bool:
    """Whether to draw the grid now: True when it is estimated at most ``SLOW_S`` (or has no estimate), or when the
    button was pressed for this ``request``; otherwise the estimate is shown with the button."""
    if seconds is None or seconds <= SLOW_S or st.session_state.get(keys.AUG_APPROVED, (None,))[0] == request:
        return True
    st.info(
        md(
            "This pipeline takes about **{t}** or more for {n} tiles on this server (each step timed with its own "
            "settings at the size it can reach). Changing any setting while it runs stops it.",
            t=_duration(seconds),
            n=tiles,
        )
    )
    if st.button(md("Draw the grid (about {t})", t=_duration(seconds)), key=keys.AUG_START):
        st.session_state[keys.AUG_APPROVED] = (request, None)
        return True
    return False


def drawn_for(request: str) -> object | None:
    """The grid drawn for an approved ``request``, if it was drawn (reruns show it without drawing it again)."""
    approved, drawn = st.session_state.get(keys.AUG_APPROVED, (None, None))
    return drawn if approved == request else None


def remember(request: str, drawn: object) -> None:
    """Keep the grid drawn for an approved ``request``."""
    if st.session_state.get(keys.AUG_APPROVED, (None,))[0] == request:
        st.session_state[keys.AUG_APPROVED] = (request, drawn)


@contextmanager
def progress(seconds: float | None) -> Iterator[ProgressCallback | None]:
    """A progress bar for a grid estimated above ``QUIET_S`` whose callback ``(done, total)`` goes to
    ``augment_grid``; None for a quick one. The bar is removed however the grid ends."""
    if seconds is None or seconds <= QUIET_S:
        yield None
        return
    bar = st.progress(0.0, text="Augmenting: starting...")

    def report(done: int, total: int) -> None:
        bar.progress(
            min(done / max(total, 1), 1.0), text=md("Augmenting: tile {done} of {total}", done=done, total=total)
        )

    try:
        yield report
    finally:
        bar.empty()
