"""Augmentation Lab: tune an Albumentations pipeline with sliders and watch augmented CIFAR-10 grids update live."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from camlib.augment.grid import GridResult, augment_grid, pick_images
from camlib.drawing import fast_png, grid_png
from camlib.errors import CamlibError
from camlib.overlay import upscale_nearest
from ui import app_inputs, keys, widgets
from ui.lab import grid as lab_grid
from ui.lab import model_loop, pipeline_editor
from ui.lab import stability as lab_stability
from ui.lab import steps as lab_steps
from ui.lab import url as lab_url
from ui.last_good import keep_last_good
from ui.text import md

GRID_TILE_PX = 96  # each tile is shown at least this large (nearest-neighbour)

st.title("Augmentation Lab")
st.caption(
    "Every change redraws at once. Same seed, same grid: the address bar links to this grid; export the pipeline "
    "and train with it."
)

lab_url.apply_link()  # a shared link's pipeline, seed and grid settings, before the widgets are drawn
root, device = app_inputs.data_root_input(), app_inputs.device_input()  # app-wide: the sidebar of every page

editor, view = st.columns([1, 2.6], gap="large")
with editor:
    st.subheader("Pipeline")
    pipeline_editor.import_widget()
    pipeline_editor.pipeline_editor()

with view:
    source = st.radio(
        "Images", ["CIFAR-10", "Sample photo or upload"], horizontal=True, key=keys.AUG_IMAGES, persist_state="session"
    )
    data = widgets.cifar_input(root, keys.AUG) if source == "CIFAR-10" else None
    images = widgets.image_input(keys.AUG).pixels[None] if data is None else data.images

    top = st.columns(4)
    rows = int(top[0].number_input("Rows", 1, 16, 8, key=keys.AUG_ROWS, persist_state="session"))
    cols = int(top[1].number_input("Columns", 1, 16, 8, key=keys.AUG_COLS, persist_state="session"))
    mode = top[2].selectbox(
        "Mode",
        ["many", "one"],
        key=keys.AUG_MODE,
        persist_state="session",
        format_func={"many": "many images, one augmentation each", "one": "one image, many augmentations"}.get,
    )
    seed = pipeline_editor.seed_input(top[3])
    pipeline = pipeline_editor.current_pipeline()
    pipeline_editor.new_samples_button()

    pool, indices = np.arange(len(images)), None
    if data is not None:
        classes = st.multiselect(
            "Classes", list(data.class_names), key=keys.AUG_CLASSES, persist_state="session", placeholder="all classes"
        )
        if classes:
            pool = np.flatnonzero(np.isin(data.labels, [data.class_names.index(c) for c in classes]))
    position = None
    if mode == "one":
        lab_url.check_image_index(len(pool))  # a link's index beyond the chosen images is refused, not clamped
        position = st.number_input(
            md("Image (0..{last} of the chosen classes)", last=len(pool) - 1),
            0,
            len(pool) - 1,
            0,
            key=keys.AUG_IMAGE_INDEX,
            persist_state="session",
        )
        indices = [int(pool[int(position)])]
    show_labels = data is not None and st.toggle(
        "Class labels on tiles", value=True, key=keys.AUG_SHOW_LABELS, persist_state="session"
    )
    loop_model = model_loop.model_loop_controls(device)

    started = time.perf_counter()
    seconds = lab_grid.estimate(pipeline, images, rows * cols)
    try:
        chosen = pick_images(pool, rows * cols, seed) if mode == "many" else indices
        loop = None if loop_model is None else (st.session_state.get(keys.AUG_LOOP_MODEL), device)
        request = lab_grid.request_key(pipeline, images, chosen, rows, cols, mode, show_labels, loop)
    except CamlibError:  # draw_grid shows it
        chosen, request = None, None

    def draw_grid() -> tuple[GridResult, bytes, bytes, str | None]:
        """Augment, predict (model in the loop) and draw: the grid, the original and augmented PNGs, the summary."""
        picked = pick_images(pool, rows * cols, seed) if mode == "many" else indices
        with lab_grid.progress(seconds) as tick:
            grid = augment_grid(images, pipeline, mode=mode, rows=rows, cols=cols, indices=picked, progress=tick)
        labels = [data.class_names[data.labels[i]] for i in grid.indices] if show_labels else None
        badges, flagged, summary = labels, None, None
        if loop_model is not None:
            report, badges = model_loop.tile_predictions(loop_model, images[list(grid.indices)], grid.tiles)
            flagged, summary = list(report.flipped), model_loop.summary(report)
        if grid.mode == "many":
            original = grid_png(images[list(grid.indices)], rows, cols, min_tile_px=GRID_TILE_PX, labels=labels)
        else:
            original = fast_png(upscale_nearest(images[grid.indices[0]], 256))
        augmented = grid_png(grid.tiles, rows, cols, min_tile_px=GRID_TILE_PX, labels=badges, flagged=flagged)
        return grid, original, augmented, summary

    lab_url.write_link(pipeline, rows=rows, cols=cols, mode=mode, image=None if position is None else int(position))
    # Any camlib error keeps the last grid that worked, and its export; so does a slow grid waiting for its button.
    drawn, stale = lab_grid.drawn_for(request), False
    if drawn is None and lab_grid.ready_to_draw(request, seconds, rows * cols):
        drawn, failed = keep_last_good(keys.AUG_LAST_DRAWN, draw_grid, stale="Showing the last grid that worked.")
        stale = failed is not None
        if not stale:
            lab_grid.remember(request, drawn)
    elif drawn is None:
        drawn, stale = st.session_state.get(keys.AUG_LAST_DRAWN), True
    if drawn is None:
        st.stop()
    grid, original, augmented, summary = drawn
    st.session_state[keys.AUG_LAST_GRID] = grid

    if summary is not None:
        st.markdown(summary)
    left, right = st.columns(2)
    left.image(original, caption="Original", width="stretch", output_format="PNG")
    right.image(augmented, caption=md("Augmented (seed {seed})", seed=grid.seed), width="stretch", output_format="PNG")
    elapsed = (time.perf_counter() - started) * 1000
    st.caption(md("{rows}x{cols} grid augmented and drawn in {ms:.0f} ms.", rows=grid.rows, cols=grid.cols, ms=elapsed))

    with st.expander("One tile step by step (the grid's own draws)"):
        last_tile = len(grid.applied) - 1
        tile = st.number_input("Tile (row-major)", 0, last_tile, 0, key=keys.AUG_TILE, persist_state="session")
        lab_steps.step_by_step(images, pipeline, grid, int(tile), stale=stale)

    st.subheader("Export")
    pipeline_editor.export_widgets(pipeline)

    lab_stability.stability_panel(data, pool, pipeline, device)
