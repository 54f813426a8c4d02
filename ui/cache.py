"""The cache layer: ``st.cache_*`` wrappers over camlib (models, layer lists, CIFAR-10, predictions, CAM results).

Models are cached with ``st.cache_resource`` per (model key, device) and shared by every session: camlib treats them
as read-only (per-model lock, no backward(), hooks removed, modes restored). Every function that runs a model takes
the session's ``device`` (``ui.app_inputs.device_input``: "cpu", "cuda:0"...), so each device has its own copy and
its own cached results. CAM results are cached with ``st.cache_data`` so overlay changes
(opacity, colormap, threshold, scale) never re-run the model.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from datetime import timedelta
from functools import partial
from typing import NamedTuple

import numpy as np
import streamlit as st
import torch

from camlib.cam import (
    METHODS,
    RANDOM_CAM_SEED,
    CamResult,
    ProgressCallback,
    compute_cam_grid,
    compute_cams,
    finish_maps,
)
from camlib.cifar import CifarData, detect_source, load_cifar10
from camlib.cost import time_forward
from camlib.device import parse_device
from camlib.drawing import fast_jpeg, fast_png
from camlib.errors import MethodError
from camlib.evaluation import predict_probabilities
from camlib.imaging import DecodedImage, decode_image
from camlib.layers import LayerInfo, list_candidate_layers
from camlib.models import LoadedModel, load_model, prepare_batch, prepare_input
from camlib.overlay import overlay_heatmap
from camlib.pixel_attribution import PIXEL_METHODS, attribution_images
from camlib.prediction_cache import cached_predictions
from ui import memory
from ui.checkpoint_store import get_checkpoint, is_checkpoint_key

# Results nobody asked for in this long are dropped, whatever max_entries allows. A timedelta, not "2h": Streamlit
# parses a TTL string with pandas, whose import costs 0.4 s on a page (the gallery) that needs nothing else of it.
CACHE_TTL = timedelta(hours=2)

# torch's intra-op threads for this process (app.py sets them once): torch's own default, or fewer with
# $CAMLIB_TORCH_THREADS. Read here, at import, before any CAM job has set a share of it.
TORCH_THREADS = max(1, min(torch.get_num_threads(), int(os.environ.get("CAMLIB_TORCH_THREADS", os.cpu_count() or 1))))

# Bad-inputs row 48: CAM jobs share the cores, so two semaphores bound how many run at once in the process, whatever
# the model (each model's own lock only serialises jobs on that model); the others wait under the spinner.
# - Every job (MAX_CAM_JOBS): a one-pass job on one image spends much of its time in Python, holding the GIL (per-op
#   dispatch, hooks), so more jobs than cores overlap one job's kernels with the others' Python, and _share_cores
#   gives each 1/k of torch's threads. Four per core, at most 16. Measured with bench_load --sessions 8 on a fresh
#   server (8 users changing layers at once) on 2 cores: method/layer p95 1.42-1.73 s with 2 jobs, 1.13-1.33 s with 4,
#   0.81-1.04 s with 8. Such a job holds one image's activations and gradients (a few MB).
# - Heavy jobs (MAX_HEAVY_JOBS: perturbation and sampling methods, aug_smooth): batches of up to scorecam_batch_size
#   images per forward, kernel-bound and hundreds of MB each, so at most one per core's worth of torch threads, at
#   least 2, and fewer than MAX_CAM_JOBS. They also take a slot of the first bound, so they never hold all of them: a
#   slow job (Score-CAM) leaves the one-pass methods free to run.
# $CAMLIB_MAX_CAM_JOBS and $CAMLIB_MAX_HEAVY_JOBS override both, within those limits (at least 2; 1 to
# MAX_CAM_JOBS - 1).
MAX_CAM_JOBS = max(2, int(os.environ.get("CAMLIB_MAX_CAM_JOBS", min(16, 4 * (os.cpu_count() or 1)))))
MAX_HEAVY_JOBS = min(
    MAX_CAM_JOBS - 1,
    max(1, int(os.environ.get("CAMLIB_MAX_HEAVY_JOBS", max(2, (os.cpu_count() or 1) // TORCH_THREADS)))),
)
_CAM_JOBS = threading.BoundedSemaphore(MAX_CAM_JOBS)
_HEAVY_JOBS = threading.BoundedSemaphore(MAX_HEAVY_JOBS)


@contextmanager
def _job_slots(heavy: bool) -> Iterator[None]:
    """A slot of ``_HEAVY_JOBS`` (heavy jobs only, taken first), then one of ``_CAM_JOBS``; both released on exit."""
    with _HEAVY_JOBS if heavy else nullcontext(), _CAM_JOBS:
        yield


def is_heavy(methods: list[str], options: CamOptions) -> bool:
    """Whether a CAM job runs more than one pass: a perturbation method (one forward per channel batch), a sampling
    method (``MethodSpec.samples`` > 1: SS-CAM, IS-CAM, Smooth Grad-CAM++, SESS) or aug_smooth (6 views)."""
    specs = [METHODS.get(m) for m in methods]  # an unknown name is camlib's to refuse (MethodError), not heavy
    return options.aug_smooth or any(s is not None and (s.family == "perturbation" or s.samples > 1) for s in specs)


class _CoreShare:
    """Torch's intra-op threads (``budget``) divided among the CAM jobs running at once: a job that starts alone uses
    all of them, one that starts while k others run uses 1/(k+1) of them. Torch keeps the count per thread
    (each thread's OpenMP setting, first taken from the last ``set_num_threads``), so a job sets its own thread's
    count when it starts and puts the budget back when it ends; a running job keeps its count. With 8 sessions asking
    for new CAMs at once (bench_load --sessions 8), the p95 of a method/layer change went from 2.2 s to 1.7 s."""

    def __init__(self, budget: int) -> None:
        self._lock = threading.Lock()
        self._active = 0
        self._budget = budget

    @contextmanager
    def __call__(self) -> Iterator[None]:
        with self._lock:
            self._active += 1
            share = max(1, self._budget // self._active)
        torch.set_num_threads(share)
        try:
            yield
        finally:
            torch.set_num_threads(self._budget)
            with self._lock:
                self._active -= 1


_share_cores = _CoreShare(TORCH_THREADS)


@dataclass(frozen=True)
class CamView:
    """What the page renders: the CAM result; the model's view of the image (``PreparedInput.model_view``, uint8
    ``(h, w, 3)``) and where that crop lies in the original (``crop_box``), not the 0.6 MB input tensor, so a cached
    view stays small; and whether this call found it in the cache (then ``result.elapsed_s`` is the time of the first
    computation, not of this call)."""

    result: CamResult
    model_view: np.ndarray
    crop_box: tuple[float, float, float, float]
    from_cache: bool = False


@dataclass(frozen=True)
class CamOptions:
    """``compute_cams``' options besides the method and the class (hashable: part of every CAM cache key)."""

    counterfactual: bool = False
    aug_smooth: bool = False
    eigen_smooth: bool = False
    seed: int = RANDOM_CAM_SEED
    n_samples: int | None = None


