"""The gallery's model runs: a whole CIFAR-10 split's predictions, built once in a background thread and kept on disk,
and the CAMs of one gallery page."""

from __future__ import annotations

import threading
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout

import numpy as np
import streamlit as st

from camlib.cam import ProgressCallback, compute_cams
from camlib.models import prepare_batch
from camlib.prediction_cache import cached_predictions
from ui import datasets, jobs, models
from ui.stores import CACHE_TTL


def dataset_predictions(
    model_key: str, device: str, root: str, split: str = "test", *, progress: ProgressCallback | None = None
) -> np.ndarray:
    """Class probabilities ``(N, num_classes)`` float32 for a whole CIFAR-10 split, read-only and shared.

    Computed once per (weights, data) and kept on disk by ``camlib.prediction_cache`` (``$CAMLIB_CACHE_DIR``, else
    ``~/.cache/camlib``), so a new process reads them instead of predicting again; this process keeps them in memory.
    The work runs in a process-wide builder thread (a heavy job of ``ui.jobs``), not in the session's script: this
    call waits for it and passes its progress ``(done, total)`` (images) to ``progress`` every ``BUILD_POLL_S``. A
    rerun or a closed tab ends the wait (Streamlit raises in ``progress``), never the build, so the next run finds it
    further on or done. Not an ``st.cache_*`` function: an element drawn inside a cached function would be replayed
    on every hit.

    Raises:
        CamlibError: from ``resolve_model``, ``get_cifar`` or ``camlib.prediction_cache.cached_predictions``.
    """
    loaded = models.resolve_model(model_key, device)
    data = datasets.get_cifar(root, split)
    key = (model_key, device, root, split)
    with _BUILDS_LOCK:
        future = _BUILDS.get(key)
        if future is None:

            def report(done: int, total: int) -> None:
                _BUILD_STATE[key] = (done, total)

            def build() -> np.ndarray:
                with jobs.model_job(heavy=True):  # batches of 10,000 images
                    return cached_predictions(
                        loaded.model,
                        loaded.spec.preprocessing,
                        data.images,
                        data_key=f"cifar10 {split}",
                        progress=report,
                    )

            future = _BUILDER.submit(build)
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
# Reentrant: a build already done when its callback is added (a fast disk hit, an error at once) runs _forget_build
# at once, in this thread, which still holds the lock.
_BUILDS_LOCK = threading.RLock()


def _forget_build(key: tuple[str, str, str, str]) -> None:
    with _BUILDS_LOCK:
        _BUILDS.pop(key, None)
        _BUILD_STATE.pop(key, None)


@st.cache_data(max_entries=32, ttl=CACHE_TTL, show_spinner="Computing CAMs for this page...")
def gallery_cams(
    model_key: str, device: str, root: str, indices: tuple[int, ...], *, layer: str, method: str = "gradcam"
) -> tuple[np.ndarray, np.ndarray]:
    """CAM maps ``(n, 32, 32)`` of the predicted and of the true class for CIFAR-10 test images ``indices``.

    Raises:
        CamlibError: from ``resolve_model``, ``get_cifar``, ``dataset_predictions`` and ``camlib.cam.compute_cams``.
    """
    loaded = models.resolve_model(model_key, device)
    data = datasets.get_cifar(root, "test")
    images = data.images[list(indices)]
    x = prepare_batch(images, loaded.spec.preprocessing).to(loaded.device)
    predicted = dataset_predictions(model_key, device, root)[list(indices)].argmax(axis=1).tolist()
    true = data.labels[list(indices)].tolist()
    with jobs.model_job(heavy=True):  # a batch of a page's images, twice
        for_predicted = compute_cams(loaded.model, x, [layer], method=method, class_idx=predicted).maps[layer]
        for_true = compute_cams(loaded.model, x, [layer], method=method, class_idx=true).maps[layer]
    return for_predicted, for_true
