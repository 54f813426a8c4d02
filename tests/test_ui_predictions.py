"""ui.gallery.predictions: the builder of a whole split's predictions, shared by every session."""

from __future__ import annotations

import threading
import warnings
from concurrent.futures import Future

import numpy as np
import pytest

from camlib.cifar import CLASS_NAMES, CifarData
from ui.gallery import predictions


class _DoneAtOnce:
    """An executor whose futures are finished when ``submit`` returns, as a build that ends before the caller adds its
    done callback (a prediction file read from disk, an error raised at once)."""

    def submit(self, function, *args, **kwargs) -> Future:
        future: Future = Future()
        try:
            future.set_result(function(*args, **kwargs))
        except Exception as error:  # noqa: BLE001 - handed to the caller through the future, as an executor does
            future.set_exception(error)
        return future


@pytest.mark.parametrize("fails", [False, True])
def test_a_build_finished_before_its_callback_is_added_does_not_hang(monkeypatch: pytest.MonkeyPatch, fails: bool):
    """``add_done_callback`` on a finished future runs the callback at once, in the caller's thread, which holds the
    builds' lock: the wait must end with the result (or the error), and the build be forgotten."""
    images = np.zeros((3, 32, 32, 3), np.uint8)
    data = CifarData(images, np.zeros(3, np.int64), CLASS_NAMES, "folder", "root", "test")
    expected = np.full((3, 10), 0.1, np.float32)

    def cached(*args, **kwargs) -> np.ndarray:
        if fails:
            raise ValueError("no predictions")
        return expected

    monkeypatch.setattr("ui.datasets.get_cifar", lambda root, split: data)
    monkeypatch.setattr("ui.models.resolve_model", lambda key, device: _Loaded())
    monkeypatch.setattr(predictions, "cached_predictions", cached)
    monkeypatch.setattr(predictions, "_BUILDER", _DoneAtOnce())
    outcome: list[object] = []

    def wait() -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                outcome.append(predictions.dataset_predictions("m", "cpu", "root"))
            except ValueError as error:
                outcome.append(error)

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "dataset_predictions deadlocked on its own lock"
    if fails:
        assert isinstance(outcome[0], ValueError)
    else:
        assert outcome[0] is expected
    assert predictions._BUILDS == {} and predictions._BUILD_STATE == {}


class _Loaded:
    model = None
    spec = type("Spec", (), {"preprocessing": None})()