DEFAULT_OPTIONS = CamOptions()


@st.cache_resource(max_entries=6, show_spinner="Loading model...")
def get_model(key: str, device: str) -> LoadedModel:
    """A registry model on ``device``, loaded once per process and device and shared by all sessions (read-only).

    Raises:
        CamlibError: from ``camlib.models.load_model`` (unknown key, weights unavailable) or
            ``camlib.device.parse_device`` (a device this machine does not have).
    """
    loaded = load_model(key, allow_download=False, device=parse_device(device))
    memory.note_model_load()  # the next app run freezes it (ui.memory.freeze_at_run_start)
    return loaded


def resolve_model(key: str, device: str) -> LoadedModel:
    """The model behind a registry key (``get_model``) or a checkpoint key (``ui.checkpoint_store``).

    Raises:
        UnknownModelError: a checkpoint key no longer in the shared store (bounded: the oldest checkpoints go).
        CamlibError: from ``get_model`` (unknown key, weights unavailable).
    """
    if is_checkpoint_key(key):
        return get_checkpoint(key, device)
    return get_model(key, device)


@st.cache_resource(max_entries=16, show_spinner=False)
def get_layers(key: str, device: str) -> list[LayerInfo]:
    """The candidate target layers of a model, with their output shapes at the model's input size."""
    loaded = resolve_model(key, device)
    crop = loaded.spec.preprocessing.crop
    return list_candidate_layers(loaded.model, (crop, crop))


