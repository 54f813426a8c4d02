"""camlib.targets and the engine's ``targets=``: every pytorch-grad-cam 1.5.7 target class gives the same maps through
camlib as through pytorch-grad-cam, for every method both libraries have; camlib's own targets against their formulas
or pytorch-grad-cam's; ``class_idx`` is bit-identical to its ``ClassTarget``s for every registered method; bad targets
are typed errors.

The quick tier runs narrow seeded networks at 32-64 px (a small CNN with a 10-class head, the same CNN with a one-logit
head, a small fully convolutional segmenter with a ``(B, C, H, W)`` score map, torchvision's ResNet-18 at 64 px); the
slow tier runs the reference zoo's full-size models at 224 px.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchvision
from helpers.models import seeded
from helpers.reference_zoo import (
    ATOL,
    FULL_SIZE,
    REFERENCE_CAMS,
    ZOO,
    assert_equal_up_to_eigen_sign,
    inplace_off,
    keep_as_produced,
    random_images,
)
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
    FinerWeightedTarget,
    SemanticSegmentationTarget,
)
from torch import nn

from camlib.cam import METHODS, CamResult, compute_cam_grid, compute_cams
from camlib.errors import ClassIndexError, InputError, MethodError, NonFiniteError, TargetError
from camlib.metrics import confidence_change
from camlib.targets import (
    BinaryTarget,
    ClassTarget,
    SigmoidTarget,
    SoftmaxTarget,
    class_of,
    class_targets,
    is_logit_target,
    target_scores,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32  # the narrow networks' input: their feature layer is 8 x 8
SAMPLES = 2  # noisy or integration samples of the sampling methods (the comparisons do not depend on it)
# The methods whose map depends on the target, in both libraries (Eigen-CAM, KPCA-CAM, FEM and Random-CAM read no
# target; FinerCAM builds its own target from an index and is compared through FinerWeightedTarget on Grad-CAM).
TARGET_METHODS = (
    "gradcam",
    "gradcam++",
    "xgradcam",
    "hirescam",
    "layercam",
    "gradcam_elementwise",
    "eigengradcam",
    "shapleycam",
    "scorecam",
    "ablationcam",
)


class _Cnn(nn.Module):
    """A narrow CNN: two convolutions (the last one's ReLU output, 16 x 8 x 8 at 32 px, is the explained layer),
    global average pooling and one Linear head of ``classes`` outputs."""

    def __init__(self, classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.Conv2d(16, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class _Segmenter(nn.Module):
    """A narrow fully convolutional segmenter: ``(B, 3, H, W) -> (B, classes, H, W)`` scores, or ``{"out": ...}``
    (torchvision's segmentation models' form) with ``as_dict``."""

    def __init__(self, classes: int = 3, as_dict: bool = False) -> None:
        super().__init__()
        self.as_dict = as_dict
        self.body = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
        )
        self.classifier = nn.Conv2d(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        scores = nn.functional.interpolate(self.classifier(self.body(x)), size=x.shape[-2:], mode="bilinear")
        return {"out": scores, "aux": scores.detach()} if self.as_dict else scores


@pytest.fixture(scope="module")
def cnn() -> nn.Module:
    return seeded(lambda: _Cnn(10), seed=3)


@pytest.fixture(scope="module")
def binary_cnn() -> nn.Module:
    return seeded(lambda: _Cnn(1), seed=4)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return random_images(2, SIZE, seed=11)


def _pgc_maps(model: nn.Module, x: torch.Tensor, layer: str, method: str, targets: list) -> np.ndarray:
    """pytorch-grad-cam's map of one layer for ``targets``, with the layer's output kept as produced (as camlib)."""
    module = dict(model.named_modules())[layer]
    with REFERENCE_CAMS[method](model=model, target_layers=[module]) as cam:
        handle = module.register_forward_hook(keep_as_produced)
        try:
            maps = cam(input_tensor=x, targets=targets)
        finally:
            handle.remove()
    model.zero_grad(set_to_none=True)
    return maps


def _assert_same_maps(ours: CamResult, layer: str, reference: np.ndarray, method: str) -> None:
    if method == "eigengradcam":  # an SVD's sign is arbitrary; camlib fixes it, pytorch-grad-cam does not
        assert_equal_up_to_eigen_sign(ours, layer, reference, reference.shape[-1])
    else:
        np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL)


def _other_classes(model: nn.Module, x: torch.Tensor) -> list[int]:
    """For each image a class that is not its argmax (the third-ranked one), so the target changes the map."""
    with torch.no_grad():
        return [int(k) for k in model(x).argsort(dim=1, descending=True)[:, 2]]


def _classifier_targets(kind: str, classes: list[int]) -> list:
    if kind == "logit":
        return [ClassifierOutputTarget(k) for k in classes]
    if kind == "softmax":
        return [ClassifierOutputSoftmaxTarget(k) for k in classes]
    if kind == "rest":
        return [ClassifierOutputReST(k) for k in classes]
    return [FinerWeightedTarget(k, [(k + 1) % 10, (k + 2) % 10], alpha=0.7) for k in classes]


CLASSIFIER_KINDS = ("logit", "softmax", "rest", "finer")


# --- pytorch-grad-cam's targets through both libraries --------------------------------------------------------------


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
@pytest.mark.parametrize("method", TARGET_METHODS)
def test_classifier_targets_give_pytorch_grad_cams_maps(cnn, images, method, kind):
    targets = _classifier_targets(kind, _other_classes(cnn, images))
    ours = compute_cams(cnn, images, ["features"], method=method, targets=targets, scorecam_batch_size=8)
    _assert_same_maps(ours, "features", _pgc_maps(cnn, images, "features", method, targets), method)
    with torch.no_grad():
        expected = torch.stack([t(o) for t, o in zip(targets, cnn(images))]).double().numpy()
    np.testing.assert_allclose(ours.scores, expected, rtol=1e-6)
    assert ours.scores.dtype == np.float64 and ours.scores.shape == (2,)


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
@pytest.mark.parametrize(
    # Score-CAM: one forward per channel of layer3 (256), ~6 s a case
    "method",
    ["gradcam", "gradcam++", "hirescam", "layercam", pytest.param("scorecam", marks=pytest.mark.slow)],
)
def test_classifier_targets_on_resnet18_at_64px(method, kind):
    model = inplace_off(seeded(lambda: torchvision.models.resnet18(weights=None), seed=0))
    x = random_images(2, 64, seed=64)
    targets = _classifier_targets(kind, _other_classes(model, x))
    ours = compute_cams(model, x, ["layer3"], method=method, targets=targets)
    _assert_same_maps(ours, "layer3", _pgc_maps(model, x, "layer3", method, targets), method)


@pytest.mark.slow
@pytest.mark.parametrize("kind", CLASSIFIER_KINDS)
@pytest.mark.parametrize("model_name", sorted(ZOO))
@pytest.mark.parametrize("method", ["gradcam", "layercam"])
def test_classifier_targets_on_the_full_size_zoo(model_name, method, kind):
    model = inplace_off(seeded(ZOO[model_name].build))
    x = random_images(2, FULL_SIZE, seed=FULL_SIZE)
    layer = ZOO[model_name].layers[0]
    targets = _classifier_targets(kind, _other_classes(model, x))
    ours = compute_cams(model, x, [layer], method=method, targets=targets)
    _assert_same_maps(ours, layer, _pgc_maps(model, x, layer, method, targets), method)


@pytest.mark.parametrize("kind", CLASSIFIER_KINDS[:2])
def test_sess_with_targets_gives_pytorch_grad_cams_map(cnn, images, kind):
    targets = _classifier_targets(kind, _other_classes(cnn, images))
    ours = compute_cams(cnn, images[:1], ["features"], method="sess", targets=targets[:1], n_samples=3)
    module = cnn.features
    with REFERENCE_CAMS["sess"](model=cnn, target_layers=[module], num_scales=3) as cam:
        handle = module.register_forward_hook(keep_as_produced)
        try:
            reference = cam(input_tensor=images[:1], targets=targets[:1])
        finally:
            handle.remove()
    np.testing.assert_allclose(ours.maps["features"], reference, atol=ATOL)


@pytest.mark.parametrize("positive", [True, False])
@pytest.mark.parametrize("method", TARGET_METHODS)
def test_binary_targets_on_a_one_logit_head_give_pytorch_grad_cams_maps(binary_cnn, images, method, positive):
    ours = compute_cams(binary_cnn, images, ["features"], method=method, targets=[BinaryTarget(positive)] * 2)
    reference = _pgc_maps(binary_cnn, images, "features", method, [BinaryClassifierOutputTarget(int(positive))] * 2)
    _assert_same_maps(ours, "features", reference, method)
    with torch.no_grad():
        logit = binary_cnn(images)[:, 0].double().numpy()
    np.testing.assert_allclose(ours.scores, logit if positive else -logit, rtol=1e-6)
    assert ours.class_idx is None and ours.logits.shape == (2, 1)


SEGMENTATION_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "scorecam", "ablationcam")


@pytest.fixture(scope="module")
def segmenter() -> nn.Module:
    return seeded(lambda: _Segmenter(), seed=5)


def _segmentation_targets(model: nn.Module, x: torch.Tensor) -> list[SemanticSegmentationTarget]:
    """pytorch-grad-cam's tutorial target: a category's scores summed over the pixels predicted as that category
    (each image's least frequent predicted category, so the mask is a part of the image)."""
    with torch.no_grad():
        predicted = model(x).argmax(dim=1).numpy()
    categories = [
        int(np.unique(p, return_counts=True)[0][np.unique(p, return_counts=True)[1].argmin()]) for p in predicted
    ]
    masks = [(predicted[b] == category).astype(np.float32) for b, category in enumerate(categories)]
    assert all(mask.any() for mask in masks)
    return [SemanticSegmentationTarget(category, mask) for category, mask in zip(categories, masks)]


@pytest.mark.parametrize("method", SEGMENTATION_METHODS)
def test_semantic_segmentation_target_on_a_score_map_gives_pytorch_grad_cams_maps(segmenter, images, method):
    targets = _segmentation_targets(segmenter, images)
    ours = compute_cams(segmenter, images, ["body"], method=method, targets=targets, scorecam_batch_size=8)
    np.testing.assert_allclose(ours.maps["body"], _pgc_maps(segmenter, images, "body", method, targets), atol=ATOL)
    with torch.no_grad():
        expected = [float(t(o)) for t, o in zip(targets, segmenter(images))]
    np.testing.assert_allclose(ours.scores, expected, rtol=1e-6)
    assert ours.class_idx is None and ours.logits is None


@pytest.mark.parametrize("method", SEGMENTATION_METHODS)
def test_a_dict_output_with_a_target_reading_out_gives_the_tensor_models_maps(segmenter, images, method):
    as_dict = seeded(lambda: _Segmenter(as_dict=True), seed=5)
    targets = _segmentation_targets(segmenter, images)
    reading = [lambda out, t=t: t(out["out"]) for t in targets]
    ours = compute_cams(as_dict, images, ["body"], method=method, targets=reading, scorecam_batch_size=8)
    reference = _pgc_maps(segmenter, images, "body", method, targets)  # pytorch-grad-cam takes tensor outputs only
    np.testing.assert_allclose(ours.maps["body"], reference, atol=ATOL)


class _PerImageDicts(nn.Module):
    """A model whose output is a list of per-image dicts (a detector's form), ``[{"scores": logits_b}]``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{"scores": row, "labels": row.argmax()} for row in self.inner(x)]


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "scorecam", "ablationcam", "smoothgradcam++", "sscam"])
def test_a_list_of_per_image_outputs_gives_the_class_maps(cnn, images, method):
    classes = _other_classes(cnn, images)
    wrapped = _PerImageDicts(cnn).eval()
    reading = [lambda out, k=k: out["scores"][k] for k in classes]
    kwargs = {"method": method, "n_samples": SAMPLES, "scorecam_batch_size": 8}
    ours = compute_cams(wrapped, images, ["inner.features"], targets=reading, **kwargs)
    expected = compute_cams(cnn, images, ["features"], class_idx=classes, **kwargs)
    np.testing.assert_allclose(ours.raw["inner.features"], expected.raw["features"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.maps["inner.features"], expected.maps["features"], atol=ATOL)
    np.testing.assert_array_equal(ours.scores, expected.scores)
    assert ours.logits is None and ours.class_idx is None


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_targets_on_a_dict_output_work_in_every_model_dtype(images, dtype):
    """The targets read the output upcast to at least float32, as the methods do: a float64 model agrees with the
    float32 one to rounding, half-precision ones within their precision, and no map is NaN."""
    model32 = seeded(lambda: _Segmenter(as_dict=True), seed=5)
    model = seeded(lambda: _Segmenter(as_dict=True), seed=5).to(dtype)
    targets = [SoftmaxTarget(1), lambda out: out["out"][2, :4].sum()]
    reading = [lambda out: targets[0](out["out"].mean(dim=(1, 2))), targets[1]]
    expected = compute_cams(model32, images, ["body"], targets=reading)
    ours = compute_cams(model, images.to(dtype), ["body"], targets=reading)
    atol = 1e-6 if dtype == torch.float64 else 0.15
    assert np.isfinite(ours.maps["body"]).all() and ours.scores.dtype == np.float64
    np.testing.assert_allclose(ours.maps["body"], expected.maps["body"], atol=atol)
    np.testing.assert_allclose(ours.scores, expected.scores, rtol=1e-6 if dtype == torch.float64 else 0.05)


# --- camlib's own targets ------------------------------------------------------------------------------------------


def _assert_identical(actual: CamResult, expected: CamResult) -> None:
    """Bit for bit: classes, logits, scores, maps, raw maps and degenerate flags."""
    assert actual.class_idx == expected.class_idx and actual.layers == expected.layers
    np.testing.assert_array_equal(actual.logits, expected.logits)
    np.testing.assert_array_equal(actual.scores, expected.scores)
    for layer in expected.layers:
        np.testing.assert_array_equal(actual.maps[layer], expected.maps[layer])
        np.testing.assert_array_equal(actual.raw[layer], expected.raw[layer])
        np.testing.assert_array_equal(actual.degenerate[layer], expected.degenerate[layer])


def _vit() -> nn.Module:
    """A one-block torchvision ViT at 32 px (4 x 4 patches): LeGrad's kind of model."""
    return seeded(
        lambda: torchvision.models.VisionTransformer(
            image_size=SIZE, patch_size=8, num_layers=1, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10
        ),
        seed=6,
    )


@pytest.mark.parametrize("method", list(METHODS))
def test_class_targets_are_bit_identical_to_class_idx_for_every_method(cnn, images, method):
    model, layer = (_vit(), "encoder.layers.encoder_layer_0") if method == "legrad" else (cnn, "features")
    classes = _other_classes(model, images)
    kwargs = {"method": method, "n_samples": SAMPLES, "scorecam_batch_size": 8}
    by_index = compute_cams(model, images, [layer], class_idx=classes, **kwargs)
    for targets in (class_targets(classes), [ClassifierOutputTarget(k) for k in classes]):
        _assert_identical(compute_cams(model, images, [layer], targets=targets, **kwargs), by_index)
    assert by_index.class_idx == classes
    with torch.no_grad():
        logits = model(images).double()
    np.testing.assert_array_equal(by_index.scores, logits[torch.arange(2), torch.tensor(classes)].numpy())


@pytest.mark.parametrize("option", ["aug_smooth", "counterfactual", "eigen_smooth"])
def test_class_targets_are_bit_identical_to_class_idx_with_every_option(cnn, images, option):
    classes = _other_classes(cnn, images)
    kwargs = {option: True}
    by_index = compute_cam_grid(cnn, images, ["features"], ["gradcam", "layercam"], class_idx=classes, **kwargs)
    by_target = compute_cam_grid(
        cnn, images, ["features"], ["gradcam", "layercam"], targets=class_targets(classes), **kwargs
    )
    for method, result in by_index.items():
        _assert_identical(by_target[method], result)


def test_counterfactual_with_a_target_equals_the_negated_target(cnn, images):
    """Selvaraju et al.'s counterfactual map is the map of ``-score``: with any target, as with a class."""
    targets = [SoftmaxTarget(k) for k in _other_classes(cnn, images)]
    counter = compute_cams(cnn, images, ["features"], targets=targets, counterfactual=True)
    negated = compute_cams(cnn, images, ["features"], targets=[lambda o, t=t: -t(o) for t in targets])
    np.testing.assert_array_equal(counter.raw["features"], negated.raw["features"])
    np.testing.assert_array_equal(counter.scores, -negated.scores)  # scores are the target's, before the negation


@pytest.mark.parametrize("method", TARGET_METHODS)
def test_softmax_target_equals_pytorch_grad_cams_softmax_target(cnn, images, method):
    classes = _other_classes(cnn, images)
    ours = compute_cams(cnn, images, ["features"], method=method, targets=[SoftmaxTarget(k) for k in classes])
    theirs = compute_cams(
        cnn, images, ["features"], method=method, targets=[ClassifierOutputSoftmaxTarget(k) for k in classes]
    )
    _assert_identical(ours, theirs)
    assert ours.class_idx == classes


def test_sigmoid_target_scales_the_logits_gradient_by_the_sigmoids_derivative(cnn, images):
    """``d sigmoid(y_k) / dA = sigmoid(y_k) (1 - sigmoid(y_k)) dy_k / dA``: Grad-CAM's raw map of ``SigmoidTarget(k)``
    is the logit's raw map times ``s (1 - s)`` per image (a multi-label head's per-label probability)."""
    classes = _other_classes(cnn, images)
    sigmoid = compute_cams(cnn, images, ["features"], targets=[SigmoidTarget(k) for k in classes])
    logit = compute_cams(cnn, images, ["features"], class_idx=classes)
    probability = 1 / (1 + np.exp(-logit.scores))
    np.testing.assert_allclose(sigmoid.scores, probability, rtol=1e-6)
    scale = (probability * (1 - probability))[:, None, None]
    np.testing.assert_allclose(sigmoid.raw["features"], scale * logit.raw["features"], rtol=1e-4, atol=1e-9)
    assert sigmoid.class_idx == classes


def test_sigmoid_targets_explain_several_labels_of_one_image(cnn, images):
    """Multi-label: two labels of the same image are two targets, one per copy of the image."""
    pair = images[:1].expand(2, -1, -1, -1)
    result = compute_cams(cnn, pair, ["features"], targets=[SigmoidTarget(1), SigmoidTarget(7)])
    alone = [compute_cams(cnn, images[:1], ["features"], targets=[SigmoidTarget(k)]) for k in (1, 7)]
    for b, single in enumerate(alone):
        np.testing.assert_allclose(result.raw["features"][b], single.raw["features"][0], rtol=1e-5, atol=1e-9)
    assert result.class_idx == [1, 7]


def test_class_of_and_is_logit_target_know_both_libraries_targets():
    assert [class_of(t) for t in (ClassTarget(3), SoftmaxTarget(4), SigmoidTarget(5))] == [3, 4, 5]
    assert [class_of(t) for t in (ClassifierOutputTarget(2), ClassifierOutputSoftmaxTarget(1))] == [2, 1]
    assert class_of(BinaryTarget(True)) is None and class_of(BinaryClassifierOutputTarget(1)) is None
    assert class_of(FinerWeightedTarget(1, [2], 1.0)) is None and class_of(lambda o: o[0]) is None
    assert is_logit_target(ClassTarget(0)) and is_logit_target(ClassifierOutputTarget(0))
    assert not is_logit_target(SoftmaxTarget(0)) and not is_logit_target(ClassifierOutputSoftmaxTarget(0))


def test_target_scores_reads_tensors_dicts_and_lists():
    logits = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    assert target_scores([ClassTarget(2), ClassTarget(0)], logits).tolist() == [3.0, 4.0]
    assert target_scores([lambda o: o["y"][1]] * 2, {"y": logits, "n": "x"}).tolist() == [2.0, 5.0]
    assert target_scores([lambda o: o["s"].sum()] * 2, [{"s": logits[0]}, {"s": logits[1]}]).tolist() == [6.0, 15.0]


# --- errors --------------------------------------------------------------------------------------------------------


def test_targets_and_class_idx_together_are_refused(cnn, images):
    with pytest.raises(InputError, match="either class_idx or targets"):
        compute_cams(cnn, images, ["features"], targets=[ClassTarget(0)] * 2, class_idx=0)


@pytest.mark.parametrize("count", [1, 3])
def test_a_wrong_count_of_targets_is_a_target_error(cnn, images, count):
    with pytest.raises(TargetError, match=f"got {count} targets for a batch of 2"):
        compute_cam_grid(cnn, images, ["features"], ["gradcam"], targets=[ClassTarget(0)] * count)


@pytest.mark.parametrize("targets", [ClassTarget(0), "0", [0, 1], {"a": ClassTarget(0)}])
def test_targets_that_are_not_a_list_of_callables_are_refused(cnn, images, targets):
    with pytest.raises(InputError, match="targets"):
        compute_cams(cnn, images, ["features"], targets=targets)


BAD_TARGETS: dict[str, tuple[Callable, str]] = {
    "vector": (lambda o: o, "must return one float score"),
    "integer": (lambda o: o.argmax(), "must return one float score"),
    "number": (lambda o: float(o[0]), "must return one float score"),
    "index out of range": (lambda o: o[99], "failed on the model output"),
}


@pytest.mark.parametrize("name", list(BAD_TARGETS))
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "eigencam"])
def test_a_target_that_fails_or_returns_no_scalar_is_a_target_error(cnn, images, method, name):
    target, message = BAD_TARGETS[name]
    with pytest.raises(TargetError, match=message):
        compute_cams(cnn, images, ["features"], method=method, targets=[target] * 2)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("method", ["gradcam", "scorecam", "ablationcam", "eigencam", "sscam"])
