"""CAM Explorer: an image, a model, layers and a class in; Grad-CAM-family heatmaps out."""

from __future__ import annotations

import numpy as np
import streamlit as st

from camlib.cam import METHODS
from camlib.errors import CamlibError
from camlib.layers import default_layer
from ui import app_inputs, figures, keys, models, widgets
from ui.explorer import cam_grid, cam_url, cam_view, cams, faithfulness_view, pixel_view
from ui.last_good import keep_last_good
from ui.text import md

st.title("CAM Explorer")
st.caption("What does the classifier look at? Pick an image, a model, one or more layers and a class.")

root, device = app_inputs.data_root_input(), app_inputs.device_input()  # app-wide: the sidebar of every page
cam_url.apply_link(device, root)  # a shared link's model, view, methods, layers, class and image, before the widgets
controls, results = st.columns([1, 3], gap="large")
with controls:
    model_key = widgets.model_input(keys.CAM, device)  # the last model that worked, after an error
    try:
        loaded = models.resolve_model(model_key, device)
        candidates = models.get_layers(model_key, device)
    except CamlibError as error:
        st.error(md("{error}", error=error))
        st.stop()
    image = widgets.image_input(keys.CAM, cifar=widgets.cifar_test_images(root, loaded.spec.dataset))
    by_name = {c.name: c for c in candidates}
    layers = widgets.layer_picker(
        candidates, default=default_layer(candidates, loaded.spec.default_layers).name, key=keys.cam_layers(model_key)
    )
    try:  # methods that cannot explain these layers: marked in the pickers, with the reason
        refused = models.method_refusals(model_key, device, tuple(layers))
    except CamlibError as error:  # none marked; the computation reports what is wrong with the method
        refused = {}
        st.warning(md("Cannot check which methods apply to these layers: {error}", error=error))
    views = ["One method", "Compare methods", "Pixel attribution"]
    mode = st.radio("View", views, horizontal=True, key=keys.CAM_VIEW, persist_state="session")
    compare = mode == "Compare methods"
    if compare:
        methods = cam_grid.method_picker(refused)
    elif mode == "Pixel attribution":
        method = pixel_view.method_picker()
    else:
        method = st.selectbox(
            "Method",
            list(METHODS),
            format_func=lambda m: cam_grid.option_label(m, refused, cost=False),
            key=keys.CAM_METHOD,
            persist_state="session",
            help="Score-CAM runs one forward pass per channel: slow on a CPU.",
        )
        st.caption(md("{paper}. Cost: {cost}.", paper=METHODS[method].paper, cost=METHODS[method].cost))
        if method in refused:
            st.warning(md("{label} cannot explain {reason}", label=METHODS[method].label, reason=refused[method]))
        cam_options = cam_view.method_options(method)

    try:
        probabilities, failed = models.predict(model_key, device, image.pixels), None
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
    chosen = int(class_idx) if class_mode == "Choose a class" else None
    cam_url.write_link(model_key, layers, class_idx=chosen, image_name=image.name, uploaded=image.uploaded)

with results:
    if failed is None:
        st.plotly_chart(figures.top_k_figure(probabilities, loaded.class_names, highlight=class_idx), key=keys.CAM_TOP5)
    if not layers:
        st.info("Pick at least one target layer.")
        st.stop()
    request, class_idx = cams.CamRequest(model_key, device, image.pixels, tuple(layers)), int(class_idx)
    if mode == "Pixel attribution":
        pixel_view.show(request, method, class_idx, loaded.class_names, failed=failed)
        st.stop()
    if compare:
        context = cam_grid.Context(loaded.class_names, image, by_name)
        cam_grid.show(request, methods, class_idx, context, failed=failed)
        st.stop()

    def explain() -> tuple[cams.CamOutcome, tuple[str, ...], widgets.ChosenImage]:
        if failed is not None:
            raise failed  # the prediction failed: shown here, where the CAM would be
        with cam_view.progress([method]) as report:  # a rerun or a closed tab stops a long method at its next batch
            view = cams.compute_cam(
                model_key,
                device,
                image.pixels,
                request.layers,
                method=method,
                class_idx=class_idx,
                options=cam_options,
                progress=report,
            )
        return view, loaded.class_names, image

    chosen = [by_name[n] for n in layers]
    start = failed is not None or cam_view.ready_to_start(request, [method], class_idx, chosen, options=cam_options)
    if start:  # the last result that worked keeps its own classes and image (the map is drawn on its image)
        kept, failed = keep_last_good(
            keys.CAM_LAST_VIEW,
            explain,
            failure="Cannot compute the CAM: {error}",
            stale="Showing the last result that worked.",
        )
    else:
        kept = st.session_state.get(keys.CAM_LAST_VIEW)
        if kept is not None:
            st.caption("Showing the last result until you start this one.")
    if kept is None:
        st.stop()
    view, class_names, image = kept
    shown = cam_view.Shown(view, class_names, image, loaded, model_key, by_name)
    cam_view.headline(shown, prediction=None if failed is not None else (top1, float(probabilities[top1])))
    cam_view.draw(shown)
    # the maps shown are this request's, computed as the faithfulness view computes them (no method options)
    if start and failed is None and cam_options == cams.DEFAULT_OPTIONS:
        with st.expander("Which map to trust? Faithfulness and sanity checks"):
            faithfulness_view.faithfulness_section(
                model_key, device, image.pixels, layers=request.layers, methods=(method,), class_idx=class_idx
            )