@st.cache_resource(max_entries=64, show_spinner=False)
def method_refusals(key: str, device: str, layers: tuple[str, ...]) -> dict[str, str]:
    """``{method: "layer: reason"}`` for the registry methods that cannot explain one of ``layers`` of the model, from
    its structure (``MethodSpec.refusal`` with the layer inspector's layouts); the pickers grey those out.

    Raises:
        CamlibError: from ``resolve_model`` and ``get_layers`` (``LayerError`` for a layer the model does not have).
    """
    loaded, infos = resolve_model(key, device), {c.name: c for c in get_layers(key, device)}
    refused = {}
    for name, spec in METHODS.items():
        for layer in layers:
            info = infos.get(layer)
            reason = spec.refusal(loaded.model, layer, info.layout if info else None)
            if reason:
                refused[name] = f"{layer}: {reason}"
                break
    return refused


@st.cache_data(max_entries=16, ttl=CACHE_TTL, show_spinner=False)
def decode_upload(data: bytes, filename: str = "") -> DecodedImage:
    """An upload decoded by ``camlib.imaging.decode_image``; ``filename`` only adds a note when its extension names
    another format than the bytes hold (e.g. JPEG bytes named .png are decoded as JPEG, and the note says so)."""
    return decode_image(data, filename=filename)


@st.cache_data(max_entries=32, ttl=CACHE_TTL, show_spinner=False)
def predict(model_key: str, device: str, image: np.ndarray) -> np.ndarray:
    """Class probabilities ``(num_classes,)`` for one image (no gradients)."""
    loaded = resolve_model(model_key, device)
    return predict_probabilities(loaded.model, image[None], loaded.spec.preprocessing)[0]


class _NotCached(Exception):  # noqa: N818 - a signal between _probe and the stores, never shown
    """Raised inside a store (``_handed``) when a probe finds nothing: exceptions are not cached, so nothing is
    stored."""


_handoff = threading.local()  # probe: bool; value: what a store call puts in its cache


def image_key(image: np.ndarray) -> str:
    """A short key of an image's pixels (shape, dtype and a BLAKE2b digest), hashed once per call instead of once per
    cache lookup: a 25 MP upload is 75 MB."""
    return (
        f"{image.shape}:{image.dtype}:{hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()}"
    )


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


def cached_view(
    model_key: str,
    device: str,
    image: np.ndarray,
    layers: tuple[str, ...],
    *,
    method: str,
    class_idx: int,
    options: CamOptions = DEFAULT_OPTIONS,
) -> CamView | None:
    """The cached CAM for these inputs (``from_cache=True``), or None; never computes anything."""
    return _cached(
        model_key, device, image_key(image), image, layers, method=method, class_idx=class_idx, options=options
    )


def _cached(  # noqa: PLR0913 (the cache key's parts)
    model_key: str,
    device: str,
    key: str,
    image: np.ndarray,
    layers: tuple[str, ...],
    *,
    method: str,
    class_idx: int,
    options: CamOptions = DEFAULT_OPTIONS,
) -> CamView | None:
    """A hit rebuilt from the compact store: the maps from the raw maps (``camlib.cam.finish_maps``, about 1 ms per
    layer) and the model's view of the image from its own small cache (prepared again if that was dropped)."""
    stored = _probe(_cached_view, model_key, device, key, layers, method=method, class_idx=class_idx, options=options)
    if stored is None:
        return None
    prepared = _probe(_cached_prepared, model_key, device, key)
    if prepared is None:
        view = prepare_input(image, resolve_model(model_key, device).spec.preprocessing)
        prepared = (view.model_view, view.crop_box)
        _store(_cached_prepared, prepared, model_key, device, key)
    size = tuple(prepared[0].shape[:2])
    maps = stored.maps or {name: finish_maps(stored.raw[name], size) for name in stored.layers}  # aug_smooth: kept
    return CamView(result=replace(stored, maps=maps), model_view=prepared[0], crop_box=prepared[1], from_cache=True)


def _probe(function: Callable, *args: object, **kwargs: object) -> object | None:
    """What ``function`` (an ``st.cache_data`` store of handed-over values) holds for these arguments, or None."""
    _handoff.probe = True
    try:
        return function(*args, **kwargs)
    except _NotCached:
        return None
    finally:
        _handoff.probe = False


def _store(function: Callable, value: object, *args: object, **kwargs: object) -> None:
    """Put ``value`` in ``function``'s cache under these arguments."""
    _handoff.value = value
    try:
        function(*args, **kwargs)
    finally:
        _handoff.value = None


