"""The CAM Explorer's model runs, cached: one method's CAMs (``compute_cam``), a method x layer grid
(``compute_grid``) and a pixel attribution (``compute_pixel_maps``), each for a ``CamRequest``'s model, device, image
and layers, each run inside ``ui.jobs.model_job``.

CAM results are cached with ``st.cache_data`` through ``ui.stores`` so overlay changes (opacity, colormap, threshold,
scale) never re-run the model.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import streamlit as st
import torch

from camlib.cam import METHODS, CamOptions, CamResult, ProgressCallback, compute_cam_grid, finish_maps
from camlib.errors import MethodError
from camlib.models import prepare_input
from camlib.pixel_attribution import PIXEL_METHODS, attribution_images
from ui import jobs, models
from ui.stores import CACHE_TTL, handed, image_key, probe, store


@dataclass(frozen=True, eq=False)
class CamRequest:
    """What the CAM Explorer explains: a model key (``ui.models.resolve_model``), a device ("cpu", "cuda:0"...), the
    image (uint8 ``(H, W, 3)``) and the target layers. Compared by identity: the image is an array."""

    model_key: str
    device: str
    image: np.ndarray
    layers: tuple[str, ...]


# ``camlib.cam.CamOptions`` (hashable: part of every CAM cache key). The method is a key of its own in these caches and
# ``compute_cam_grid`` computes its ``methods``, so the options here leave ``method`` at its default.
DEFAULT_OPTIONS = CamOptions()


@dataclass(frozen=True)
class CamOutcome:
    """One method's CAMs as the page renders them: the CAM result; the model's view of the image
    (``PreparedInput.model_view``, uint8 ``(h, w, 3)``) and where that crop lies in the original (``crop_box``), not
    the 0.6 MB input tensor, so a cached outcome stays small; and whether this call found it in the cache (then
    ``result.elapsed_s`` is the time of the first computation, not of this call)."""

    result: CamResult
    model_view: np.ndarray
    crop_box: tuple[float, float, float, float]
    from_cache: bool = False


@dataclass(frozen=True)
class GridMaps:
    """A method x layer grid (``compute_grid``): each method's ``CamOutcome``, in the order asked, and the methods that
    cannot explain these layers with the reason (a ``MethodError``, e.g. CAM on a layer that does not feed the
    classifier)."""

    outcomes: dict[str, CamOutcome]
    errors: dict[str, MethodError]

    @property
    def from_cache(self) -> bool:
        return all(outcome.from_cache for outcome in self.outcomes.values())


@dataclass(frozen=True)
class PixelMaps:
    """A pixel attribution (``camlib.pixel_attribution``) for the page: per layer (one entry, ``""``, for methods
    without layers) a uint8 ``(h, w, 3)`` image (``attribution_images`` of signed attributions) or a float ``(h, w)``
    map in [0, 1] (FullGrad), the explained class, its probability and the time, with the model's view of the image."""

    method: str
    shown: dict[str, np.ndarray]
    class_idx: int
    probability: float
    elapsed_s: float
    model_view: np.ndarray


def grid_partners(method: str) -> list[str]:
    """``method`` and the methods computed with it from the same pass (``camlib.cam.compute_cam_grid``): for a
    gradient method, every gradient method with the same score and order (one forward, one gradient, a few cheap
    maps more), so switching among them is a cache hit; activation and perturbation methods alone."""
    spec = METHODS[method]
    if not spec.uses_gradients:
        return [method]
    return [method] + [
        name
        for name, other in METHODS.items()
        if name != method
        and other.uses_gradients
        and other.score is spec.score
        and other.second_order == spec.second_order
    ]


def cached_cam(
    request: CamRequest, *, method: str, class_idx: int, options: CamOptions = DEFAULT_OPTIONS
) -> CamOutcome | None:
    """The cached CAM for ``request`` (``from_cache=True``), or None; never computes anything."""
    return _cached(_Job.of(request), method=method, class_idx=class_idx, options=options)


