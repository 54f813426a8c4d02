"""Tests of camlib.evaluation: confusion matrices, per-class accuracy, flip reports and locked batched predictions."""

from __future__ import annotations

import copy
import dataclasses
import threading

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix as sklearn_confusion_matrix
from torch import nn

from camlib.cifar_models import build_cifar_model
from camlib.errors import CamlibError
from camlib.evaluation import FlipReport, confusion_matrix, flip_report, per_class_accuracy, predict_probabilities
from camlib.guard import model_lock
from camlib.models import MODELS, prepare_batch

CIFAR = MODELS["cifar10_resnet20"].preprocessing

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# --- confusion matrix and per-class accuracy -------------------------------------------------------------------------


def test_confusion_matrix_hand_computed() -> None:
    labels = np.array([0, 0, 1, 2, 2, 2])
    predictions = np.array([0, 1, 1, 2, 0, 2])
    matrix = confusion_matrix(labels, predictions, 4)
    assert matrix.dtype == np.int64
    assert matrix.tolist() == [
        [1, 1, 0, 0],
        [0, 1, 0, 0],
        [1, 0, 2, 0],
        [0, 0, 0, 0],
    ]  # rows: true class; columns: predicted class; class 3 has no images
    assert matrix.sum() == len(labels)


def test_confusion_matrix_accepts_lists_and_empty_input() -> None:
    assert confusion_matrix([1, 1], [0, 1], 2).tolist() == [[0, 0], [1, 1]]
    empty = confusion_matrix(np.array([], np.int64), np.array([], np.int64), 3)
    assert empty.shape == (3, 3) and not empty.any()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confusion_matrix_equals_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, 500)
    predictions = np.where(rng.random(500) < 0.6, labels, rng.integers(0, 10, 500))
    expected = sklearn_confusion_matrix(labels, predictions, labels=list(range(10)))
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 10), expected)


def test_per_class_accuracy_hand_computed_with_an_empty_class() -> None:
    matrix = confusion_matrix(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 4)
    accuracy = per_class_accuracy(matrix)
    np.testing.assert_allclose(accuracy, [0.5, 1.0, 2 / 3, 0.0])
    assert np.isfinite(accuracy).all()


def test_per_class_accuracy_all_empty_is_zero_not_nan() -> None:
    accuracy = per_class_accuracy(np.zeros((10, 10), np.int64))
    assert accuracy.shape == (10,) and not accuracy.any() and np.isfinite(accuracy).all()


def test_per_class_accuracy_is_sklearn_recall() -> None:
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 10, 400)
    predictions = np.where(rng.random(400) < 0.5, labels, rng.integers(0, 10, 400))
    recall = [((predictions == k) & (labels == k)).sum() / (labels == k).sum() for k in range(10)]
    np.testing.assert_allclose(per_class_accuracy(confusion_matrix(labels, predictions, 10)), recall)


@pytest.mark.parametrize("labels, predictions", [([-1], [0]), ([0], [-1]), ([3], [0]), ([0], [3])])
def test_confusion_matrix_rejects_out_of_range_classes(labels: list[int], predictions: list[int]) -> None:
    with pytest.raises(ValueError):
        confusion_matrix(np.array(labels), np.array(predictions), 3)


def test_confusion_matrix_rejects_different_lengths() -> None:
    with pytest.raises(ValueError):
        confusion_matrix(np.array([0, 1, 2]), np.array([1]), 3)


# --- flip report -----------------------------------------------------------------------------------------------------

ORIGINAL = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.2, 0.3, 0.5], [0.5, 0.25, 0.25]], np.float32)
AUGMENTED = np.array([[0.6, 0.3, 0.1], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]], np.float32)


