"""camlib.prediction_cache: whole-dataset predictions computed once, then read from disk.

Tiny seeded models on random 8x8 images; every test has its own cache directory and starts with an empty in-memory
cache, so "a new process" is ``clear_memory_cache()``. Forwards are counted by the model itself.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.pickles import WritesMarker
from torch import nn

from camlib import prediction_cache
from camlib.errors import NonFiniteError
from camlib.evaluation import predict_probabilities
from camlib.models import Preprocessing
from camlib.prediction_cache import (
    cached_predictions,
    clear_memory_cache,
    default_cache_dir,
    weights_digest,
)

PRE = Preprocessing(resize=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
N, BATCH = 10, 4  # three batches: 4 + 4 + 2


class CountingNet(nn.Module):
    """A seeded 10-class classifier that counts its forward passes (``forwards``) and can be told to wait."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.head = nn.Linear(4, 10)
        self.forwards = 0
        self.before_forward = None  # optional callable run at the start of each forward
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.before_forward is not None:
            self.before_forward(self.forwards)
        self.forwards += 1
        return self.head(torch.relu(self.conv(x)).mean(dim=(2, 3)))


def _images(seed: int = 0, n: int = N) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)


def _with_one_bit_changed(images: np.ndarray) -> np.ndarray:
    changed = images.copy()
    changed[7, 3, 4, 1] ^= 1
    return changed


@pytest.fixture(autouse=True)
def _fresh_memory():
    clear_memory_cache()
    yield
    clear_memory_cache()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "predictions"


def _predict(model: nn.Module, images: np.ndarray, cache_dir: Path, **kwargs) -> np.ndarray:
    options = {"data_key": "random test", "cache_dir": cache_dir, "batch_size": BATCH} | kwargs
    return cached_predictions(model, PRE, images, **options)


def _files(cache_dir: Path, suffix: str = ".npy") -> list[Path]:
    return sorted(cache_dir.glob(f"predictions-*{suffix}"))


# --- hits and misses -------------------------------------------------------------------------------------------------


def test_first_call_computes_and_stores_then_a_new_process_reads_without_a_forward(cache_dir: Path) -> None:
    model, images = CountingNet(), _images()
    first = _predict(model, images, cache_dir)
    assert model.forwards == 3
    np.testing.assert_array_equal(
        first, predict_probabilities(model, images, PRE, batch_size=BATCH)
    )  # exactly what it caches
    model.forwards = 0
    [array_file], [sidecar] = _files(cache_dir), _files(cache_dir, ".json")
    assert array_file.stem == sidecar.stem

    assert _predict(model, images, cache_dir) is first  # same process: from memory
    clear_memory_cache()  # a new process
    second = _predict(model, images, cache_dir)
    assert model.forwards == 0
    np.testing.assert_array_equal(second, first)
    assert second.dtype == np.float32 and second.shape == (N, 10) and not second.flags.writeable
    assert np.load(array_file, allow_pickle=False).tobytes() == first.tobytes()


def test_the_sidecar_describes_the_key(cache_dir: Path) -> None:
    model, images = CountingNet(), _images()
    _predict(model, images, cache_dir)
    [sidecar] = _files(cache_dir, ".json")
    described = json.loads(sidecar.read_text())
    assert sidecar.name == f"predictions-{described['key']}.json"
    assert described["weights_sha256"] == weights_digest(model)
    assert described["images_sha256"] == hashlib.sha256(images.tobytes()).hexdigest()
    assert described["images_shape"] == [N, 8, 8, 3] and described["num_classes"] == 10
    assert described["data_key"] == "random test" and described["format"] == prediction_cache.PREDICTION_FORMAT
    assert described["preprocessing"] == {
        "resize": 8,
        "crop": 8,
        "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25],
        "interpolation": "bilinear",
    }


def test_a_weight_change_is_another_key_and_is_recomputed(cache_dir: Path) -> None:
    model, images = CountingNet(), _images()
    before = _predict(model, images, cache_dir)
    digest = weights_digest(model)
    with torch.no_grad():
        model.head.bias[3] += 1.0  # in place: the same tensor objects, a new version counter
    assert weights_digest(model) != digest
    clear_memory_cache()
    model.forwards = 0
    after = _predict(model, images, cache_dir)
    assert model.forwards == 3
    np.testing.assert_array_equal(after, predict_probabilities(model, images, PRE, batch_size=BATCH))
    assert not np.array_equal(after, before)
    assert len(_files(cache_dir)) == 2

    restored = copy.deepcopy(model)  # other objects with the same weights: the same key, a hit
    restored.forwards = 0
    assert weights_digest(restored) == weights_digest(model)
    clear_memory_cache()
    np.testing.assert_array_equal(_predict(restored, images, cache_dir), after)
    assert restored.forwards == 0