def _cached(job: _Job, *, method: str, class_idx: int, options: CamOptions = DEFAULT_OPTIONS) -> CamOutcome | None:
    """A hit rebuilt from the compact store: the maps from the raw maps (``camlib.cam.finish_maps``, about 1 ms per
    layer) and the model's view of the image from its own small cache (prepared again if that was dropped)."""
    model_key, device, key, image, layers = job.model_key, job.device, job.key, job.image, job.layers
    stored = probe(_cam_store, model_key, device, key, layers, method=method, class_idx=class_idx, options=options)
    if stored is None:
        return None
    prepared = probe(_prepared_store, model_key, device, key)
    if prepared is None:
        view = prepare_input(image, models.resolve_model(model_key, device).spec.preprocessing)
        prepared = (view.model_view, view.crop_box)
        store(_prepared_store, prepared, model_key, device, key)
    size = tuple(prepared[0].shape[:2])
    maps = stored.maps or {name: finish_maps(stored.raw[name], size) for name in stored.layers}  # aug_smooth: kept
    return CamOutcome(result=replace(stored, maps=maps), model_view=prepared[0], crop_box=prepared[1], from_cache=True)


def compute_cam(
    model_key: str,
    device: str,
    image: np.ndarray,
    layers: tuple[str, ...],
    *,
    method: str,
    class_idx: int,
    options: CamOptions = DEFAULT_OPTIONS,
    progress: ProgressCallback | None = None,
) -> CamOutcome:
    """One CAM computation (all layers from one pass), cached on its inputs; ``from_cache`` says whether it was.

    A gradient method is computed with its ``grid_partners`` in one ``compute_cam_grid`` call and every partner's
    result is stored, so a later change among them needs no model call. The store is compact: results without their
    full-size maps (rebuilt from the raw maps on a hit) and the model's view of the image once per image. A miss is
    computed here, outside the cached functions, so ``progress(done, batches)`` (called between the extra forward
    batches of perturbation methods) may draw Streamlit elements; when it raises (Streamlit's rerun or stop request,
    raised by the next element call of a superseded run or a closed tab), camlib stops at that batch, removes its
    hooks and the exception propagates. Only finished results are stored.

    Raises:
        CamlibError: from ``resolve_model`` and ``camlib.cam.compute_cam_grid``.
    """
    job = _Job.of(CamRequest(model_key, device, image, layers))
    hit = _cached(job, method=method, class_idx=class_idx, options=options)
    if hit is not None:
        return hit
    try:
        outcomes, _ = _compute(
            job, grid_partners(method), class_idx=class_idx, options=options, progress=progress, each=False
        )
    except MethodError:  # a partner that cannot explain these layers: the method alone says what is wrong
        outcomes, _ = _compute(job, [method], class_idx=class_idx, options=options, progress=progress, each=False)
    return outcomes[method]


def compute_grid(
    request: CamRequest, *, methods: tuple[str, ...], class_idx: int, progress: ProgressCallback | None = None
) -> GridMaps:
    """The CAMs of several methods on the same layers: the cached ones from the cache, all the others from one
    ``compute_cam_grid`` call (one forward, one gradient for every gradient method). A method that cannot explain
    these layers is reported in ``errors`` and the others are still computed. Progress and cancellation as
    ``compute_cam``; every finished result is stored, so the single-method outcome finds it.

    Raises:
        CamlibError: from ``resolve_model`` and ``camlib.cam.compute_cam_grid`` (other than a method's
            ``MethodError``).
    """
    job = _Job.of(request)
    outcomes = {m: _cached(job, method=m, class_idx=class_idx) for m in methods}
    missing = [m for m, outcome in outcomes.items() if outcome is None]
    errors: dict[str, MethodError] = {}
    if missing:
        computed, errors = _compute(
            job, missing, class_idx=class_idx, options=DEFAULT_OPTIONS, progress=progress, each=True
        )
        outcomes.update(computed)
    return GridMaps(outcomes={m: o for m, o in outcomes.items() if o is not None}, errors=errors)


@dataclass(frozen=True, eq=False)
class _Job:
    """What a CAM computation is asked about: a ``CamRequest`` with the image's ``image_key``, hashed once."""

    model_key: str
    device: str
    key: str
    image: np.ndarray
    layers: tuple[str, ...]

    @classmethod
    def of(cls, request: CamRequest) -> _Job:
        return cls(request.model_key, request.device, image_key(request.image), request.image, request.layers)


