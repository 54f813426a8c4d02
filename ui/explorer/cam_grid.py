"""The CAM Explorer's "Compare methods" view: a grid with one row per method and one column per target layer, every
cell an overlay, all from one ``cams.compute_grid`` call (one forward and one gradient for every gradient method,
``camlib.cam.compute_cam_grid``).

Each method's cost comes from its registry entry, shown in the picker before a slow one is added; costly methods
(``cam_view.costly``: perturbation, second-order and per-layer-pass methods) wait for a button when their estimate
exceeds ``cam_view.SLOW_S`` (``cam_view.ready_to_start``), whether the pickers or a link chose them; perturbation
methods show a progress bar that a rerun cancels. At most ``MAX_METHODS`` rows and ``widgets.MAX_LAYERS`` columns.
A method that cannot explain the chosen layers (e.g. CAM on a layer that does not feed the classifier) gets a warning
in its row and the others are still drawn.
"""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from camlib.cam import METHODS, shared_scale_maps
from camlib.errors import CamlibError
from camlib.layers import LayerInfo
from camlib.overlay import upscale_nearest
from ui import keys, overlays, widgets
from ui.explorer import cam_view, cams, faithfulness_view
from ui.last_good import keep_last_good, show_last_good
from ui.text import md

DEFAULT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")  # one pass between them
MAX_METHODS = 8  # rows of the grid at once, in the picker and in a link (times widgets.MAX_LAYERS: 64 maps at most)


def option_label(method: str, refused: dict[str, str] | None = None, *, cost: bool = True) -> str:
    """A method as the pickers list it: its label; "not for these layers" when ``refused`` (``models.method_refusals``)
    names it (a select box cannot grey out an option: the label says it, and the page shows the reason); with
    ``cost``, its cost when it runs extra forward passes (the one-method view shows the cost under the picker)."""
    spec = METHODS[method]
    if refused and method in refused:
        return f"{spec.label} (not for these layers)"
    return spec.label if spec.family != "perturbation" or not cost else f"{spec.label} (slow: {spec.cost})"


def method_picker(refused: dict[str, str] | None = None) -> list[str]:
    """The rows of the grid: a multiselect of registry methods (at most ``MAX_METHODS``), each labelled with its cost
    when it is slow and marked when it cannot explain the chosen layers (the reason is shown when it is picked, and
    it is left out of the methods returned)."""
    chosen = st.multiselect(
        "Methods (rows)",
        list(METHODS),
        default=[m for m in DEFAULT_METHODS if m in METHODS],
        format_func=lambda m: option_label(m, refused),
        key=keys.CAM_GRID_METHODS,
        persist_state="session",
        max_selections=MAX_METHODS,
        help="Gradient and activation methods share one forward pass (and one gradient); each slow method runs one "
        "extra forward pass per channel of each layer.",
    )
    for method in chosen:
        if refused and method in refused:
            st.warning(md("{label} cannot explain {reason}", label=METHODS[method].label, reason=refused[method]))
    chosen = [m for m in chosen if not refused or m not in refused]  # the grid computes the others in one pass
    costs = sorted({METHODS[m].cost for m in chosen})
    if costs:
        st.caption(md("Cost: {costs}.", costs="; ".join(costs)))
    return chosen


@dataclass(frozen=True)
class Context:
    """What the grid is drawn with besides the maps: the model's class names, the image, the layers' metadata."""

    class_names: tuple[str, ...]
    image: widgets.ChosenImage
    layers: dict[str, LayerInfo]


def show(
    request: cams.CamRequest,
    methods: list[str],
    class_idx: int,
    context: Context,
    *,
    failed: Exception | None = None,
) -> None:
    """Compute (after the slow-method check) and draw the grid for ``request``;
    a camlib error (this one's, or ``failed``: the page's prediction of this image) is shown with ``st.error`` and
    the last grid that worked stays."""
    if not methods:
        st.info("Pick at least one method.")
        return
    if failed is not None:
        show_last_good(
            keys.CAM_LAST_GRID, failed, draw, failure="Cannot compute the grid: {error}", stale="Showing the last grid."
        )
        return
    chosen = [context.layers[n] for n in request.layers]

    def compute() -> tuple[cams.GridMaps, Context]:
        with cam_view.progress(methods) as report:
            grid = cams.compute_grid(request, methods=tuple(methods), class_idx=class_idx, progress=report)
        return grid, context

    current = cam_view.ready_to_start(request, methods, class_idx, chosen, button_key=keys.CAM_GRID_START)
    if current:
        kept, error = keep_last_good(
            keys.CAM_LAST_GRID, compute, failure="Cannot compute the grid: {error}", stale="Showing the last grid."
        )
        current = error is None
    else:
        kept = st.session_state.get(keys.CAM_LAST_GRID)
        if kept is not None:
            st.caption("Showing the last grid until you start this one.")
    if kept is None:
        return
    draw(*kept)
    if current and kept[0].outcomes:  # this request's grid: its cells can be scored
        with st.expander("Which map to trust? Faithfulness of every cell, curves and sanity checks"):
            faithfulness_view.faithfulness_section(
                request.model_key,
                request.device,
                request.image,
                layers=request.layers,
                methods=tuple(kept[0].outcomes),
                class_idx=class_idx,
            )


def draw(grid: cams.GridMaps, context: Context) -> None:
    """The overlay controls, then one row per method (label, cost) and one column per layer; a camlib error while
    drawing is shown with ``st.error`` (the grid stays, the next overlay change redraws)."""
    try:
        _draw(grid, context)
    except CamlibError as error:
        st.error(md("Cannot draw the grid: {error}", error=error))


def _draw(grid: cams.GridMaps, context: Context) -> None:
    with st.expander("Overlay", expanded=True):
        look = widgets.overlay_controls(keys.CAM, columns=4)
    style = {"alpha": look.alpha, "colormap": look.colormap, "threshold": look.threshold}
    for method, error in grid.errors.items():
        st.warning(md("{label} cannot explain these layers: {error}", label=METHODS[method].label, error=error))
    if not grid.outcomes:
        return
    first = next(iter(grid.outcomes.values())).result
    explained = first.class_idx[0]
    st.markdown(
        md(
            "**Explaining class {k}: {name}** ({p:.1%}): {n} methods x {m} layers, "
            + ("from the cache." if grid.from_cache else "computed together in {ms:.0f} ms."),
            k=explained,
            name=context.class_names[explained],
            p=first.probabilities[0, explained],
            n=len(grid.outcomes),
            m=len(first.layers),
            ms=max(view.result.elapsed_s for view in grid.outcomes.values()) * 1000,
        )
    )
    widths = [1] + [2] * len(first.layers)
    for column, name in zip(st.columns(widths)[1:], first.layers):
        info = context.layers.get(name)
        column.markdown(md("**{name}** {shape}", name=name, shape=f"[{info.shape_label}]" if info else ""))
    for method, view in grid.outcomes.items():
        result = view.result
        maps = shared_scale_maps(result) if look.shared_scale else result.maps
        model_view = upscale_nearest(view.model_view, cam_view.TILE_PX)
        row = st.columns(widths)
        row[0].markdown(md("**{label}**", label=METHODS[method].label))
        row[0].caption(md("{cost}", cost=METHODS[method].cost))
        for column, name in zip(row[1:], result.layers):
            column.image(
                overlays.overlay_image(model_view, maps[name][0], **style), width="stretch", output_format="PNG"
            )
            if result.degenerate[name][0]:
                column.caption("No positive evidence: blank.")
