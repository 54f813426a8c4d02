"""Augmentation Lab: tune an Albumentations pipeline with sliders and watch augmented CIFAR-10 grids update live."""

from __future__ import annotations

import time

import numpy as np
import streamlit as st

from camlib.augment import (
    augment_grid,
    pipeline_from_json,
    pipeline_to_json,
    pipeline_to_python,
    pipeline_to_yaml,
    tile_grid,
)
from camlib.cifar import default_root, detect_source, download_cifar10
from camlib.errors import CamlibError
from camlib.overlay import upscale_nearest
from ui import model_loop, pipeline_editor, render, state, widgets

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
    imported = st.file_uploader("Import a pipeline (JSON)", type=["json"], key="aug_import")
    if imported is not None and st.session_state.get("aug_imported_id") != imported.file_id:
        try:
            pipeline_editor.load_pipeline(pipeline_from_json(imported.getvalue().decode("utf-8", "replace")))
            st.session_state["aug_imported_id"] = imported.file_id
            st.success(f"Imported {imported.name}.")
        except CamlibError as error:
            st.error(f"Cannot import {imported.name}: {error}")
    pipeline = pipeline_editor.pipeline_editor()

with view:
    source = st.radio(
        "Images", ["CIFAR-10", "Sample photo or upload"], horizontal=True, key="aug_images", persist_state="session"
    )
    labels: list[str] | None = None
    data = None
    if source == "CIFAR-10":
        if root and detect_source(root):
            split = st.radio("Split", ["test", "train"], horizontal=True, key="aug_split", persist_state="session")
            try:
                data = state.get_cifar(root, split)
            except CamlibError as error:
                st.error(str(error))
        else:
            st.warning(
                f"No CIFAR-10 found under '{root}'. Set the data root in the sidebar, or download the "
                "official release (170 MB) there. Meanwhile the grid uses a sample photo."
            )
            if root and st.button("Download CIFAR-10 into the data root", key="aug_download"):
                bar = st.progress(0.0, text="Downloading CIFAR-10...")
                try:
                    download_cifar10(
                        root,
                        lambda done, total: bar.progress(
                            min(1.0, done / total) if total else 0.0, text=f"{done / 1e6:.0f} / {total / 1e6:.0f} MB"
                        ),
                    )
                    st.rerun()
                except CamlibError as error:
                    st.error(str(error))
    if data is None:
        image = widgets.image_input("aug")
        images = image.pixels[None]
    else:
        images = data.images

    top = st.columns(4)
    rows = top[0].number_input("Rows", 1, 16, 8, key="aug_rows", persist_state="session")
    cols = top[1].number_input("Columns", 1, 16, 8, key="aug_cols", persist_state="session")
    mode = top[2].selectbox(
        "Mode",
        ["many", "one"],
        key="aug_mode",
        persist_state="session",
        format_func={"many": "many images, one augmentation each", "one": "one image, many augmentations"}.get,
    )
    pipeline_editor.ensure_state()
    st.session_state.setdefault("aug_seed_input", st.session_state[pipeline_editor.SEED])
    seed = top[3].number_input("Seed", 0, 2**32 - 1, key="aug_seed_input", persist_state="session")
    st.session_state[pipeline_editor.SEED] = int(seed)
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
    count = int(rows * cols)
    if mode == "one":
        position = st.number_input(
            f"Image (0..{len(pool) - 1} of the chosen classes)",
            0,
            len(pool) - 1,
            0,
            key="aug_image_index",
            persist_state="session",
        )
        indices = [int(pool[int(position)])]
    else:
        rng = np.random.default_rng(int(seed))
        indices = (
            rng.choice(pool, size=count, replace=False) if len(pool) >= count else np.resize(pool, count)
        ).tolist()

    started = time.perf_counter()
    try:
        grid = augment_grid(images, pipeline, mode=mode, rows=int(rows), cols=int(cols), indices=indices)
        st.session_state["aug_last_grid"] = grid
    except CamlibError as error:
        st.error(str(error))
        grid = st.session_state.get("aug_last_grid")
        if grid is None:
            st.stop()
        st.caption("Showing the last grid that worked.")

    show_labels = data is not None and st.toggle(
        "Class labels on tiles", value=True, key="aug_show_labels", persist_state="session"
    )
    tile_labels = [data.class_names[data.labels[i]] for i in grid.indices] if show_labels else None
    loop_model = model_loop.model_loop_controls()
    augmented = render.upscale_tiles(grid.tiles, GRID_TILE_PX)
    if loop_model is not None:
        report, badges = model_loop.tile_predictions(loop_model, images[list(grid.indices)], grid.tiles)
        augmented = render.label_tiles(augmented, badges, flagged=list(report.flipped))
        st.markdown(model_loop.summary(report))
    elif tile_labels:
        augmented = render.label_tiles(augmented, tile_labels)
    left, right = st.columns(2)
    if grid.mode == "many":
        originals = render.upscale_tiles(images[list(grid.indices)], GRID_TILE_PX)
        if tile_labels:
            originals = render.label_tiles(originals, tile_labels)
        left.image(
            render.fast_png(tile_grid(originals, grid.rows, grid.cols)),
            caption="Original",
            width="stretch",
            output_format="PNG",
        )
    else:
        left.image(
            render.fast_png(upscale_nearest(images[grid.indices[0]], 256)),
            caption="Original",
            width="stretch",
            output_format="PNG",
        )
    right.image(
        render.fast_png(tile_grid(augmented, grid.rows, grid.cols)),
        caption=f"Augmented (seed {grid.seed})",
        width="stretch",
        output_format="PNG",
    )
    st.caption(f"{grid.rows}x{grid.cols} grid augmented and drawn in {(time.perf_counter() - started) * 1000:.0f} ms.")

    with st.expander("Parameters applied to each tile"):
        tile = st.number_input("Tile (row-major)", 0, len(grid.applied) - 1, 0, key="aug_tile", persist_state="session")
        st.json(list(grid.applied[int(tile)]))

    st.subheader("Export")
    try:
        a, b, c = st.columns(3)
        a.download_button("JSON", pipeline_to_json(pipeline), "pipeline.json", "application/json", key="aug_dl_json")
        b.download_button("YAML", pipeline_to_yaml(pipeline), "pipeline.yaml", "application/yaml", key="aug_dl_yaml")
        c.download_button("Python", pipeline_to_python(pipeline), "pipeline.py", "text/x-python", key="aug_dl_py")
        with st.expander("Python snippet"):
            st.code(pipeline_to_python(pipeline), language="python")
    except CamlibError as error:
        st.caption(f"Export is disabled until the pipeline is valid: {error}")
