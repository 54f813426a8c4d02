"""Augmentation Lab: tune an Albumentations pipeline with sliders and watch augmented CIFAR-10 grids update live."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from camlib.augment.grid import augment_grid, pick_images
from camlib.cifar import default_root
from camlib.drawing import fast_png, grid_png
from camlib.errors import CamlibError
from camlib.overlay import upscale_nearest
from ui import model_loop, pipeline_editor, widgets
from ui.text import md

GRID_TILE_PX = 96  # each tile is shown at least this large (nearest-neighbour)

st.title("Augmentation Lab")
st.caption("Every change redraws at once. Same seed, same grid: export the pipeline and train with it.")

with st.sidebar:
    root = st.text_input(
        "CIFAR-10 data root",
        value=str(default_root() or ""),
        key="aug_data_root",
        persist_state="session",
        help="A folder with cifar-10-batches-py/ (official release) or train/, test/ image folders.",
    )

editor, view = st.columns([1, 2.6], gap="large")
with editor:
    st.subheader("Pipeline")
    pipeline_editor.import_widget()
    pipeline_editor.pipeline_editor()

with view:
    source = st.radio(
        "Images", ["CIFAR-10", "Sample photo or upload"], horizontal=True, key="aug_images", persist_state="session"
    )
    data = widgets.cifar_input(root, "aug") if source == "CIFAR-10" else None
    images = widgets.image_input("aug").pixels[None] if data is None else data.images

    top = st.columns(4)
    rows = int(top[0].number_input("Rows", 1, 16, 8, key="aug_rows", persist_state="session"))
    cols = int(top[1].number_input("Columns", 1, 16, 8, key="aug_cols", persist_state="session"))
    mode = top[2].selectbox(
        "Mode",
        ["many", "one"],
        key="aug_mode",
        persist_state="session",
        format_func={"many": "many images, one augmentation each", "one": "one image, many augmentations"}.get,
    )
    pipeline_editor.ensure_state()
    st.session_state.setdefault("aug_seed_input", st.session_state[pipeline_editor.SEED])
    seed = int(top[3].number_input("Seed", 0, 2**32 - 1, key="aug_seed_input", persist_state="session"))
    st.session_state[pipeline_editor.SEED] = seed
    pipeline = pipeline_editor.current_pipeline()
    st.button(
        "New samples",
        key="aug_new_samples",
        on_click=lambda: st.session_state.update(aug_seed_input=(int(st.session_state["aug_seed_input"]) + 1) % 2**32),
    )

    pool = np.arange(len(images))
    if data is not None:
        classes = st.multiselect(
            "Classes", list(data.class_names), key="aug_classes", persist_state="session", placeholder="all classes"
        )
        if classes:
            pool = np.flatnonzero(np.isin(data.labels, [data.class_names.index(c) for c in classes]))
    if mode == "one":
        position = st.number_input(
            md("Image (0..{last} of the chosen classes)", last=len(pool) - 1),
            0,
            len(pool) - 1,
            0,
            key="aug_image_index",
            persist_state="session",
        )
        indices = [int(pool[int(position)])]
    show_labels = data is not None and st.toggle(
        "Class labels on tiles", value=True, key="aug_show_labels", persist_state="session"
    )
    loop_model = model_loop.model_loop_controls()

    started = time.perf_counter()
    try:  # augmenting, predicting and drawing: any camlib error keeps the last grid that worked, and its export
        if mode == "many":
            indices = pick_images(pool, rows * cols, seed)
        grid = augment_grid(images, pipeline, mode=mode, rows=rows, cols=cols, indices=indices)
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
        st.session_state["aug_last_grid"], st.session_state["aug_last_drawn"] = grid, (original, augmented, summary)
    except CamlibError as error:
        st.error(md("{error}", error=error))
        if "aug_last_drawn" not in st.session_state:
            st.stop()
        grid, (original, augmented, summary) = st.session_state["aug_last_grid"], st.session_state["aug_last_drawn"]
        st.caption("Showing the last grid that worked.")

    if summary is not None:
        st.markdown(summary)
    left, right = st.columns(2)
    left.image(original, caption="Original", width="stretch", output_format="PNG")
    right.image(augmented, caption=md("Augmented (seed {seed})", seed=grid.seed), width="stretch", output_format="PNG")
    elapsed = (time.perf_counter() - started) * 1000
    st.caption(md("{rows}x{cols} grid augmented and drawn in {ms:.0f} ms.", rows=grid.rows, cols=grid.cols, ms=elapsed))

    with st.expander("Parameters applied to each tile"):
        tile = st.number_input("Tile (row-major)", 0, len(grid.applied) - 1, 0, key="aug_tile", persist_state="session")
        st.json(list(grid.applied[int(tile)]))

    st.subheader("Export")
    pipeline_editor.export_widgets(pipeline)