def test_a_non_finite_target_score_is_a_non_finite_error_never_a_nan_map(cnn, images, method, value):
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        compute_cams(cnn, images, ["features"], method=method, targets=[lambda o: o[0] * value] * 2, n_samples=1)


def test_a_target_that_turns_non_finite_only_on_perturbed_inputs_is_a_non_finite_error(cnn, images):
    """Score-CAM scores masked copies with the target: a score that overflows there is refused too."""
    with torch.no_grad():
        clean = cnn(images)[:, 0]

    def fragile(output: torch.Tensor) -> torch.Tensor:
        return output[0] if bool((output[0] - clean).abs().min() < 1e-6) else output[0] / 0.0

    with pytest.raises(NonFiniteError):
        compute_cams(cnn, images, ["features"], method="scorecam", targets=[fragile] * 2)


@pytest.mark.parametrize("method", ["cam", "finercam", "sess"])
def test_methods_that_need_class_logits_refuse_a_dict_output(images, method):
    model = seeded(lambda: _Segmenter(as_dict=True), seed=5)
    with pytest.raises(MethodError, match="needs"):
        compute_cams(model, images[:1], ["body"], method=method, targets=[lambda o: o["out"][1].sum()])


@pytest.mark.parametrize("method", ["cam", "finercam"])
@pytest.mark.parametrize("target", [SoftmaxTarget(1), ClassifierOutputReST(1), FinerWeightedTarget(1, [2], 1.0)])
def test_cam_and_finercam_refuse_targets_other_than_a_class_logit(cnn, images, method, target):
    with pytest.raises(MethodError, match="logit of one class"):
        compute_cams(cnn, images, ["features"], method=method, targets=[target] * 2)