def test_load_state_dict_changes_the_digest() -> None:
    model, other = CountingNet(0), CountingNet(1)
    digest = weights_digest(model)
    assert weights_digest(other) != digest
    model.load_state_dict(other.state_dict())
    assert weights_digest(model) == weights_digest(other)


def test_the_architecture_is_part_of_the_digest() -> None:
    """The same state dict in a module that computes something else (another padding) is another key."""
    model = CountingNet()
    other = copy.deepcopy(model)
    other.conv.padding = (0, 0)
    assert model.state_dict().keys() == other.state_dict().keys()
    assert weights_digest(other) != weights_digest(model)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param(lambda images: {"images": _with_one_bit_changed(images)}, id="one bit of one pixel"),
        pytest.param(lambda images: {"images": images[:-1]}, id="fewer images"),
        pytest.param(lambda images: {"data_key": "another label"}, id="data key"),
        pytest.param(lambda images: {"preprocessing": Preprocessing(resize=8, crop=8)}, id="preprocessing"),
    ],
)
def test_a_data_change_is_recomputed(cache_dir: Path, change) -> None:
    model, images = CountingNet(), _images()
    _predict(model, images, cache_dir)
    clear_memory_cache()
    model.forwards = 0
    options = {"images": images, "preprocessing": PRE, "data_key": "random test"} | change(images)
    result = cached_predictions(
        model,
        options["preprocessing"],
        options["images"],
        data_key=options["data_key"],
        cache_dir=cache_dir,
        batch_size=BATCH,
    )
    assert model.forwards == 3
    np.testing.assert_array_equal(
        result, predict_probabilities(model, options["images"], options["preprocessing"], batch_size=BATCH)
    )
    assert len(_files(cache_dir)) == 2


def test_a_read_only_array_is_fingerprinted_once_a_writable_one_every_call(cache_dir: Path, monkeypatch) -> None:
    model, images = CountingNet(), _images()
    _predict(model, images, cache_dir)
    images[0, 0, 0] ^= 0xFF  # a writable array changed in place: another key
    model.forwards = 0
    _predict(model, images, cache_dir)
    assert model.forwards == 3

    frozen = _images(1)
    frozen.setflags(write=False)
    hashed = []

    class CountingHashlib:
        @staticmethod
        def sha256(data=b""):
            hashed.append(getattr(data, "nbytes", len(data)))
            return hashlib.sha256(data)

    monkeypatch.setattr(prediction_cache, "hashlib", CountingHashlib)
    for _ in range(3):
        clear_memory_cache()
        _predict(model, frozen, cache_dir)
    assert hashed.count(frozen.nbytes) == 1