def _compute(
    job: _Job,
    methods: list[str],
    *,
    class_idx: int,
    options: CamOptions,
    progress: ProgressCallback | None,
    each: bool,
) -> tuple[dict[str, CamOutcome], dict[str, MethodError]]:
    """A cache miss: ``methods`` from one ``compute_cam_grid`` call, every result stored. When a method cannot explain
    these layers, ``each=True`` computes the methods one by one and returns the failures; ``each=False`` raises."""
    model_key, device, key, layers = job.model_key, job.device, job.key, job.layers
    loaded = models.resolve_model(model_key, device)
    prepared = prepare_input(job.image, loaded.spec.preprocessing)
    x = prepared.tensor.to(loaded.device)
    results, errors = {}, {}
    grid = partial(
        compute_cam_grid, loaded.model, x, list(layers), class_idx=class_idx, progress=progress, options=options
    )
    with jobs.model_job(jobs.is_heavy(methods, options)):
        try:
            results = grid(methods)
        except MethodError:
            if not each:
                raise
            for method in methods:
                try:
                    results |= grid([method])
                except MethodError as error:
                    errors[method] = error
    store(_prepared_store, (prepared.model_view, prepared.crop_box), model_key, device, key)
    for name, result in results.items():
        compact = result if options.aug_smooth else replace(result, maps={})  # aug_smooth's maps are not finish(raw)
        store(_cam_store, compact, model_key, device, key, layers, method=name, class_idx=class_idx, options=options)
    outcomes = {
        name: CamOutcome(result=result, model_view=prepared.model_view, crop_box=prepared.crop_box)
        for name, result in results.items()
    }
    return outcomes, errors


@st.cache_data(max_entries=256, ttl=CACHE_TTL, show_spinner=False)
def _cam_store(
    model_key: str,
    device: str,
    key: str,
    layers: tuple[str, ...],
    *,
    method: str,
    class_idx: int,
    options: CamOptions = DEFAULT_OPTIONS,
) -> CamResult:
    """CAM results without their full-size maps (a few KB each), keyed by ``image_key``: the store behind
    ``cached_cam``/``compute_cam``."""
    return handed()


@st.cache_data(max_entries=32, ttl=CACHE_TTL, show_spinner=False)
def _prepared_store(model_key: str, device: str, key: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The model's view of an image (uint8 ``(h, w, 3)``) and its crop box, once per (model, device, image)."""
    return handed()


@st.cache_data(max_entries=16, ttl=CACHE_TTL, show_spinner="Computing the pixel attribution...")
def compute_pixel_maps(
    model_key: str, device: str, image: np.ndarray, layers: tuple[str, ...], *, method: str, class_idx: int
) -> PixelMaps:
    """One pixel attribution of ``image`` (``PIXEL_METHODS[method]``; ``layers`` only for Guided Grad-CAM), cached.

    Raises:
        CamlibError: from ``resolve_model`` and the method (``MethodError`` where it does not apply to the model).
    """
    spec = PIXEL_METHODS[method]
    loaded = models.resolve_model(model_key, device)
    prepared = prepare_input(image, loaded.spec.preprocessing)
    x = prepared.tensor.to(loaded.device)
    with jobs.model_job(heavy=True):  # a backward to the input, and batches of steps or samples for most
        if spec.needs_layers:
            result = spec.compute(loaded.model, x, list(layers), class_idx=class_idx)
        else:
            result = spec.compute(loaded.model, x, class_idx=class_idx)
    if spec.output == "map":
        shown, logits, explained = {"": result.maps[0]}, result.logits, result.class_idx[0]
    elif spec.needs_layers:
        shown = {name: attribution_images(a)[0] for name, a in result.attributions.items()}
        logits, explained = result.guided.logits, result.guided.class_idx[0]
    else:
        shown, logits, explained = {"": attribution_images(result.attributions)[0]}, result.logits, result.class_idx[0]
    probability = float(torch.softmax(torch.from_numpy(logits[0]), dim=-1)[explained])
    return PixelMaps(method, shown, explained, probability, result.elapsed_s, prepared.model_view)
