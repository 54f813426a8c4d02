"""The Augmentation Lab's step-by-step view: one tile of the grid after each step of the pipeline (same draws)."""

from __future__ import annotations

import numpy as np
import streamlit as st

from camlib.augment import GridResult, Pipeline, trace_tile
from camlib.drawing import fast_png
from camlib.errors import CamlibError
from camlib.overlay import upscale_nearest
from ui import keys
from ui.text import md

STEP_PX = 96  # each step's image is shown at least this large (nearest-neighbour)
PER_ROW = 6


def step_by_step(images: np.ndarray, pipeline: Pipeline, grid: GridResult, tile: int, *, stale: bool) -> None:
    """Draw tile ``tile`` of ``grid``: its source image, then the output of each enabled step with the parameters it
    drew ("not applied" where its probability skipped it), then the applied parameters as JSON. When ``stale`` (the
    page shows its last good grid after an error), the last good view is drawn again instead."""
    if stale:
        trace = st.session_state.get(keys.AUG_LAST_STEPS)
        if trace is None:
            return
    else:
        try:
            trace = trace_tile(images, pipeline, grid, tile)
        except CamlibError as error:
            st.error(md("The step-by-step view failed: {error}", error=error))
            return
        st.session_state[keys.AUG_LAST_STEPS] = trace
    panels = [("source image", trace.original, None)] + [
        (name, image, applied is not None)
        for name, image, applied in zip(trace.transforms, trace.images, trace.applied, strict=True)
    ]
    for start in range(0, len(panels), PER_ROW):
        columns = st.columns(PER_ROW)
        for column, (position, (name, image, fired)) in zip(
            columns, enumerate(panels[start : start + PER_ROW], start=start), strict=False
        ):
            template = "{name}, {w}x{h}" if fired is None else "{k}. {name}, {w}x{h}"
            if fired is False:
                template = "{k}. {name} (not applied), {w}x{h}"
            caption = md(template, k=position, name=name, w=image.shape[1], h=image.shape[0])
            column.image(fast_png(upscale_nearest(image, STEP_PX)), caption=caption, output_format="PNG")
    st.json([applied for applied in trace.applied if applied is not None], expanded=False)