def test_a_model_without_class_logits_needs_targets(images):
    model = seeded(lambda: _Segmenter(as_dict=True), seed=5)
    with pytest.raises(TargetError, match="targets="):
        compute_cams(model, images, ["body"])


# --- precision, ambiguous outputs and options that do not fit a target ----------------------------------------------


def test_targets_score_a_half_precision_output_in_float32(cnn, images):
    """A softmax target on a bfloat16 model's output is computed on the output upcast to float32, so it equals the
    metrics' ``class_idx`` path (``softmax(logits.float())``) exactly, and the scores of different inputs
    (Ablation-CAM's drops, SS-CAM's gains) differ by the model's rounding only, not by a second rounding."""
    logits = torch.randn(2, 10, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    scores = target_scores([SoftmaxTarget(1), SoftmaxTarget(2)], logits)
    assert scores.dtype == torch.float32
    expected = torch.softmax(logits.float(), dim=1)[[0, 1], [1, 2]]
    np.testing.assert_array_equal(scores.numpy(), expected.numpy())
    half = seeded(lambda: _Cnn(10), seed=3).to(torch.bfloat16)
    x = images.to(torch.bfloat16)
    classes = _other_classes(cnn, images)
    maps = np.random.default_rng(0).random((2, SIZE, SIZE)).astype(np.float32)
    by_class = confidence_change(half, x, maps, classes)
    by_target = confidence_change(half, x, maps, targets=[SoftmaxTarget(k) for k in classes])
    np.testing.assert_array_equal(by_target, by_class)


def test_a_tuple_of_batched_tensors_is_refused_not_read_per_image(cnn, images):
    class LogitsAndFeatures(nn.Module):
        def __init__(self, model: nn.Module) -> None:
            super().__init__()
            self.model = model

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return self.model(x), x.mean(dim=(2, 3))

    with pytest.raises(TargetError, match="tuple of 2 batched tensors"):
        compute_cams(LogitsAndFeatures(cnn), images, ["model.features"], targets=[lambda o: o[0].sum()] * 2)


def test_a_negative_category_of_any_target_is_refused(cnn, images):
    mask = np.ones((SIZE, SIZE), dtype=np.float32)
    with pytest.raises(ClassIndexError, match="never negative"):
        compute_cams(cnn, images, ["features"], targets=[SemanticSegmentationTarget(-1, mask)] * 2)


def test_sess_refuses_a_one_logit_head(binary_cnn, images):
    """SESS weighs patches by a softmax over classes: on one logit it is always 1, which would weigh every patch
    alike whatever the target."""
    with pytest.raises(MethodError, match="2 classes or more"):
        compute_cams(binary_cnn, images, ["features"], method="sess", targets=[BinaryTarget(False)] * 2, n_samples=2)


def test_aug_smooth_takes_class_targets_only(segmenter, cnn, images):
    x = images[:1]
    targets = _segmentation_targets(segmenter, x)
    with pytest.raises(MethodError, match="mirrored"):
        compute_cams(segmenter, x, ["body"], targets=targets, aug_smooth=True)
    smoothed = compute_cams(cnn, images, ["features"], targets=[SoftmaxTarget(1)] * 2, aug_smooth=True)
    assert smoothed.maps["features"].shape == (2, SIZE, SIZE)