def test_flip_report_hand_computed() -> None:
    report = flip_report(ORIGINAL, AUGMENTED)
    assert report.original_label.tolist() == [0, 1, 2, 0]
    assert report.augmented_label.tolist() == [0, 0, 2, 2]
    assert report.flipped.tolist() == [False, True, False, True]
    np.testing.assert_allclose(report.original_confidence, [0.7, 0.6, 0.5, 0.5])
    np.testing.assert_allclose(report.augmented_confidence, [0.6, 0.2, 0.5, 0.1])  # of the ORIGINAL label
    assert report.flip_rate == 0.5
    assert report.mean_confidence_drop == pytest.approx((0.1 + 0.4 + 0.0 + 0.4) / 4, abs=1e-6)
    assert isinstance(report.flip_rate, float) and isinstance(report.mean_confidence_drop, float)


def test_flip_report_of_identical_predictions() -> None:
    report = flip_report(ORIGINAL, ORIGINAL.copy())
    assert report.flip_rate == 0.0 and not report.flipped.any()
    assert report.mean_confidence_drop == 0.0


def test_flip_report_confidence_can_rise() -> None:
    report = flip_report(AUGMENTED[:1], ORIGINAL[:1])  # 0.6 -> 0.7 on class 0
    assert report.mean_confidence_drop == pytest.approx(-0.1, abs=1e-6)


def test_flip_report_empty_and_mismatched() -> None:
    empty = flip_report(np.zeros((0, 10), np.float32), np.zeros((0, 10), np.float32))
    assert empty.flip_rate == 0.0 and empty.mean_confidence_drop == 0.0 and empty.flipped.size == 0
    with pytest.raises(ValueError, match="same shape"):
        flip_report(ORIGINAL, AUGMENTED[:3])


def test_flip_report_is_frozen() -> None:
    report = flip_report(ORIGINAL, AUGMENTED)
    assert isinstance(report, FlipReport)
    with pytest.raises(dataclasses.FrozenInstanceError):
        report.flipped = np.zeros(4, bool)  # type: ignore[misc]


# --- predictions -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model() -> nn.Module:
    torch.manual_seed(0)
    model = build_cifar_model("resnet20")
    # non-trivial BatchNorm statistics, so that eval and train mode give different outputs
    with torch.no_grad():
        model.train()(torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 + 0.5)
    return model.eval()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (23, 32, 32, 3), dtype=np.uint8)


def _reference(model: nn.Module, images: np.ndarray) -> np.ndarray:
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        return torch.softmax(clone(prepare_batch(images, CIFAR)), dim=1).numpy()


def test_probabilities_are_softmax_of_the_logits(model: nn.Module, images: np.ndarray) -> None:
    probabilities = predict_probabilities(model, images, CIFAR)
    assert probabilities.shape == (23, 10) and probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-5)
    assert (probabilities >= 0).all()
    np.testing.assert_allclose(probabilities, _reference(model, images), rtol=1e-5, atol=1e-6)


