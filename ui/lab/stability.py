"""The Augmentation Lab's "Does the explanation survive this pipeline?" panel.

For the chosen CIFAR-10 model: one image's views with their CAM and the original CAM carried through each view's
transform (``camlib.stability.stability_views``); a summary over K images with the per-transform table and a bar
chart (``augmentation_stability``); a flip curve for one numeric parameter (``flip_curve``). Each is computed only on
its button, with a progress bar, and kept in a bounded ``st.cache_data`` store (computed outside it, so the progress
bar is never replayed); the last result stays on the page, and an error (``st.error``) keeps the last good one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

from camlib.augment import TRANSFORMS, Pipeline, pick_images, pipeline_to_query
from camlib.cifar import CifarData
from camlib.drawing import fast_png
from camlib.errors import CamlibError
from camlib.layers import default_layer
from camlib.models import LoadedModel
from camlib.overlay import overlay_heatmap, upscale_nearest
from camlib.stability import (
    FlipCurve,
    StabilityReport,
    Sweep,
    ViewMaps,
    augmentation_stability,
    flip_curve,
    reporting_progress,
    stability_views,
)
from ui import jobs, keys, models, stores, widgets
from ui.text import md

METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")  # one forward + one backward each
VIEW_PX = 64  # each view, CAM and carried CAM drawn at least this large
PER_ROW = 8
NUMERIC = ("float", "int", "range", "int_range", "int_pair")


@dataclass(frozen=True)
class Settings:
    """What every computation of the panel depends on (also its cache key, with the images' key)."""

    model_key: str
    device: str
    layer: str
    method: str
    n_views: int
    pipeline: str  # pipeline_to_query
    seed: int


# --- bounded stores of finished results (filled from outside, see ui.stores.handed) --------------------------------


@st.cache_data(max_entries=8, ttl=stores.CACHE_TTL, show_spinner=False)
def _stored_views(settings: Settings, image_key: str) -> ViewMaps:
    return stores.handed()


@st.cache_data(max_entries=8, ttl=stores.CACHE_TTL, show_spinner=False)
def _stored_report(settings: Settings, images_key: str) -> StabilityReport:
    return stores.handed()


@st.cache_data(max_entries=8, ttl=stores.CACHE_TTL, show_spinner=False)
def _stored_curve(settings: Settings, images_key: str, sweep: Sweep) -> FlipCurve:
    return stores.handed()


def _computed(slot: str, label: str, store: Callable, compute: Callable[[], Any], *key: Any) -> None:
    """The result for ``key`` from ``store``, else computed with a progress bar and stored; kept in ``slot``. A camlib
    error is shown and the slot keeps the last good result."""
    result = stores.probe(store, *key)
    if result is None:
        bar = st.progress(0.0, text=md("{label}: starting...", label=label))

        def report(done: int, total: int) -> None:
            fraction = done / total
            bar.progress(fraction, text=md("{label}: batch {done} of {total}", label=label, done=done, total=total))

        try:
            with reporting_progress(report):
                result = compute()
        except CamlibError as error:
            st.error(md("{label} failed: {error}", label=label, error=error))
            return
        finally:
            bar.empty()
        stores.store(store, result, *key)
    st.session_state[slot] = (key, result)


def _on_button(names: tuple[str, str, str, str], store: Callable, compute: Callable[[], Any], *key: Any) -> Any:
    """A button (``names``: its text, its key, the result's session slot, the progress label) that computes the
    result for ``key`` (``_computed``); the slot's result, as ``_shown``."""
    text, button_key, slot, label = names
    if st.button(text, key=button_key):
        _computed(slot, label, store, compute, *key)
    return _shown(slot, *key)


def _shown(slot: str, *key: Any) -> Any:
    """The kept result of ``slot`` (with a note when it was computed for other settings), or None."""
    kept = st.session_state.get(slot)
    if kept is None:
        return None
    if kept[0] != key:
        st.caption("Computed for earlier settings; press the button to update it.")
    return kept[1]


# --- drawing ---------------------------------------------------------------------------------------------------------


def _strip(views: ViewMaps, original: np.ndarray, class_names: tuple[str, ...]) -> None:
    scores = views.scores
    st.image(
        fast_png(upscale_nearest(np.concatenate([original, overlay_heatmap(original, views.original_cam)]), VIEW_PX)),
        caption="the source image and its CAM",
        output_format="PNG",
    )
    for start in range(0, len(views.images), PER_ROW):
        columns = st.columns(PER_ROW)
        for column, k in zip(columns, range(start, min(start + PER_ROW, len(views.images))), strict=False):
            image = views.images[k]
            tiles = [image, overlay_heatmap(image, views.cams[k]), overlay_heatmap(image, views.carried[k])]
            caption = md(
                "view {k}: r {r:.2f}, IoU {iou:.2f}, Δp {dp:+.2f}, {label}",
                k=k + 1,
                r=scores.correlation[0, k],
                iou=scores.iou[0, k],
                dp=scores.probability_change[0, k],
                label=class_names[scores.augmented_label[0, k]] + (" (flipped)" if scores.flipped[0, k] else ""),
            )
            column.image(
                fast_png(upscale_nearest(np.concatenate(tiles), VIEW_PX)), caption=caption, output_format="PNG"
            )
    st.caption("Each view: the augmented image, its CAM, and the original CAM carried through the view's transform.")


def summary_table(report: StabilityReport) -> pd.DataFrame:
    """One row for the whole pipeline, then one per enabled step."""
    rows = [("whole pipeline", report.scores)] + [(f"{s.index + 1}. {s.transform}", s.scores) for s in report.per_step]
    return pd.DataFrame(
        {
            "mean correlation": [s.mean_correlation for _, s in rows],
            "mean top-20% IoU": [s.mean_iou for _, s in rows],
            "label flips": [s.flip_rate for _, s in rows],
            "mean Δ probability": [s.mean_probability_change for _, s in rows],
        },
        index=pd.Index([name for name, _ in rows], name="pipeline"),
    )


def sweep_values(spec_low: float, spec_high: float, kind: str, points: int) -> tuple[Any, ...]:
    """``points`` values over a parameter's slider range: symmetric ranges ``(-v, v)`` for v from 0 where the range
    spans 0 (rotation limits, brightness), else fixed values ``v`` (pairs ``(v, v)``); integers rounded, unique."""
    integer = kind in ("int", "int_range", "int_pair")
    if kind in ("range", "int_range") and spec_low < 0 < spec_high:
        magnitudes = np.linspace(0, min(-spec_low, spec_high), points)
        if integer:
            magnitudes = np.unique(np.rint(magnitudes).astype(int))
        return tuple((-float(m), float(m)) if not integer else (-int(m), int(m)) for m in magnitudes)
    values = np.linspace(spec_low, spec_high, points)
    if integer:
        values = np.unique(np.rint(values).astype(int))
        return tuple((int(v), int(v)) if kind == "int_pair" else int(v) for v in values)
    return tuple(float(v) for v in values)


def first_passing(curve: FlipCurve, share: float) -> Any:
    """The first swept value whose flip rate reaches ``share``, or None."""
    passing = np.flatnonzero(curve.flip_rate >= share)
    return curve.sweep.values[int(passing[0])] if passing.size else None


def sweep_axis(value: Any) -> float:
    """A swept value as one number on the chart's x axis: a pair by its larger magnitude (``(-v, v)`` is ``v``)."""
    return float(max(value, key=abs)) if isinstance(value, tuple) else float(value)


def curve_chart(curve: FlipCurve, share: float) -> alt.LayerChart:
    """Label flips, mean correlation and mean IoU against the swept value; a dashed rule at ``share`` and, where the
    flips pass it, a vertical rule at that value."""
    x = [sweep_axis(v) for v in curve.sweep.values]
    long = pd.DataFrame(
        [
            {"value": xv, "measure": measure, "y": float(y)}
            for measure, ys in (
                ("label flips", curve.flip_rate),
                ("mean correlation", curve.mean_correlation),
                ("mean IoU", curve.mean_iou),
            )
            for xv, y in zip(x, ys, strict=True)
        ]
    )
    title = f"{curve.transform}.{curve.sweep.param}"
    lines = (
        alt.Chart(long)
        .mark_line(point=True)
        .encode(x=alt.X("value:Q", title=title), y=alt.Y("y:Q", title=None), color="measure:N")
    )
    layers = [lines, alt.Chart(pd.DataFrame({"y": [share]})).mark_rule(strokeDash=[4, 4]).encode(y="y:Q")]
    passing = first_passing(curve, share)
    if passing is not None:
        layers.append(
            alt.Chart(pd.DataFrame({"value": [sweep_axis(passing)]})).mark_rule(color="red").encode(x="value:Q")
        )
    return alt.layer(*layers)


# --- the model runs (each a heavy job of ui.jobs) ---------------------------------------------------------------------


def _method_args(loaded: LoadedModel, settings: Settings) -> dict[str, Any]:
    return {"preprocessing": loaded.spec.preprocessing, "method": settings.method, "n_views": settings.n_views}


def compute_views(loaded: LoadedModel, image: np.ndarray, pipeline: Pipeline, settings: Settings) -> ViewMaps:
    """``camlib.stability.stability_views`` of one uint8 ``(32, 32, 3)`` image under ``pipeline``.

    Raises:
        CamlibError: from ``camlib.stability``.
    """
    with jobs.model_job(heavy=True):
        return stability_views(loaded.model, image, pipeline, settings.layer, **_method_args(loaded, settings))


def compute_summary(loaded: LoadedModel, images: np.ndarray, pipeline: Pipeline, settings: Settings) -> StabilityReport:
    """``camlib.stability.augmentation_stability`` of uint8 ``(K, 32, 32, 3)`` images under ``pipeline``.

    Raises:
        CamlibError: from ``camlib.stability``.
    """
    with jobs.model_job(heavy=True):
        return augmentation_stability(loaded.model, images, pipeline, settings.layer, **_method_args(loaded, settings))


def compute_curve(
    loaded: LoadedModel, images: np.ndarray, pipeline: Pipeline, settings: Settings, sweep: Sweep
) -> FlipCurve:
    """``camlib.stability.flip_curve`` of uint8 ``(K, 32, 32, 3)`` images along ``sweep`` of one pipeline parameter.

    Raises:
        CamlibError: from ``camlib.stability``.
    """
    with jobs.model_job(heavy=True):
        args = _method_args(loaded, settings)
        return flip_curve(loaded.model, images, pipeline, settings.layer, sweep=sweep, **args)


# --- the panel -------------------------------------------------------------------------------------------------------


def _settings(pipeline: Pipeline, device: str) -> tuple[Settings, Any] | None:
    top = st.columns(4)
    with top[0]:
        model_key = widgets.cifar_model_select("CIFAR-10 model", keys.AUG_STAB_MODEL)
    try:
        loaded = models.get_model(model_key, device)
        layers = models.get_layers(model_key, device)
        suggested = default_layer(layers, loaded.spec.default_layers).name
    except CamlibError as error:
        st.error(md("The stability panel is off: {error}", error=error))
        return None
    try:
        query = pipeline_to_query(pipeline)
    except CamlibError:  # the grid above already says what is wrong
        st.caption("The stability panel returns once the pipeline works again.")
        return None
    names = [layer.name for layer in layers]
    layer = top[1].selectbox("Layer", names, index=names.index(suggested), key=keys.AUG_STAB_LAYER)
    method = top[2].selectbox("Method", METHODS, key=keys.AUG_STAB_METHOD)
    n_views = int(top[3].slider("Views per image", 2, 16, 8, key=keys.AUG_STAB_VIEWS))
    return Settings(model_key, device, layer, method, n_views, query, int(pipeline.seed)), loaded


def stability_panel(data: CifarData | None, pool: np.ndarray, pipeline: Pipeline, device: str) -> None:
    """Draw the panel for the Lab's pipeline, over the CIFAR-10 images of ``pool`` (the class filter's)."""
    st.subheader("Does the explanation survive this pipeline?")
    if data is None or not len(pool):
        st.info("The stability panel needs CIFAR-10 images (choose CIFAR-10 above, and at least one class).")
        return
    chosen = _settings(pipeline, device)
    if chosen is None:
        return
    settings, loaded = chosen
    count = int(st.session_state.get(keys.AUG_STAB_K, 64))
    position = int(st.session_state.get(keys.AUG_STAB_IMAGE, 0))
    try:
        images = data.images[pick_images(pool, min(count, len(pool)), settings.seed)]
        image = data.images[int(pool[min(position, len(pool) - 1)])]
        images_key, key = stores.image_key(images), (settings, stores.image_key(image))
    except CamlibError as error:
        st.error(md("The stability panel is off: {error}", error=error))
        return
    one, summary, curve = st.tabs(["One image", "Summary over K images", "Flip curves"])
    with one:
        st.number_input("Image (of the chosen classes)", 0, len(pool) - 1, 0, key=keys.AUG_STAB_IMAGE)
        views = _on_button(
            ("Compute the views' CAMs", keys.AUG_STAB_RUN_ONE, keys.AUG_STAB_LAST_ONE, "Views"),
            _stored_views,
            lambda: compute_views(loaded, image, pipeline, settings),
            *key,
        )
        if views is not None:
            _strip(views, image, loaded.class_names)
    with summary:
        st.number_input("K images (drawn from the chosen classes with the seed)", 1, 256, 64, key=keys.AUG_STAB_K)
        report = _on_button(
            ("Compute the summary", keys.AUG_STAB_RUN_SUMMARY, keys.AUG_STAB_LAST_SUMMARY, "Summary"),
            _stored_report,
            lambda: compute_summary(loaded, images, pipeline, settings),
            settings,
            images_key,
        )
        if report is not None:
            table = summary_table(report)
            st.dataframe(table, width="stretch")
            st.bar_chart(table["mean correlation"], horizontal=True)
            st.caption("Correlation and IoU compare each view's CAM with the original CAM carried through the view.")
    with curve:
        _curve_tab(settings, loaded, pipeline, images=images, images_key=images_key)


def _curve_tab(
    settings: Settings, loaded: LoadedModel, pipeline: Pipeline, *, images: np.ndarray, images_key: str
) -> None:
    options = [
        (i, p.name)
        for i, step in enumerate(pipeline.steps)
        if step.enabled
        for p in TRANSFORMS[step.transform].params
        if p.kind in NUMERIC
    ]
    if not options:
        st.info("No enabled step has a numeric parameter to sweep.")
        return
    left, middle, right = st.columns(3)
    choice = left.selectbox(
        "Parameter",
        options,
        format_func=lambda o: f"{o[0] + 1}. {pipeline.steps[o[0]].transform}.{o[1]}",
        key=keys.AUG_STAB_PARAM,
    )
    points = int(middle.slider("Points", 8, 16, 8, key=keys.AUG_STAB_POINTS))
    share = float(right.slider("Mark where flips pass", 0.05, 0.9, 0.1, 0.05, key=keys.AUG_STAB_SHARE))
    spec = TRANSFORMS[pipeline.steps[choice[0]].transform].param(choice[1])
    sweep = Sweep(choice[0], choice[1], sweep_values(spec.low, spec.high, spec.kind, points))
    result = _on_button(
        ("Compute the flip curve", keys.AUG_STAB_RUN_CURVE, keys.AUG_STAB_LAST_CURVE, "Flip curve"),
        _stored_curve,
        lambda: compute_curve(loaded, images, pipeline, settings, sweep),
        settings,
        images_key,
        sweep,
    )
    if result is None:
        return
    labels = [str(v) for v in result.sweep.values]
    frame = pd.DataFrame(
        {"label flips": result.flip_rate, "mean correlation": result.mean_correlation, "mean IoU": result.mean_iou},
        index=pd.Index(range(len(labels)), name="point"),
    )
    passing = first_passing(result, share)
    name = f"{result.transform}.{result.sweep.param}"
    st.altair_chart(curve_chart(result, share), width="stretch")
    if passing is None:
        st.caption(md("Flips stay below {share:.0%} over the whole range of {name}.", share=share, name=name))
    else:
        st.markdown(md("**Flips pass {share:.0%} at {name} = {value}.**", share=share, name=name, value=passing))
    st.dataframe(frame.set_axis(labels, axis=0), width="stretch")