def _handed() -> object:
    """The body of every store: a probe finds nothing (``_NotCached``, which is not cached); a store returns the value
    handed over (computed outside, so no element drawn while computing is ever replayed)."""
    if getattr(_handoff, "probe", False):
        raise _NotCached
    value = getattr(_handoff, "value", None)
    if value is None:
        raise _NotCached  # called directly: nothing to store
    return value


def compute_view(
    model_key: str,
    device: str,
    image: np.ndarray,
    layers: tuple[str, ...],
    *,
    method: str,
    class_idx: int,
    options: CamOptions = DEFAULT_OPTIONS,
    progress: ProgressCallback | None = None,
) -> CamView:
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
    key = image_key(image)
    hit = _cached(model_key, device, key, image, layers, method=method, class_idx=class_idx, options=options)
    if hit is not None:
        return hit
    job = _Job(model_key, device, key, image, layers)
    try:
        views, _ = _compute(
            job, grid_partners(method), class_idx=class_idx, options=options, progress=progress, each=False
        )
    except MethodError:  # a partner that cannot explain these layers: the method alone says what is wrong
        views, _ = _compute(job, [method], class_idx=class_idx, options=options, progress=progress, each=False)
    return views[method]


@dataclass(frozen=True)
class GridView:
    """A method x layer grid (``compute_grid``): each method's view, in the order asked, and the methods that cannot
    explain these layers with the reason (a ``MethodError``, e.g. CAM on a layer that does not feed the classifier)."""

    views: dict[str, CamView]
    errors: dict[str, MethodError]

    @property
    def from_cache(self) -> bool:
        return all(view.from_cache for view in self.views.values())


def compute_grid(
    model_key: str,
    device: str,
    image: np.ndarray,
    layers: tuple[str, ...],
    *,
    methods: tuple[str, ...],
    class_idx: int,
    progress: ProgressCallback | None = None,
) -> GridView:
    """The CAMs of several methods on the same layers: the cached ones from the cache, all the others from one
    ``compute_cam_grid`` call (one forward, one gradient for every gradient method). A method that cannot explain
    these layers is reported in ``errors`` and the others are still computed. Progress and cancellation as
    ``compute_view``; every finished result is stored, so the single-method view finds it.

    Raises:
        CamlibError: from ``resolve_model`` and ``camlib.cam.compute_cam_grid`` (other than a method's
            ``MethodError``).
    """
    key = image_key(image)
    views = {m: _cached(model_key, device, key, image, layers, method=m, class_idx=class_idx) for m in methods}
    missing = [m for m, view in views.items() if view is None]
    errors: dict[str, MethodError] = {}
    if missing:
        job = _Job(model_key, device, key, image, layers)
        computed, errors = _compute(
            job, missing, class_idx=class_idx, options=DEFAULT_OPTIONS, progress=progress, each=True
        )
        views.update(computed)
    return GridView(views={m: v for m, v in views.items() if v is not None}, errors=errors)


class _Job(NamedTuple):
    """What a CAM computation is asked about: the model, the device, the image (and its ``image_key``), the layers."""

    model_key: str
    device: str
    key: str
    image: np.ndarray
    layers: tuple[str, ...]


def _compute(
    job: _Job,
    methods: list[str],
    *,
    class_idx: int,
    options: CamOptions,
    progress: ProgressCallback | None,
    each: bool,
) -> tuple[dict[str, CamView], dict[str, MethodError]]:
    """A cache miss: ``methods`` from one ``compute_cam_grid`` call, every result stored. When a method cannot explain
    these layers, ``each=True`` computes the methods one by one and returns the failures; ``each=False`` raises."""
    model_key, device, key, image, layers = job
    loaded = resolve_model(model_key, device)
    prepared = prepare_input(image, loaded.spec.preprocessing)
    x = prepared.tensor.to(loaded.device)
    results, errors = {}, {}
    grid = partial(
        compute_cam_grid, loaded.model, x, list(layers), class_idx=class_idx, progress=progress, **asdict(options)
    )
    with _job_slots(is_heavy(methods, options)), _share_cores():
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
    _store(_cached_prepared, (prepared.model_view, prepared.crop_box), model_key, device, key)
    for name, result in results.items():
        compact = result if options.aug_smooth else replace(result, maps={})  # aug_smooth's maps are not finish(raw)
        _store(_cached_view, compact, model_key, device, key, layers, method=name, class_idx=class_idx, options=options)
    views = {
        name: CamView(result=result, model_view=prepared.model_view, crop_box=prepared.crop_box)
        for name, result in results.items()
    }
    return views, errors