def test_larger_images_are_resized_like_prepare_batch(model: nn.Module) -> None:
    big = np.random.default_rng(3).integers(0, 256, (4, 48, 40, 3), dtype=np.uint8)
    np.testing.assert_allclose(predict_probabilities(model, big, CIFAR), _reference(model, big), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("batch_size", [1, 7, 23, 500])
def test_batch_size_does_not_change_the_result(batch_size: int, model: nn.Module, images: np.ndarray) -> None:
    expected = predict_probabilities(model, images, CIFAR)
    np.testing.assert_allclose(
        predict_probabilities(model, images, CIFAR, batch_size=batch_size), expected, rtol=1e-5, atol=1e-6
    )


def test_prediction_leaves_the_model_as_it_was(model: nn.Module, images: np.ndarray, snapshot) -> None:
    model.train()  # e.g. a model someone is fine-tuning: modes must come back, BatchNorm stats must not move
    try:
        before = snapshot(model)
        grad_enabled = torch.is_grad_enabled()
        probabilities = predict_probabilities(model, images, CIFAR)
        before.assert_unchanged()
        assert torch.is_grad_enabled() == grad_enabled
        assert not torch.is_inference_mode_enabled()
        # eval-mode numbers although the model was in train mode
        np.testing.assert_allclose(probabilities, _reference(model, images), rtol=1e-5, atol=1e-6)
    finally:
        model.eval()


def test_read_only_input_is_accepted(model: nn.Module, images: np.ndarray) -> None:
    frozen = images.copy()
    frozen.setflags(write=False)
    np.testing.assert_array_equal(
        predict_probabilities(model, frozen, CIFAR), predict_probabilities(model, images, CIFAR)
    )


def _predict_in_thread(model: nn.Module, images: np.ndarray) -> tuple[threading.Thread, list, list]:
    results: list[np.ndarray] = []
    errors: list[BaseException] = []

    def work() -> None:
        try:
            results.append(predict_probabilities(model, images, CIFAR))
        except BaseException as error:  # reported by the caller, not swallowed
            errors.append(error)

    worker = threading.Thread(target=work, daemon=True)
    worker.start()
    return worker, results, errors


def test_prediction_runs_while_another_session_computes_a_cam(model: nn.Module, images: np.ndarray) -> None:
    """A Score-CAM held mid-way in another thread (its hooks were on this model a moment before) does not
    delay a prediction on the same eval-mode model, and the prediction equals the serial one."""
    from camlib.cam import compute_cams

    serial = predict_probabilities(model, images[:2], CIFAR)
    held, release = threading.Event(), threading.Event()

    def hold(done: int, _total: int) -> None:
        held.set()
        release.wait(timeout=120)

    x = prepare_batch(images[2:3], CIFAR)
    cam = threading.Thread(
        target=lambda: compute_cams(model, x, ["layer1"], method="scorecam", progress=hold), daemon=True
    )
    cam.start()
    try:
        assert held.wait(timeout=120)
        worker, results, errors = _predict_in_thread(model, images[:2])
        worker.join(timeout=120)
        assert not worker.is_alive() and cam.is_alive(), "the prediction waited for the CAM"
    finally:
        release.set()
        cam.join(timeout=120)
    assert not errors, errors
    np.testing.assert_allclose(results[0], serial, atol=1e-6, rtol=0)


def test_prediction_on_a_model_with_training_mode_modules_waits_for_the_lock(
    model: nn.Module, images: np.ndarray
) -> None:
    """Such a model must be switched to eval, which only happens under its lock: while another session holds it,
    the prediction waits, then gives the eval-mode result and restores the module's training flag."""
    serial = predict_probabilities(model, images[:2], CIFAR)
    first = next(m for m in model.modules() if m is not model)
    first.train(True)
    try:
        with model_lock(model):
            worker, results, errors = _predict_in_thread(model, images[:2])
            worker.join(timeout=0.5)
            assert worker.is_alive() and not results, "predict_probabilities switched modes under another's lock"
        worker.join(timeout=60)
        assert first.training
    finally:
        first.train(False)
    assert not worker.is_alive() and not errors, errors
    np.testing.assert_allclose(results[0], serial, atol=1e-6, rtol=0)


def test_concurrent_predictions_equal_serial_ones(model: nn.Module, images: np.ndarray) -> None:
    serial = [predict_probabilities(model, images[k::4], CIFAR) for k in range(4)]
    barrier = threading.Barrier(4)
    out: dict[int, np.ndarray] = {}

    def work(k: int) -> None:
        barrier.wait(timeout=30)
        out[k] = predict_probabilities(model, images[k::4], CIFAR, batch_size=3)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for k in range(4):
        np.testing.assert_allclose(out[k], serial[k], rtol=1e-5, atol=1e-6)


def test_no_images_give_an_empty_n_by_classes_array(model: nn.Module) -> None:
    assert predict_probabilities(model, np.zeros((0, 32, 32, 3), np.uint8), CIFAR).shape == (0, 10)


@pytest.mark.parametrize("bad", ["float01", "nchw"])
def test_images_outside_the_contract_are_refused(bad: str, model: nn.Module, images: np.ndarray) -> None:
    wrong = images.astype(np.float32) / 255 if bad == "float01" else np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    with pytest.raises(CamlibError):
        predict_probabilities(model, wrong, CIFAR)
