"""The CAM Explorer's "Pixel attribution" view: Guided Backpropagation, Guided Grad-CAM and FullGrad
(``camlib.pixel_attribution.PIXEL_METHODS``), which explain at input resolution rather than per target layer.

Guided methods show signed input attributions as images (pytorch-grad-cam's ``deprocess_image``: grey is 0); Guided
Grad-CAM shows one per chosen layer (guided backprop times that layer's Grad-CAM); FullGrad is a [0, 1] map overlaid
like a CAM. A method that does not apply to the model (guided backprop on a model without ReLUs) is refused with its
reason, and the last result that worked stays.
"""

from __future__ import annotations

import streamlit as st

from camlib.errors import CamlibError
from camlib.overlay import upscale_nearest
from camlib.pixel_attribution import PIXEL_METHODS
from ui import keys, overlays, widgets
from ui.explorer import cam_view, cams
from ui.last_good import keep_last_good, show_last_good
from ui.text import md


def method_picker() -> str:
    """A selectbox of the pixel-attribution methods, with the chosen one's paper and cost."""
    method = st.selectbox(
        "Pixel-attribution method",
        list(PIXEL_METHODS),
        format_func=lambda m: PIXEL_METHODS[m].label,
        key=keys.CAM_PIXEL_METHOD,
        persist_state="session",
    )
    spec = PIXEL_METHODS[method]
    uses = "Uses the target layers." if spec.needs_layers else "Ignores the target layers."
    st.caption(md("{paper}. Cost: {cost}. {uses}", paper=spec.paper, cost=spec.cost, uses=uses))
    return method


def show(
    request: cams.CamRequest,
    method: str,
    class_idx: int,
    class_names: tuple[str, ...],
    *,
    failed: Exception | None = None,
) -> None:
    """Compute (cached) and draw ``method`` for ``request``; an error (this
    one's, or ``failed``: the page's prediction of this image) is shown with ``st.error`` and the last result that
    worked stays."""
    if failed is not None:
        show_last_good(
            keys.CAM_LAST_PIXEL,
            failed,
            draw,
            failure="Cannot compute the attribution: {error}",
            stale="Showing the last attribution that worked.",
        )
        return
    layers = request.layers if PIXEL_METHODS[method].needs_layers else ()
    kept, _ = keep_last_good(
        keys.CAM_LAST_PIXEL,
        lambda: (
            cams.compute_pixel_maps(
                request.model_key, request.device, request.image, layers, method=method, class_idx=class_idx
            ),
            class_names,
        ),
        failure="Cannot compute the attribution: {error}",
        stale="Showing the last attribution that worked.",
    )
    if kept is not None:
        draw(*kept)


def draw(view: cams.PixelMaps, class_names: tuple[str, ...]) -> None:
    """The model's view of the image, then one attribution image (or FullGrad overlay) per layer; a camlib error
    while drawing is shown with ``st.error``."""
    try:
        _draw(view, class_names)
    except CamlibError as error:
        st.error(md("Cannot draw the attribution: {error}", error=error))


def _draw(view: cams.PixelMaps, class_names: tuple[str, ...]) -> None:
    spec = PIXEL_METHODS[view.method]
    st.markdown(
        md(
            "**Explaining class {k}: {name}** ({p:.1%}) with {label} in {ms:.0f} ms.",
            k=view.class_idx,
            name=class_names[view.class_idx],
            p=view.probability,
            label=spec.label,
            ms=view.elapsed_s * 1000,
        )
    )
    model_view = upscale_nearest(view.model_view, cam_view.TILE_PX)
    if spec.output == "map":
        with st.expander("Overlay", expanded=True):
            look = widgets.overlay_controls(keys.CAM, columns=4)
        style = {"alpha": look.alpha, "colormap": look.colormap, "threshold": look.threshold}
    columns = st.columns(len(view.shown) + 1)
    columns[0].image(model_view, caption="What the model sees", width="stretch")
    for column, (layer, shown) in zip(columns[1:], view.shown.items()):
        caption = md("{label} at {layer}", label=spec.label, layer=layer) if layer else spec.label
        if spec.output == "map":
            shown = overlays.overlay_image(model_view, upscale_nearest(shown, cam_view.TILE_PX), **style)
        column.image(shown, caption=caption, width="stretch", output_format="PNG")
    if spec.output == "attributions":
        st.caption("Signed attributions normalised per image: grey is 0, brighter or darker is stronger evidence.")