@st.cache_data(max_entries=256, ttl=CACHE_TTL, show_spinner=False)
def _cached_view(
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
    ``cached_view``/``compute_view``."""
    return _handed()


@st.cache_data(max_entries=32, ttl=CACHE_TTL, show_spinner=False)
def _cached_prepared(model_key: str, device: str, key: str) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The model's view of an image (uint8 ``(h, w, 3)``) and its crop box, once per (model, device, image)."""
    return _handed()


@dataclass(frozen=True)
class PixelView:
    """A pixel attribution (``camlib.pixel_attribution``) for the page: per layer (one entry, ``""``, for methods
    without layers) a uint8 ``(h, w, 3)`` image (``attribution_images`` of signed attributions) or a float ``(h, w)``
    map in [0, 1] (FullGrad), the explained class, its probability and the time, with the model's view of the image."""

    method: str
    shown: dict[str, np.ndarray]
    class_idx: int
    probability: float
    elapsed_s: float
    model_view: np.ndarray


@st.cache_data(max_entries=16, ttl=CACHE_TTL, show_spinner="Computing the pixel attribution...")
def compute_pixel_view(
    model_key: str, device: str, image: np.ndarray, layers: tuple[str, ...], *, method: str, class_idx: int
) -> PixelView:
    """One pixel attribution of ``image`` (``PIXEL_METHODS[method]``; ``layers`` only for Guided Grad-CAM), cached.

    Raises:
        CamlibError: from ``resolve_model`` and the method (``MethodError`` where it does not apply to the model).
    """
    spec = PIXEL_METHODS[method]
    loaded = resolve_model(model_key, device)
    prepared = prepare_input(image, loaded.spec.preprocessing)
    x = prepared.tensor.to(loaded.device)
    with _job_slots(heavy=True), _share_cores():  # a backward to the input, and batches of steps or samples for most
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
    return PixelView(method, shown, explained, probability, result.elapsed_s, prepared.model_view)


@st.cache_resource(max_entries=8, show_spinner="Timing the model once, to estimate slow methods...")
def forward_seconds(model_key: str, device: str) -> float:
    """One image's forward time of the model on ``device``, s (``camlib.cost.time_forward`` at the model's input size),
    measured once per process; the basis of the slow-method estimate."""
    loaded = resolve_model(model_key, device)
    return time_forward(loaded.model, loaded.spec.preprocessing.crop)


def overlay_image(  # noqa: PLR0913 (the overlay's inputs and its encoding)
    image: np.ndarray,
    cam: np.ndarray,
    *,
    alpha: float,
    colormap: str,
    threshold: float | None,
    mask: np.ndarray | None = None,
    encoding: str = "png",
    key: str | None = None,
) -> bytes:
    """``camlib.overlay.overlay_heatmap`` encoded as PNG (``camlib.drawing.fast_png``, lossless) or, with
    ``encoding="jpeg"``, as JPEG (``fast_jpeg``: what the CAM Explorer's overlay fragment shows, redrawn on every
    overlay change; a PNG costs 3-15x the time to encode). Cached, so a rerun that changes nothing about an overlay
    neither blends nor encodes it again. The cache key holds ``image_key`` digests of the arrays (BLAKE2b, in C), not
    Streamlit's hash of them, which took about a sixth of a fragment run. A caller that already holds
    ``overlay_key(image, cam, mask)`` passes it as ``key`` and nothing is hashed."""
    if key is None:
        key = overlay_key(image, cam, mask)
    style = {"alpha": alpha, "colormap": colormap, "threshold": threshold}
    return _overlay_image(image, cam, mask, key=key, encoding=encoding, **style)


def overlay_key(image: np.ndarray, cam: np.ndarray, mask: np.ndarray | None = None) -> str:
    """``overlay_image``'s cache key for these arrays: their ``image_key`` digests joined."""
    arrays = (image, cam) if mask is None else (image, cam, mask)
    return "|".join(image_key(array) for array in arrays)


@st.cache_data(max_entries=64, ttl=CACHE_TTL, show_spinner=False)
def _overlay_image(  # noqa: PLR0913 (the overlay's inputs, its key and its encoding)
    _image: np.ndarray,
    _cam: np.ndarray,
    _mask: np.ndarray | None,
    *,
    key: str,
    encoding: str,
    alpha: float,
    colormap: str,
    threshold: float | None,
) -> bytes:
    """``overlay_image``'s cache: the arrays are not hashed (leading underscores), ``key`` stands for them."""
    encode = {"png": fast_png, "jpeg": fast_jpeg}[encoding]
    return encode(overlay_heatmap(_image, _cam, alpha=alpha, colormap=colormap, threshold=threshold, mask=_mask))


@st.cache_resource(max_entries=4, show_spinner="Loading CIFAR-10...")
def get_cifar(root: str, split: str) -> CifarData:
    """A CIFAR-10 split, loaded once per process and shared read-only by every session."""
    data = load_cifar10(root, split)
    data.images.setflags(write=False)
    data.labels.setflags(write=False)
    return data


def cifar_test_set(root: str) -> CifarData | None:
    """The CIFAR-10 test split under ``root`` (the app's data root), or None when no copy is there."""
    if not root or detect_source(root) is None:
        return None
    return get_cifar(root, "test")


def dataset_predictions(
    model_key: str, device: str, root: str, split: str = "test", *, progress: ProgressCallback | None = None
) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` float32 for a whole CIFAR-10 split, read-only and shared.

    Computed once per (weights, data) and kept on disk by ``camlib.prediction_cache`` (``$CAMLIB_CACHE_DIR``, else
    ``~/.cache/camlib``), so a new process reads them instead of predicting again; this process keeps them in memory.
    The work runs in a process-wide builder thread, not in the session's script: this call waits for it and passes
    its progress ``(done, total)`` (images) to ``progress`` every ``BUILD_POLL_S``. A rerun or a closed tab ends the
    wait (Streamlit raises in ``progress``), never the build, so the next run finds it further on or done. Not an
    ``st.cache_*`` function: an element drawn inside a cached function would be replayed on every hit.

    Raises:
        CamlibError: from ``resolve_model``, ``get_cifar`` or ``camlib.prediction_cache.cached_predictions``.
    """
    loaded = resolve_model(model_key, device)
    data = get_cifar(root, split)
    key = (model_key, device, root, split)
    with _BUILDS_LOCK:
        future = _BUILDS.get(key)
        if future is None:

            def report(done: int, total: int) -> None:
                _BUILD_STATE[key] = (done, total)

            future = _BUILDER.submit(
                cached_predictions,
                loaded.model,
                loaded.spec.preprocessing,
                data.images,
                data_key=f"cifar10 {split}",
                progress=report,
            )
            _BUILDS[key] = future
            future.add_done_callback(lambda _done: _forget_build(key))
    while True:
        try:
            return future.result(timeout=BUILD_POLL_S)
        except FutureTimeout:
            if progress is not None and (state := _BUILD_STATE.get(key)) is not None:
                progress(*state)


BUILD_POLL_S = 0.25  # how often a waiting page hears of the builder's progress, s
_BUILDER = ThreadPoolExecutor(max_workers=4, thread_name_prefix="camlib-predictions")  # a hit never waits on a build
_BUILDS: dict[tuple[str, str, str, str], Future] = {}  # (model, device, root, split) -> the running lookup or build
_BUILD_STATE: dict[tuple[str, str, str, str], tuple[int, int]] = {}
_BUILDS_LOCK = threading.Lock()


def _forget_build(key: tuple[str, str, str, str]) -> None:
    with _BUILDS_LOCK:
        _BUILDS.pop(key, None)
        _BUILD_STATE.pop(key, None)


@st.cache_data(max_entries=32, ttl=CACHE_TTL, show_spinner="Computing CAMs for this page...")
def gallery_cams(
    model_key: str, device: str, root: str, indices: tuple[int, ...], *, layer: str, method: str = "gradcam"
) -> tuple[np.ndarray, np.ndarray]:
    """CAM maps ``(n, 32, 32)`` of the predicted and of the true class for CIFAR-10 test images ``indices``."""
    loaded = resolve_model(model_key, device)
    data = get_cifar(root, "test")
    images = data.images[list(indices)]
    x = prepare_batch(images, loaded.spec.preprocessing).to(loaded.device)
    predicted = dataset_predictions(model_key, device, root)[list(indices)].argmax(axis=1).tolist()
    true = data.labels[list(indices)].tolist()
    for_predicted = compute_cams(loaded.model, x, [layer], method=method, class_idx=predicted).maps[layer]
    for_true = compute_cams(loaded.model, x, [layer], method=method, class_idx=true).maps[layer]
    return for_predicted, for_true
