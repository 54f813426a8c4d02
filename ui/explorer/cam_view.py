"""The CAM Explorer's result area: cost check and progress before a computation, then the maps.

- ``ready_to_start``: methods whose estimated cost (``camlib.cost``: perturbation methods' forwards per channel or
  sample, second-order methods' Hessian products and LeGrad's backwards per layer, timed on this model and device)
  exceeds ``SLOW_S`` wait for a button, with the estimate shown; the pickers and a link go through the same check.
- ``progress``: a progress bar for perturbation methods (a spinner otherwise). Its callback draws an element on each
  batch; Streamlit raises its rerun/stop request there, so a superseded run or a closed tab stops at the next batch.
- ``draw``: the overlay controls and everything they change (overlays, magnitudes, detailed view, downloads), from
  cached overlay JPEGs and a hover heatmap of at most ``HOVER_PX`` per side. It is an ``st.fragment``: an
  overlay-only change reruns ``draw`` alone, not the page. Its images are JPEGs (a PNG takes 3-15x the time to
  encode; the PNG download is encoded on click) sent inline as ``data:`` URLs, not as Streamlit media files: a full
  run that is superseded before it reaches the fragment collects the media files the fragment registered while the
  page still shows them, and under a storm of reruns (tests/test_browser_catalogue.py) Streamlit 1.67 left a broken
  image that way.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import cached_property, partial
from typing import TypeVar

import cv2
import numpy as np
import streamlit as st
from skimage.measure import block_reduce

import camlib
from camlib.cam import (
    AUG_SMOOTH_VIEWS,
    METHODS,
    RANDOM_CAM_SEED,
    ProgressCallback,
    layer_magnitudes,
    shared_scale_maps,
)
from camlib.cost import PER_LAYER_EIGEN, PER_LAYER_PASSES, CostEstimate, PassTimes, estimate_cost, time_passes
from camlib.drawing import fast_png
from camlib.errors import CamlibError
from camlib.layers import LayerInfo
from camlib.models import LoadedModel
from camlib.overlay import map_to_original, overlay_heatmap, signed_map, upscale_nearest
from ui import figures, jobs, keys, models, overlays, widgets
from ui.explorer import cams
from ui.server.run_log import timed_run
from ui.text import md

T = TypeVar("T")
SLOW_S = 3.0  # estimated seconds above which a computation waits for the user's go
HOVER_PX = 112  # the interactive heatmap's longer side, px: enough to read, light to send and hover
TILE_PX = 224  # the overlays' shorter side, px (the model's view, upscaled when smaller)
ORIGINAL_PX = 1024  # the "On the original image" overlay's longer side at most, px (a 25 MP upload is drawn smaller)


@dataclass(frozen=True)
class Shown:
    """What ``draw`` renders: a computed CAM and the context it was computed in."""

    view: cams.CamOutcome
    class_names: tuple[str, ...]
    image: widgets.ChosenImage
    loaded: LoadedModel
    model_key: str
    layers: dict[str, LayerInfo]
    _memo: dict = field(default_factory=dict, compare=False, repr=False)  # ``once``'s values

    def once(self, key: tuple, make: Callable[[], T]) -> T:
        """``make()`` the first time ``key`` is asked for, the same value after: what the overlay fragment derives
        from this result (maps on the shared scale, maps on the original image, the arrays' ``image_key`` digests)
        is made once per full run, not on every overlay change."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @cached_property
    def tile(self) -> np.ndarray:
        """The model's view, upscaled (nearest) to ``TILE_PX``: what the layers' overlays are drawn on."""
        return upscale_nearest(self.view.model_view, TILE_PX)

    def maps(self, shared_scale: bool) -> dict[str, np.ndarray]:
        """The maps shown: ``shared_scale_maps`` of the result (one scale across layers) or its own."""
        result = self.view.result
        return self.once(("maps", shared_scale), lambda: shared_scale_maps(result) if shared_scale else result.maps)

    def tile_key(self, shared_scale: bool, layer: str) -> str:
        """``overlays.overlay_image``'s key of ``layer``'s overlay on ``tile``."""
        return self.once(
            ("tile key", shared_scale, layer),
            lambda: overlays.overlay_key(self.tile, self.maps(shared_scale)[layer][0]),
        )

    @cached_property
    def refined_tile(self) -> tuple[np.ndarray, str]:
        """RefineCAM's fused map (``CamResult.refined``) upscaled to ``TILE_PX``, and its overlay's key on ``tile``."""
        refined = upscale_nearest(self.view.result.refined[0], TILE_PX)
        return refined, overlays.overlay_key(self.tile, refined)

    def on_original(self, shared_scale: bool, layer: str) -> tuple[np.ndarray, np.ndarray, str]:
        """``layer``'s map placed on ``original`` (``map_to_original``), its crop mask, and their overlay's key."""

        def make() -> tuple[np.ndarray, np.ndarray, str]:
            image, box = self.original
            cam, inside = map_to_original(self.maps(shared_scale)[layer][0], image.shape[:2], box)
            return cam, inside, overlays.overlay_key(image, cam, inside)

        return self.once(("original", shared_scale, layer), make)

    @cached_property
    def original(self) -> tuple[np.ndarray, tuple[float, float, float, float]]:
        """The image to draw the detailed overlay on, at most ``ORIGINAL_PX`` on its longer side (area-averaged down,
        never up), and the model's crop box in its pixels. Made once per full run: fragment reruns reuse it."""
        pixels, box = np.ascontiguousarray(self.image.pixels), self.view.crop_box
        height, width = pixels.shape[:2]
        scale = ORIGINAL_PX / max(height, width)
        if scale >= 1:
            return pixels, box
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        x, y = size[0] / width, size[1] / height
        shrunk = cv2.resize(pixels, size, interpolation=cv2.INTER_AREA)
        return shrunk, (box[0] * x, box[1] * y, box[2] * x, box[3] * y)


def _duration(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def method_options(method: str) -> cams.CamOptions:
    """pytorch-grad-cam's options for ``method`` in an expander: the counterfactual map (gradient methods), aug_smooth,
    eigen_smooth, and the seed and sample count of the methods that sample."""
    spec = METHODS[method]
    with st.expander("Method options"):
        counterfactual = spec.uses_gradients and st.toggle(
            "Counterfactual (what would make the model less sure)",
            key=keys.CAM_COUNTERFACTUAL,
            persist_state="session",
            help="Selvaraju et al. 2017: the gradients are negated, so the map shows the regions whose evidence "
            "speaks against the class.",
        )
        aug_smooth = st.toggle(
            "aug_smooth (mirror x 0.9/1/1.1, 6x the work)", key=keys.CAM_AUG_SMOOTH, persist_state="session"
        )
        eigen_smooth = st.toggle(
            "eigen_smooth (first principal component)", key=keys.CAM_EIGEN_SMOOTH, persist_state="session"
        )
        seed = RANDOM_CAM_SEED
        if spec.stochastic:
            seed = int(
                st.number_input("Seed", 0, 2**31 - 1, RANDOM_CAM_SEED, key=keys.CAM_SEED, persist_state="session")
            )
        samples = None
        if spec.samples > 1:
            samples = int(
                st.number_input("Samples", 1, 100, spec.samples, key=keys.CAM_SAMPLES, persist_state="session")
            )
    return cams.CamOptions(
        counterfactual=bool(counterfactual),
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        seed=seed,
        n_samples=samples,
    )


def costly(method: str) -> bool:
    """Whether ``method`` runs passes beyond the shared one, in a number that grows with the layers or channels
    or the layers' size (``camlib.cost``: perturbation methods, second-order gradient methods, ``PER_LAYER_PASSES``,
    ``PER_LAYER_EIGEN``): the methods ``ready_to_start`` estimates."""
    spec = METHODS[method]
    return spec.family == "perturbation" or spec.second_order or method in PER_LAYER_PASSES or method in PER_LAYER_EIGEN


@st.cache_resource(max_entries=8, show_spinner="Timing the model's backward passes once, to estimate this method...")
def pass_seconds(model_key: str, device: str) -> PassTimes:
    """The model's timed passes on ``device`` (``camlib.cost.time_passes`` at its input size), measured once per
    process: the basis of the estimate of the methods that run a backward, a Hessian product or an eigenproblem per
    layer."""
    loaded = models.resolve_model(model_key, device)
    with jobs.model_job(heavy=False):
        return time_passes(loaded.model, loaded.spec.preprocessing.crop)


def _passes_text(estimates: list[CostEstimate]) -> str:
    parts = [
        (sum(e.extra_forwards for e in estimates), "extra forward pass", "es"),
        (sum(e.extra_backwards for e in estimates), "extra forward and backward pass", "es"),
        (sum(e.hessian_products for e in estimates), "Hessian-vector product", "s (a second backward each)"),
        (sum(e.eigenproblems for e in estimates), "eigenproblem", "s (one per layer and image)"),
    ]
    return " and ".join(f"{n:,} {what}{plural if n != 1 else ''}" for n, what, plural in parts if n)


def ready_to_start(
    request: cams.CamRequest,
    methods: list[str],
    class_idx: int,
    layers: list[LayerInfo],
    *,
    options: cams.CamOptions = cams.DEFAULT_OPTIONS,
    button_key: str = keys.CAM_START,
) -> bool:
    """Whether to compute ``methods`` now, for ``cams.compute_grid`` of ``request`` (or ``compute_cam`` for one
    method): True when every ``costly`` method among them is cached or they are estimated
    at most ``SLOW_S`` together on ``layers`` (``camlib.cost.estimate_cost``, from the model's timed forward, and for
    second-order, per-layer-pass and eigenproblem methods its timed backward, Hessian product and the timed
    eigenproblems, times ``AUG_SMOOTH_VIEWS`` with aug_smooth);
    otherwise the estimate is shown with a button (``button_key``), and this is True only on the run the button was
    pressed in. Whatever set the methods and layers (the pickers or a link), the same check applies. When the cache
    or the estimate fails this is True: the computation then shows the error.
    """
    model_key, device = request.model_key, request.device
    channels = [layer.channels for layer in layers]
    positions = [layer.height * layer.width for layer in layers]
    slow = [METHODS[m] for m in methods if costly(m)]
    try:
        # A method that cannot explain these layers is refused by the computation at once: nothing to estimate.
        refused = models.method_refusals(model_key, device, tuple(layer.name for layer in layers)) if slow else {}
        slow = [
            spec
            for spec in slow
            if spec.name not in refused
            and cams.cached_cam(request, method=spec.name, class_idx=class_idx, options=options) is None
        ]
        if not slow:
            return True
        views = len(AUG_SMOOTH_VIEWS) if options.aug_smooth else 1
        seconds = models.forward_seconds(model_key, device) * views
        passes = None
        if any(spec.family != "perturbation" for spec in slow):
            passes = pass_seconds(model_key, device).scaled(views)
        estimates = [
            estimate_cost(
                spec.name,
                channels,
                seconds_per_image=seconds,
                n_samples=options.n_samples,
                passes=passes,
                positions=positions,
            )
            for spec in slow
        ]
    except CamlibError:  # no estimate: start, and let the computation report what is wrong
        return True
    total = sum(e.seconds for e in estimates)
    if total <= SLOW_S:
        return True
    labels = " and ".join(spec.label for spec in slow)
    st.info(
        md(
            "**{label}** runs {passes} for these layers ({channels} channels): about {t} on "
            "{device}. Other sessions are not slowed; changing any setting while it runs cancels it.",
            label=labels,
            passes=_passes_text(estimates),
            channels=" + ".join(f"{c:,}" for c in channels),
            t=_duration(total),
            device=device,
        )
    )
    return st.button(md("Compute {label} (about {t})", label=labels, t=_duration(total)), key=button_key)


@contextmanager
def progress(methods: list[str]) -> Iterator[ProgressCallback | None]:
    """A progress bar whose callback ``(done, total)`` is passed to ``compute_cams`` (when a perturbation method is
    among ``methods``), or a spinner (one pass: nothing to count). The bar is removed when the computation ends,
    however it ends."""
    slow = [METHODS[m].label for m in methods if METHODS[m].family == "perturbation"]
    if not slow:
        with st.spinner("Computing CAM (or waiting for other sessions' CAMs to free the CPU)..."):
            yield None
        return
    label = " and ".join(slow)
    bar = st.progress(0.0, text=md("{label}: starting...", label=label))

    def report(done: int, total: int) -> None:
        bar.progress(
            min(done / max(total, 1), 1.0),
            text=md("{label}: batch {done} of {total}", label=label, done=done, total=total),
        )

    try:
        yield report
    finally:
        bar.empty()


def headline(shown: Shown, *, prediction: tuple[int, float] | None) -> None:
    """What is explained, with which method, how fast and where; for an image with a true label (CIFAR-10), the
    model's ``prediction`` ``(class, probability)`` of it and whether that is correct (None: the prediction failed)."""
    result, loaded = shown.view.result, shown.loaded
    explained = result.class_idx[0]
    timing = "from the cache (first computed in {ms:.0f} ms)" if shown.view.from_cache else "in {ms:.0f} ms"
    st.markdown(
        md(
            "**Explaining class {k}: {name}** ({p:.1%}) with {method}"
            + (" (counterfactual: what speaks against the class)" if result.counterfactual else "")
            + " "
            + timing
            + " on {device}.",
            k=explained,
            name=shown.class_names[explained],
            p=result.probabilities[0, explained],
            method=METHODS[result.method].label,
            ms=result.elapsed_s * 1000,
            device=loaded.device,
        )
    )
    if shown.image.true_label is not None and prediction is not None:
        predicted, probability = loaded.class_names[prediction[0]], prediction[1]
        st.markdown(
            md(
                "True label: **{truth}** · predicted: **{predicted}** ({p:.1%}, {verdict})",
                truth=shown.image.true_label,
                predicted=predicted,
                p=probability,
                verdict="correct" if predicted == shown.image.true_label else "wrong",
            )
        )


def hover_map(cam: np.ndarray) -> np.ndarray:
    """``cam`` ``(H, W)`` averaged down so its longer side is at most ``HOVER_PX`` (block means; unchanged when it is
    already small), for the interactive heatmap."""
    factor = max(1, int(np.ceil(max(cam.shape) / HOVER_PX)))
    if factor == 1:
        return cam
    height, width = (cam.shape[0] // factor) * factor, (cam.shape[1] // factor) * factor  # whole blocks only
    return block_reduce(cam[:height, :width], (factor, factor), np.mean)


def overlay_png(image: np.ndarray, cam: np.ndarray, **style: object) -> bytes:
    """The lossless overlay download, ``camlib.overlay.overlay_heatmap`` as PNG: called by Streamlit when the button
    is clicked (a deferred download), outside any script run, so it uses no Streamlit cache."""
    return fast_png(overlay_heatmap(image, cam, **style))


def jpeg_data_url(jpeg: bytes) -> str:
    """JPEG bytes as a ``data:image/jpeg;base64,...`` URL: ``st.image`` sends it inline, with no media file to
    expire (RFC 2397)."""
    return "data:image/jpeg;base64," + base64.b64encode(jpeg).decode("ascii")


@st.fragment
@timed_run("CAM Explorer: overlay")
def draw(shown: Shown) -> None:
    """Overlay controls, the overlays of every layer, the layer magnitudes, the detailed view and the downloads; a
    camlib error while drawing is shown with ``st.error`` (the result stays, the next overlay change redraws).

    A fragment: a change of its own widgets reruns this function alone (logged by ``timed_run`` as a fragment run)."""
    try:
        _draw(shown)
    except CamlibError as error:
        st.error(md("Cannot draw the maps: {error}", error=error))


def _draw(shown: Shown) -> None:
    result, loaded = shown.view.result, shown.loaded
    with st.expander("Overlay", expanded=True):
        look = widgets.overlay_controls(keys.CAM, columns=4)
    names, shared = list(result.layers), look.shared_scale
    maps = shown.maps(shared)
    explained = result.class_idx[0]
    model_view = shown.tile
    style = {"alpha": look.alpha, "colormap": look.colormap, "threshold": look.threshold}
    jpegs = {
        name: overlays.overlay_image(
            model_view, maps[name][0], encoding="jpeg", key=shown.tile_key(shared, name), **style
        )
        for name in names
    }
    for column, name in zip(st.columns(min(max(len(names), 3), 4)) * 4, names):
        with column:
            info = shown.layers.get(name)
            st.image(
                jpeg_data_url(jpegs[name]),
                caption=md("{name} [{shape}]", name=name, shape=info.shape_label if info else ""),
                width="stretch",
            )
            if result.degenerate[name][0]:
                st.warning(md("No positive evidence for class {k} at this layer: the map is blank.", k=explained))
    if METHODS[result.method].fuses_layers:  # RefineCAM: its map is the layers' maps fused
        st.image(
            jpeg_data_url(
                overlays.overlay_image(
                    model_view, shown.refined_tile[0], encoding="jpeg", key=shown.refined_tile[1], **style
                )
            ),
            caption=md("{label}: the {n} layers' maps multiplied", label=METHODS[result.method].label, n=len(names)),
        )
    if len(names) > 1:
        magnitudes = {n: float(v[0]) for n, v in layer_magnitudes(result).items()}
        st.plotly_chart(figures.magnitude_figure(magnitudes), key=keys.CAM_MAGNITUDES)

    detail = st.selectbox(
        "Layer for the detailed view and export", names, key=keys.CAM_DETAIL_LAYER, persist_state="session"
    )
    original_map, inside, original_key = shown.on_original(shared, detail)
    left, right = st.columns(2)
    left.image(
        jpeg_data_url(
            overlays.overlay_image(
                shown.original[0], original_map, mask=inside, encoding="jpeg", key=original_key, **style
            )
        ),
        caption="On the original image (dimmed: outside the model's centre crop)",
        width="stretch",
    )
    size = maps[detail][0].shape
    signed = right.toggle(
        "Signed map (for and against)",
        key=keys.CAM_SIGNED,
        persist_state="session",
        help="The raw map before the method's ReLU, scaled by its largest absolute value: red is evidence for the "
        "class, blue is evidence against it.",
    )
    shown_map = signed_map(result.raw[detail][0], size) if signed else maps[detail][0]
    right.plotly_chart(
        figures.heatmap_figure(hover_map(shown_map), colormap=look.colormap, size=size, signed=signed),
        key=keys.CAM_HEATMAP,
    )
    widgets.cam_downloads(
        keys.CAM,
        overlay_png=partial(overlay_png, model_view, maps[detail][0], **style),  # encoded when clicked: lossless
        raw=result.raw[detail][0],
        layer=detail,
        settings={
            "model": shown.model_key,
            "model_label": loaded.spec.label,
            "method": result.method,
            "layers": names,
            "class_idx": explained,
            "class_name": shown.class_names[explained],
            "image": shown.image.name,
            **asdict(look),
            "preprocessing": asdict(loaded.spec.preprocessing),
            "camlib": camlib.__version__,
        },
    )
