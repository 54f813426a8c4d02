"""Whole-dataset predictions computed once and kept on disk, keyed by the weights and the data.

Predictions that are the same for everyone (the Misclassification gallery's 10,000 test-set probabilities) cost a
full pass over the data. ``cached_predictions`` computes them once and stores them in a cache directory
(``$CAMLIB_CACHE_DIR/predictions``, else ``~/.cache/camlib/predictions``); every later call, in this process or in a
new one, reads them back. The file is keyed by a sha256 of everything the numbers depend on: the model's architecture
and weights, its preprocessing, the images (their bytes, shape and dtype), a caller's label for the data and
``PREDICTION_FORMAT``. Other weights or other data give another key, so another file.

Files are ``.npy`` arrays written with ``allow_pickle=False`` and read back with ``np.load(..., allow_pickle=False)``
(never unpickled), written atomically (a temporary file, then ``os.replace``), with a JSON sidecar describing the key.
A file that is corrupt, truncated, of the wrong shape or dtype, non-finite, or whose rows are not probabilities is
recomputed and replaced, never trusted. The directory keeps the ``max_files`` most recently used files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from torch import nn

from camlib.cam import ProgressCallback
from camlib.contracts import require_array, require_int, require_model
from camlib.errors import InputError, NonFiniteError
from camlib.evaluation import predict_probabilities
from camlib.models import Preprocessing
from camlib.storage import write_durably

# Bump when the numbers ``predict_probabilities`` returns for the same model, preprocessing and images change
# (e.g. a new resize), so that files written by older code are recomputed, not read.
PREDICTION_FORMAT = 1
MAX_FILES = 16  # files kept in the cache directory (about 400 KB each for CIFAR-10's test split)
_MAX_LOADED = 8  # arrays kept in memory in this process (the app asks on every rerun)
_ROW_SUM_TOLERANCE = 1e-3  # float32 softmax rows sum to 1 within ~1e-6; anything further off is not ours
_STALE_TEMP_S = 3600.0  # a temporary file this old belongs to a writer that died; newer ones may be in use
_PREFIX = "predictions-"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}

_state_lock = threading.Lock()  # guards the three memos below
_weights_memo: weakref.WeakKeyDictionary[nn.Module, tuple[tuple, str]] = weakref.WeakKeyDictionary()
_images_memo: dict[int, tuple[weakref.ref, str]] = {}
_loaded: OrderedDict[str, np.ndarray] = OrderedDict()
_building: dict[str, tuple[int, int]] = {}  # key -> latest (done, total) of a build in this process
# One build per key at a time in this process (a second session waits, then reads the file); striped, so bounded.
_build_locks = tuple(threading.Lock() for _ in range(16))


def default_cache_dir() -> Path:
    """Where prediction files go: ``$CAMLIB_CACHE_DIR/predictions``, else ``~/.cache/camlib/predictions``."""
    base = os.environ.get("CAMLIB_CACHE_DIR") or Path.home() / ".cache" / "camlib"
    return Path(base) / "predictions"


def weights_digest(model: nn.Module) -> str:
    """sha256 (hex) of ``model``'s architecture (class and ``repr``) and of every ``state_dict`` entry (name, dtype,
    shape and bytes, on the CPU, in the state dict's order).

    Computed once per model object and reused while its tensors are the same objects with the same torch version
    counters, so an in-place change of a weight (``load_state_dict``, ``p.add_()``) gives a new digest.

    Raises:
        InputError: ``model`` is not a ``torch.nn.Module`` with weights (e.g. on the ``meta`` device).
    """
    require_model(model)
    state = model.state_dict()
    # data_ptr and _version change when a tensor is replaced or modified in place (state_dict's detached tensors
    # share their parameter's version counter), so the memo cannot return a stale digest.
    signature = tuple(
        (name, value.data_ptr(), value._version) if isinstance(value, torch.Tensor) else (name, repr(value))
        for name, value in state.items()
    )
    with _state_lock:
        memo = _weights_memo.get(model)
    if memo is not None and memo[0] == signature:
        return memo[1]
    digest = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}\n{model!r}\n".encode())
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):  # extra state: whatever the module chose to save
            digest.update(f"{name} {value!r}\n".encode())
            continue
        tensor = value.detach()
        tensor = tensor.dequantize() if tensor.is_quantized else tensor
        digest.update(f"{name} {tensor.dtype} {tuple(tensor.shape)}\n".encode())
        digest.update(tensor.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    with _state_lock:
        _weights_memo[model] = (signature, digest.hexdigest())
    return digest.hexdigest()


def cached_predictions(
    model: nn.Module,
    preprocessing: Preprocessing,
    images: np.ndarray,
    *,
    data_key: str,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
    batch_size: int = 500,
    max_files: int = MAX_FILES,
) -> np.ndarray:
    """``predict_probabilities(model, images, preprocessing)``, computed once and then read from the cache.

    Args:
        model: the classifier (any device; run under ``camlib.guard.eval_mode``, so a shared model stays as it was).
        preprocessing: the model's preprocessing (part of the key).
        images: uint8 RGB images ``(N, H, W, 3)``, ``N >= 1``. A read-only array (``flags.writeable`` False, e.g.
            the app's CIFAR-10 split) is fingerprinted once per object: do not change it through another view.
        data_key: a label for the data, e.g. ``"cifar10 test"``: part of the key and written to the sidecar.
        cache_dir: the directory of the files (created if missing); default ``default_cache_dir()``.
        progress: ``callback(done, total)`` in images, called between batches while predictions are computed (not on
            a hit), and while another thread of this process computes the same ones; it may raise to cancel (the
            exception propagates and nothing is written).
        batch_size: images per forward pass.
        max_files: prediction files kept in ``cache_dir``; the least recently used beyond this are deleted.

    Returns:
        float32 probabilities ``(N, num_classes)``, rows summing to 1, read-only (shared with later calls).
        A directory that cannot be written only costs speed: a ``RuntimeWarning`` says so and the result is
        returned (and kept in this process's memory).

    Raises:
        InputError: an argument violates the above.
        NonFiniteError: the model's outputs contain NaN or Inf (nothing is cached).
    """
    require_array(images, "images", dtypes=(np.uint8,), ndim=4, channels=3, expected="uint8 RGB images (N, H, W, 3)")
    require_model(model)
    if not isinstance(preprocessing, Preprocessing):
        raise InputError(f"preprocessing must be a camlib.models.Preprocessing, got {type(preprocessing).__name__}")
    if not isinstance(data_key, str):
        raise InputError(f"data_key must be a str naming the data (e.g. 'cifar10 test'), got {type(data_key).__name__}")
    if cache_dir is not None and not isinstance(cache_dir, str | os.PathLike):
        raise InputError(f"cache_dir must be a directory path or None, got {type(cache_dir).__name__}")
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a callable (done, total) or None, got {type(progress).__name__}")
    batch_size = require_int(batch_size, "batch_size", minimum=1)
    max_files = require_int(max_files, "max_files", minimum=1)

    fields = {
        "format": PREDICTION_FORMAT,
        "model": f"{type(model).__module__}.{type(model).__qualname__}",
        "weights_sha256": weights_digest(model),
        "preprocessing": dataclasses.asdict(preprocessing),
        "data_key": data_key,
        "images_sha256": _images_digest(images),
        "images_shape": list(images.shape),
    }
    key = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()
    if (hit := _remembered(key)) is not None:
        return hit
    directory = Path(default_cache_dir() if cache_dir is None else cache_dir)
    lock = _build_locks[int(key[:8], 16) % len(_build_locks)]
    while not lock.acquire(timeout=0.25):  # another thread builds these (or others on the same stripe)
        if progress is not None and (state := _building.get(key)) is not None:
            progress(*state)
    try:
        probabilities = _remembered(key)
        if probabilities is None:
            probabilities = _read(directory, key, len(images))
        if probabilities is None:
            probabilities = _build(model, images, preprocessing, key, batch_size=batch_size, progress=progress)
            _write(directory, key, probabilities, {**fields, "key": key}, max_files=max_files)
        return _remember(key, probabilities)  # before releasing: a waiter then gets this very array
    finally:
        lock.release()


def clear_memory_cache() -> None:
    """Forget the predictions kept in this process's memory (the files stay): the next call reads the disk, as a
    new process would."""
    with _state_lock:
        _loaded.clear()


# --- internals ------------------------------------------------------------------------------------------------------


def _images_digest(images: np.ndarray) -> str:
    """sha256 (hex) of the images' bytes; memoised per object for read-only arrays (about 30 ms per 30 MB)."""
    if images.flags.writeable:
        return hashlib.sha256(np.ascontiguousarray(images)).hexdigest()
    with _state_lock:
        memo = _images_memo.get(id(images))
    if memo is not None and memo[0]() is images:
        return memo[1]
    digest = hashlib.sha256(np.ascontiguousarray(images)).hexdigest()
    ident = id(images)
    with _state_lock:
        _images_memo[ident] = (weakref.ref(images, lambda _ref: _images_memo.pop(ident, None)), digest)
    return digest


def _remembered(key: str) -> np.ndarray | None:
    with _state_lock:
        if key in _loaded:
            _loaded.move_to_end(key)
        return _loaded.get(key)


def _remember(key: str, probabilities: np.ndarray) -> np.ndarray:
    with _state_lock:
        _loaded[key] = probabilities
        _loaded.move_to_end(key)
        while len(_loaded) > _MAX_LOADED:
            _loaded.popitem(last=False)
    return probabilities


def _paths(directory: Path, key: str) -> tuple[Path, Path]:
    return directory / f"{_PREFIX}{key}.npy", directory / f"{_PREFIX}{key}.json"


def _build(
    model: nn.Module,
    images: np.ndarray,
    preprocessing: Preprocessing,
    key: str,
    *,
    batch_size: int,
    progress: ProgressCallback | None,
) -> np.ndarray:
    """The predictions, computed; progress is published for other threads waiting on the same key."""

    def report(done: int, total: int) -> None:
        _building[key] = (done, total)
        if progress is not None:
            progress(done, total)

    try:
        probabilities = predict_probabilities(model, images, preprocessing, batch_size=batch_size, progress=report)
    finally:
        _building.pop(key, None)
    if _invalid(probabilities, len(images)):
        raise NonFiniteError(
            f"the model's predictions for {len(images):,} images contain NaN or Inf; check the model's weights"
        )
    probabilities.setflags(write=False)
    return probabilities


def _invalid(probabilities: object, rows: int, classes: int | None = None) -> bool:
    """Whether ``probabilities`` is not what ``_build`` returns: float32 ``(rows, classes)`` probability rows."""
    return (
        not isinstance(probabilities, np.ndarray)
        or probabilities.dtype != np.float32
        or probabilities.ndim != 2
        or probabilities.shape[0] != rows
        or probabilities.shape[1] < 1
        or (classes is not None and probabilities.shape[1] != classes)
        or not np.isfinite(probabilities).all()
        or probabilities.min() < 0
        or probabilities.max() > 1
        or np.abs(probabilities.sum(axis=1, dtype=np.float64) - 1).max() > _ROW_SUM_TOLERANCE
    )


def _read(directory: Path, key: str, rows: int) -> np.ndarray | None:
    """The stored predictions for ``key``, or None when there are none or they fail any check (then they are
    recomputed and overwritten)."""
    array_path, sidecar_path = _paths(directory, key)
    try:
        sidecar = json.loads(sidecar_path.read_text(encoding="utf-8"))
        classes = sidecar["num_classes"] if isinstance(sidecar, dict) and sidecar.get("key") == key else None
        if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
            return None
        with array_path.open("rb") as file:  # check the header before np.load allocates what it claims
            version = np.lib.format.read_magic(file)
            if version not in _HEADER_READERS:
                return None
            shape, fortran_order, dtype = _HEADER_READERS[version](file)
        if shape != (rows, classes) or fortran_order or dtype != np.dtype("<f4"):
            return None
        probabilities = np.load(array_path, allow_pickle=False)
    except (OSError, ValueError, KeyError, TypeError, EOFError):  # missing, unreadable, truncated or not ours
        return None
    if _invalid(probabilities, rows, classes):
        return None
    with contextlib.suppress(OSError):  # best effort: a read-only cache still serves hits, only its order ages
        os.utime(array_path)
    probabilities.setflags(write=False)
    return probabilities


def _write(directory: Path, key: str, probabilities: np.ndarray, fields: dict, *, max_files: int) -> None:
    """Store atomically (array, then sidecar; a reader needs both), then keep the ``max_files`` newest files."""
    array_path, sidecar_path = _paths(directory, key)
    sidecar = {
        **fields,
        "num_classes": probabilities.shape[1],
        "dtype": "float32",
        "computed_by": "camlib.evaluation.predict_probabilities",
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        directory.mkdir(parents=True, exist_ok=True)
        write_durably(array_path, lambda file: np.save(file, probabilities, allow_pickle=False))
        write_durably(sidecar_path, lambda file: file.write(json.dumps(sidecar, indent=1).encode()))
        _prune(directory, max_files)
    except OSError as error:
        warnings.warn(
            f"cannot write the prediction cache in {directory} ({error}); predictions will be recomputed in each new "
            "process: set CAMLIB_CACHE_DIR to a writable directory",
            RuntimeWarning,
            stacklevel=3,
        )


def _prune(directory: Path, max_files: int) -> None:
    """Delete all but the ``max_files`` most recently used prediction files, sidecars without an array, and
    temporary files left by writers that died."""
    arrays = sorted(directory.glob(f"{_PREFIX}*.npy"), key=_mtime, reverse=True)
    doomed = arrays[max_files:]
    kept = {path.with_suffix(".json") for path in arrays[:max_files]}
    doomed += [path for path in directory.glob(f"{_PREFIX}*.json") if path not in kept]
    now = time.time()
    doomed += [path for path in directory.glob(f".{_PREFIX}*.tmp") if now - _mtime(path) > _STALE_TEMP_S]
    for path in doomed:
        with contextlib.suppress(FileNotFoundError):  # another process pruned it first
            path.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # removed meanwhile: oldest
        return 0.0
