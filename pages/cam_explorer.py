"""CAM Explorer: an image, a model, layers and a class in; Grad-CAM-family heatmaps out."""

from __future__ import annotations

from dataclasses import asdict

import numpy as np
import streamlit as st

import camlib
from camlib.cam import METHODS, layer_magnitudes, shared_scale_maps
from camlib.errors import CamlibError
from camlib.layers import default_layer
from camlib.overlay import map_to_original, overlay_heatmap, upscale_nearest
from ui import app_inputs, cache, figures, keys, widgets
from ui.last_good import keep_last_good
from ui.text import md

st.title("CAM Explorer")
st.caption("What does the classifier look at? Pick an image, a model, one or more layers and a class.")

root, device = app_inputs.data_root_input(), app_inputs.device_input()  # app-wide: the sidebar of every page
controls, results = st.columns([1, 3], gap="large")
with controls:
    model_key = widgets.model_input(keys.CAM, device)  # the last model that worked, after an error
    try:
        loaded = cache.resolve_model(model_key, device)
        candidates = cache.get_layers(model_key, device)
    except CamlibError as error:
        st.error(md("{error}", error=error))
        st.stop()
    image = widgets.image_input(keys.CAM, cifar=widgets.cifar_test_images(root, loaded.spec.dataset))
    method = st.selectbox(
        "Method",
        list(METHODS),
        format_func=lambda m: METHODS[m].label,
        key=keys.CAM_METHOD,
        persist_state="session",
        help="Score-CAM runs one forward pass per channel: slow on a CPU.",
    )
    st.caption(md("{paper}. Cost: {cost}.", paper=METHODS[method].paper, cost=METHODS[method].cost))

    by_name = {c.name: c for c in candidates}
    layers = widgets.layer_picker(
        candidates, default=default_layer(candidates, loaded.spec.default_layers).name, key=keys.cam_layers(model_key)
    )

    try:
        probabilities, failed = cache.predict(model_key, device, image.pixels), None
    except CamlibError as error:  # shown below, where the CAM would be; the last good result stays
        probabilities, failed = np.zeros(len(loaded.class_names), np.float32), error
    top1 = int(np.argmax(probabilities))
    class_mode = st.radio(
        "Class to explain",
        ["Top-1 prediction", "Choose a class"],
        horizontal=True,
        key=keys.CAM_CLASS_MODE,
        persist_state="session",
    )
    class_idx = top1
    if class_mode == "Choose a class":
        class_idx = st.selectbox(
            "Class (type to search)",
            range(len(loaded.class_names)),
            index=top1,
            format_func=lambda k: f"{k}: {loaded.class_names[k]}",
            key=keys.cam_class(model_key),  # a new model starts at its top-1 class
            persist_state="session",
        )

    st.subheader("Overlay")
    look = widgets.overlay_controls(keys.CAM)

with results:
    if failed is None:
        st.plotly_chart(figures.top_k_figure(probabilities, loaded.class_names, highlight=class_idx), key=keys.CAM_TOP5)
    if not layers:
        st.info("Pick at least one target layer.")
        st.stop()

    def explain() -> tuple[cache.CamView, tuple[str, ...], widgets.ChosenImage]:
        if failed is not None:
            raise failed  # the prediction failed: shown here, where the CAM would be
        view = cache.compute_view(
            model_key, device, image.pixels, tuple(layers), method=method, class_idx=int(class_idx)
        )
        return view, loaded.class_names, image

    # The last result that worked keeps its own classes and image (the map is drawn on the image it explains).
    kept, failed = keep_last_good(
        keys.CAM_LAST_VIEW,
        explain,
        failure="Cannot compute the CAM: {error}",
        stale="Showing the last result that worked.",
    )
    if kept is None:
        st.stop()
    view, class_names, image = kept
    result, prepared = view.result, view.prepared
    shown_layers = list(result.layers)
    maps = shared_scale_maps(result) if look.shared_scale else result.maps
    explained = result.class_idx[0]
    timing = "from the cache (first computed in {ms:.0f} ms)" if view.from_cache else "in {ms:.0f} ms"
    st.markdown(
        md(
            "**Explaining class {k}: {name}** ({p:.1%}) with {method} " + timing + " on {device}.",
            k=explained,
            name=class_names[explained],
            p=result.probabilities[0, explained],
            method=METHODS[result.method].label,
            ms=result.elapsed_s * 1000,
            device=loaded.device,
        )
    )
    if image.true_label is not None and failed is None:
        predicted = loaded.class_names[top1]
        verdict = "correct" if predicted == image.true_label else "wrong"
        st.markdown(
            md(
                "True label: **{truth}** · predicted: **{predicted}** ({p:.1%}, {verdict})",
                truth=image.true_label,
                predicted=predicted,
                p=probabilities[top1],
                verdict=verdict,
            )
        )

    model_view = upscale_nearest(prepared.model_view, 224)
    overlays = {}
    for column, name in zip(st.columns(min(max(len(shown_layers), 3), 4)) * 4, shown_layers):
        overlays[name] = overlay_heatmap(
            model_view, maps[name][0], alpha=look.alpha, colormap=look.colormap, threshold=look.threshold
        )
        with column:
            st.image(
                overlays[name],
                caption=md("{name} [{shape}]", name=name, shape=by_name[name].shape_label if name in by_name else ""),
                width="stretch",
            )
            if result.degenerate[name][0]:
                st.warning(md("No positive evidence for class {k} at this layer: the map is blank.", k=explained))

    if len(shown_layers) > 1:
        magnitudes = {n: float(v[0]) for n, v in layer_magnitudes(result).items()}
        st.plotly_chart(figures.magnitude_figure(magnitudes), key=keys.CAM_MAGNITUDES)

    detail = st.selectbox(
        "Layer for the detailed view and export", shown_layers, key=keys.CAM_DETAIL_LAYER, persist_state="session"
    )
    original_map, inside = map_to_original(maps[detail][0], image.pixels.shape[:2], prepared.crop_box)
    on_original = overlay_heatmap(
        np.ascontiguousarray(image.pixels),
        original_map,
        alpha=look.alpha,
        colormap=look.colormap,
        threshold=look.threshold,
        mask=inside,
    )
    left, right = st.columns(2)
    left.image(on_original, caption="On the original image (dimmed: outside the model's centre crop)", width="stretch")
    right.plotly_chart(figures.heatmap_figure(maps[detail][0], colormap=look.colormap), key=keys.CAM_HEATMAP)

    widgets.cam_downloads(
        keys.CAM,
        overlay=overlays[detail],
        raw=result.raw[detail][0],
        layer=detail,
        settings={
            "model": model_key,
            "model_label": loaded.spec.label,
            "method": result.method,
            "layers": shown_layers,
            "class_idx": explained,
            "class_name": class_names[explained],
            "image": image.name,
            **asdict(look),
            "preprocessing": asdict(loaded.spec.preprocessing),
            "camlib": camlib.__version__,
        },
    )