# --- files that are not to be trusted --------------------------------------------------------------------------------


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header that claims ``shape`` float32, with no data after it."""
    header = f"{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}".ljust(117).encode() + b"\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header


def _corruptions(tmp_path: Path) -> dict[str, object]:
    """name -> a function(array_path, sidecar_path) that spoils a stored result."""

    def save(array: np.ndarray, **kwargs):
        return lambda path, _sidecar: np.save(path, array, **kwargs)

    def sidecar(text: str):
        return lambda _path, side: side.write_text(text)

    def other_classes(_path: Path, side: Path) -> None:
        side.write_text(json.dumps(json.loads(side.read_text()) | {"num_classes": 20}))

    rows = np.full((N, 10), 0.1, np.float32)
    marker = WritesMarker(tmp_path / "unpickled")
    return {
        "truncated": lambda path, _sidecar: path.write_bytes(path.read_bytes()[:-17]),
        "empty": lambda path, _sidecar: path.write_bytes(b""),
        "garbage": lambda path, _sidecar: path.write_bytes(bytes(range(256)) * 2),
        "no array": lambda path, _sidecar: path.unlink(),
        "header only": lambda path, _sidecar: path.write_bytes(_npy_header_only((N, 10))),
        "huge shape": lambda path, _sidecar: path.write_bytes(_npy_header_only((10**10, 10))),
        "wrong shape": save(rows[:-1]),
        "more classes": save(np.full((N, 20), 0.05, np.float32)),
        "float64": save(rows.astype(np.float64)),
        "NaN": save(np.where(np.eye(N, 10) > 0, np.nan, rows).astype(np.float32)),
        "negative": save(rows - 0.2),
        "rows not summing to 1": save(rows * 0.5),
        "fortran order": save(np.asfortranarray(rows)),
        "pickled objects": save(np.array([marker] * N, dtype=object), allow_pickle=True),
        "plain pickle": lambda path, _sidecar: path.write_bytes(pickle.dumps(marker)),
        "no sidecar": lambda _path, side: side.unlink(),
        "sidecar of another key": sidecar(json.dumps({"key": "0" * 64, "num_classes": 10})),
        "sidecar with other classes": other_classes,
        "sidecar garbage": sidecar("{not json"),
        "sidecar a list": sidecar("[1, 2]"),
    }


@pytest.mark.parametrize("corruption", list(_corruptions(Path("/nonexistent"))))
def test_a_corrupt_or_mismatched_file_is_recomputed_never_trusted(cache_dir: Path, tmp_path: Path, corruption) -> None:
    model, images = CountingNet(), _images()
    good = _predict(model, images, cache_dir)
    [array_file], [sidecar] = _files(cache_dir), _files(cache_dir, ".json")
    _corruptions(tmp_path)[corruption](array_file, sidecar)
    clear_memory_cache()
    model.forwards = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # recomputing is silent: no warning either
        again = _predict(model, images, cache_dir)
    assert model.forwards == 3
    np.testing.assert_array_equal(again, good)
    assert not (tmp_path / "unpickled").exists()
    clear_memory_cache()  # and the file was rewritten: the next new process reads it
    model.forwards = 0
    np.testing.assert_array_equal(_predict(model, images, cache_dir), good)
    assert model.forwards == 0


def test_files_are_read_without_pickle(cache_dir: Path, monkeypatch) -> None:
    model, images = CountingNet(), _images()
    _predict(model, images, cache_dir)
    calls = []
    original = np.load

    def load(*args, **kwargs):
        calls.append(kwargs.get("allow_pickle"))
        return original(*args, **kwargs)

    def no_pickle(*_args, **_kwargs):
        raise AssertionError("the prediction cache unpickled something")

    monkeypatch.setattr(np, "load", load)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "load", no_pickle)
    clear_memory_cache()
    _predict(model, images, cache_dir)
    assert calls == [False]


# --- writing ---------------------------------------------------------------------------------------------------------


def test_a_failed_write_leaves_no_partial_file_and_still_returns(cache_dir: Path, monkeypatch) -> None:
    """The array goes to a temporary file and is renamed into place: a write that dies half-way leaves no file under
    the final name and no temporary file; the predictions are still returned, with a warning."""
    model, images = CountingNet(), _images()
    original = np.save

    def dies_half_way(file, array, **kwargs):
        file.write(b"\x93NUMPY\x01\x00")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", dies_half_way)
    with pytest.warns(RuntimeWarning, match="cannot write the prediction cache .*No space left on device"):
        result = _predict(model, images, cache_dir)
    np.testing.assert_array_equal(result, predict_probabilities(model, images, PRE, batch_size=BATCH))
    assert list(cache_dir.iterdir()) == []

    monkeypatch.setattr(np, "save", original)
    clear_memory_cache()
    _predict(model, images, cache_dir)
    assert len(_files(cache_dir)) == 1 and not list(cache_dir.glob(".*.tmp"))


def test_a_stored_file_is_replaced_not_rewritten_in_place(cache_dir: Path) -> None:
    """A reader holding the old file keeps reading the whole old file (os.replace gives the name a new inode)."""
    model, images = CountingNet(), _images()
    _predict(model, images, cache_dir)
    [array_file] = _files(cache_dir)
    array_file.write_bytes(b"spoilt")
    inode = array_file.stat().st_ino
    with array_file.open("rb") as reader:
        clear_memory_cache()
        _predict(model, images, cache_dir)
        assert reader.read() == b"spoilt"
    assert array_file.stat().st_ino != inode


def test_an_unwritable_directory_warns_and_this_process_still_computes_once(tmp_path: Path) -> None:
    model, images = CountingNet(), _images()
    blocked = tmp_path / "a file"
    blocked.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="set CAMLIB_CACHE_DIR to a writable directory"):
        first = _predict(model, images, blocked / "predictions")
    model.forwards = 0
    assert _predict(model, images, blocked / "predictions") is first
    assert model.forwards == 0


def test_the_directory_keeps_the_most_recently_used_files(cache_dir: Path) -> None:
    model = CountingNet()
    digests = [hashlib.sha256(_images(seed).tobytes()).hexdigest() for seed in range(6)]

    def kept() -> set[str]:
        return {json.loads(p.read_text())["images_sha256"] for p in _files(cache_dir, ".json")}

    def write(seed: int) -> None:
        _predict(model, _images(seed), cache_dir, max_files=3)
        for path in _files(cache_dir):  # the file just written (or used) gets an old, distinct time: order is exact
            if path.stat().st_mtime > 2_000_000:
                os.utime(path, (1_000_000 + 10 * seed, 1_000_000 + 10 * seed))

    for seed in range(5):
        write(seed)
    assert len(_files(cache_dir)) == 3 and len(_files(cache_dir, ".json")) == 3
    assert kept() == set(digests[2:5])

    clear_memory_cache()  # a hit makes a file the most recently used: it survives the next pruning
    _predict(model, _images(2), cache_dir, max_files=3)
    write(5)
    assert kept() == {digests[2], digests[4], digests[5]}


def test_pruning_removes_orphan_sidecars_and_stale_temporary_files(cache_dir: Path) -> None:
    cache_dir.mkdir(parents=True)
    orphan = cache_dir / f"predictions-{'1' * 64}.json"
    orphan.write_text("{}")
    stale, fresh = cache_dir / ".predictions-x.npy.a.tmp", cache_dir / ".predictions-x.npy.b.tmp"
    stale.write_bytes(b"x")
    fresh.write_bytes(b"x")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    other = cache_dir / "notes.txt"
    other.write_text("not ours")
    _predict(CountingNet(), _images(), cache_dir)
    assert not orphan.exists() and not stale.exists()
    assert fresh.exists() and other.exists()


# --- progress and concurrency ----------------------------------------------------------------------------------------


def test_progress_reports_images_between_batches_and_nothing_on_a_hit(cache_dir: Path) -> None:
    model, images = CountingNet(), _images()
    calls = []
    _predict(model, images, cache_dir, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(4, 10), (8, 10), (10, 10)]
    clear_memory_cache()
    _predict(model, images, cache_dir, progress=lambda done, total: calls.append((done, total)))
    assert len(calls) == 3


def test_a_raising_progress_cancels_and_writes_nothing(cache_dir: Path) -> None:
    model, images = CountingNet(), _images()

    def cancel(done: int, total: int) -> None:
        if done >= 8:
            raise KeyboardInterrupt  # e.g. Streamlit's rerun request, raised by the bar's next update

    with pytest.raises(KeyboardInterrupt):
        _predict(model, images, cache_dir, progress=cancel)
    assert not cache_dir.exists() or not list(cache_dir.iterdir())
    assert model.forwards == 2
    _predict(model, images, cache_dir)  # nothing left locked
    assert len(_files(cache_dir)) == 1


def test_concurrent_callers_compute_once_and_the_waiter_sees_progress(cache_dir: Path) -> None:
    """Ordering, not timing: the builder pauses before its second batch until the waiter has seen its progress."""
    model, images = CountingNet(), _images()
    paused, seen_progress = threading.Event(), threading.Event()

    def before_forward(done: int) -> None:
        if done == 1:
            paused.set()
            assert seen_progress.wait(30), "the waiter never saw the builder's progress"

    model.before_forward = before_forward
    results, seen = {}, []

    def report(done: int, total: int) -> None:
        seen.append((done, total))
        seen_progress.set()

    builder = threading.Thread(target=lambda: results.setdefault("builder", _predict(model, images, cache_dir)))
    builder.start()
    assert paused.wait(30)
    waiter = threading.Thread(
        target=lambda: results.setdefault("waiter", _predict(model, images, cache_dir, progress=report))
    )
    waiter.start()
    builder.join(60)
    waiter.join(60)
    assert seen[0] == (4, 10)
    assert model.forwards == 3  # one build
    assert results["waiter"] is results["builder"]


def test_non_finite_predictions_raise_and_are_not_stored(cache_dir: Path) -> None:
    model, images = CountingNet(), _images()
    with torch.no_grad():
        model.head.bias[0] = float("nan")
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        _predict(model, images, cache_dir)
    assert not cache_dir.exists() or not list(cache_dir.iterdir())


# --- where ---------------------------------------------------------------------------------------------------------


def test_the_cache_directory_follows_the_environment(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("CAMLIB_CACHE_DIR", str(tmp_path / "mine"))
    assert default_cache_dir() == tmp_path / "mine" / "predictions"
    model, images = CountingNet(), _images()
    cached_predictions(model, PRE, images, data_key="random test")
    assert len(list((tmp_path / "mine" / "predictions").glob("predictions-*.npy"))) == 1
    monkeypatch.delenv("CAMLIB_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "camlib" / "predictions"
