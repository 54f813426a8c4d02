"""Tests of camlib.stability: CAMs compared with the original CAM carried through each view's transform."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.models import DictOutput, seeded
from torch import nn

from camlib.augment import Pipeline, PipelineStep, build_pipeline
from camlib.cifar import load_cifar10
from camlib.errors import ClassIndexError, InputError, LayerError, MethodError, PipelineError, TargetError
from camlib.models import Preprocessing, load_model, prepare_batch
from camlib.stability import (
    StabilityReport,
    Sweep,
    _image_seed,
    augmentation_stability,
    flip_curve,
    map_correlation,
    reporting_progress,
    stability_views,
    top_fraction_iou,
)
from camlib.targets import ClassTarget, SoftmaxTarget

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DATA = Path(os.environ.get("CAMLIB_CIFAR10_ROOT", Path(__file__).resolve().parents[2] / "shared/data/cifar10"))
SAME = Preprocessing(resize=32, crop=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))  # 32x32 in, 32x32 out
RESIZED = Preprocessing(resize=40, crop=36)  # upscaled then centre-cropped: the two frames differ
FLIP = Pipeline((PipelineStep("HorizontalFlip", p=1.0),), seed=0)
IDENTITY = Pipeline((PipelineStep("HorizontalFlip", p=0.0),), seed=0)
FLIP_CROP = Pipeline(
    (
        PipelineStep("HorizontalFlip", p=0.5),
        PipelineStep("PadIfNeeded", {"min_height": 40, "min_width": 40}),
        PipelineStep("RandomCrop", {"height": 32, "width": 32}),
    ),
    seed=0,
)


def _symmetric_in_x(conv: nn.Conv2d) -> nn.Conv2d:
    with torch.no_grad():
        conv.weight.copy_((conv.weight + conv.weight.flip(-1)) / 2)
    return conv


def flip_equivariant_cnn() -> nn.Module:
    """Kernels symmetric in x, stride 1, zero padding 1 on both sides, global average pooling and a linear head: the
    feature maps of a mirrored image are the mirrored feature maps, so its Grad-CAM is the mirrored Grad-CAM."""
    return seeded(
        lambda: nn.Sequential(
            _symmetric_in_x(nn.Conv2d(3, 8, 3, padding=1)),
            nn.ReLU(),
            _symmetric_in_x(nn.Conv2d(8, 8, 3, padding=1)),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 10),
        )
    )


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return flip_equivariant_cnn()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    # smooth random images: CAMs with structure, not pixel noise
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, 256, (3, 8, 8, 3), dtype=np.uint8)
    return np.ascontiguousarray(coarse.repeat(4, axis=1).repeat(4, axis=2))


def _scores_equal(a, b) -> None:
    for field in dataclasses.fields(a):
        np.testing.assert_array_equal(getattr(a, field.name), getattr(b, field.name), err_msg=field.name)


# --- the two measures -------------------------------------------------------------------------------------------------


def test_map_correlation_is_pearson_over_the_valid_pixels():
    rng = np.random.default_rng(1)
    a, b = rng.random((6, 5)).astype(np.float32), rng.random((6, 5)).astype(np.float32)
    valid = rng.random((6, 5)) < 0.7
    expected = np.corrcoef(a[valid].astype(np.float64), b[valid].astype(np.float64))[0, 1]
    assert map_correlation(a, b, valid) == pytest.approx(expected, abs=1e-12)
    b_outside = np.where(valid, b, 100.0).astype(np.float32)  # invalid pixels never count
    assert map_correlation(a, b_outside, valid) == map_correlation(a, b, valid)
    assert map_correlation(a, 2 * a + 1, valid) == pytest.approx(1.0)
    assert map_correlation(a, -a, valid) == pytest.approx(-1.0)


def test_map_correlation_is_nan_where_undefined():
    a = np.zeros((4, 4), np.float32)
    assert np.isnan(map_correlation(a, np.eye(4, dtype=np.float32), np.ones((4, 4), bool)))  # constant map
    assert np.isnan(map_correlation(np.eye(4), np.eye(4), np.eye(4, dtype=bool) & False))  # no valid pixel


def test_top_fraction_iou_hand_computed_with_ties_and_zeros():
    valid = np.ones((2, 5), bool)
    # 10 valid pixels: k = ceil(0.2 * 10) = 2. a's top set: {9, 8}; b's 2nd largest is 5, tied: {7, 5, 5}.
    a = np.array([[9, 8, 1, 1, 1], [0, 0, 0, 0, 0]], np.float32)
    b = np.array([[7, 5, 5, 0, 0], [0, 0, 0, 0, 0]], np.float32)
    assert top_fraction_iou(a, b, valid) == pytest.approx(2 / 3)  # |{0,1}| / |{0,1,2}|
    # zeros are never salient: b has 1 positive pixel, so its top set is that pixel alone
    single = np.zeros((2, 5), np.float32)
    single[0, 0] = 1
    assert top_fraction_iou(a, single, valid) == pytest.approx(1 / 2)
    assert np.isnan(top_fraction_iou(np.zeros((2, 5)), np.zeros((2, 5)), valid))  # both sets empty
    assert top_fraction_iou(a, np.zeros((2, 5), np.float32), valid) == 0.0
    assert top_fraction_iou(a, a, valid) == 1.0
    assert top_fraction_iou(a, b, valid, fraction=1.0) == pytest.approx(3 / 5)  # all positive pixels of each


def test_measures_refuse_bad_arguments():
    good = np.ones((4, 4), np.float32)
    with pytest.raises(InputError, match="one shape"):
        map_correlation(good, np.ones((4, 5), np.float32), np.ones((4, 4), bool))
    with pytest.raises(InputError, match="NaN"):
        map_correlation(np.full((4, 4), np.nan, np.float32), good, np.ones((4, 4), bool))
    with pytest.raises(InputError, match="fraction"):
        top_fraction_iou(good, good, np.ones((4, 4), bool), fraction=0)


# --- invariants ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preprocessing", [SAME, RESIZED], ids=["same frame", "resized and cropped"])
@pytest.mark.parametrize("pipeline", [IDENTITY, Pipeline((), seed=0)], ids=["flip p=0", "empty"])
def test_an_identity_pipeline_gives_correlation_and_iou_one(model, images, snapshot, preprocessing, pipeline):
    before = snapshot(model)
    report = augmentation_stability(model, images, pipeline, "2", preprocessing=preprocessing, n_views=3)
    before.assert_unchanged()
    assert isinstance(report, StabilityReport)
    scores = report.scores
    assert scores.correlation.shape == (3, 3) and scores.correlation.dtype == np.float64
    # originals and views go through compute_cams in different batches: equal up to float rounding
    np.testing.assert_allclose(scores.correlation, 1.0, atol=1e-9)
    np.testing.assert_array_equal(scores.iou, 1.0)
    np.testing.assert_allclose(scores.probability_change, 0.0, atol=1e-6)
    assert not scores.flipped.any() and not scores.degenerate.any()
    # RESIZED: 32 -> 40 px, crop 36 at offset 2, i.e. image pixels 1.6 .. 30.4: centres of columns 2..29 are inside
    np.testing.assert_allclose(scores.valid_fraction, 1.0 if preprocessing is SAME else (28 / 32) ** 2)
    np.testing.assert_array_equal(report.class_idx, report.original_label)
    assert len(report.per_step) == len([s for s in pipeline.steps if s.enabled])


@pytest.mark.parametrize("preprocessing", [SAME, RESIZED], ids=["same frame", "resized and cropped"])
def test_a_flip_equivariant_model_gives_correlation_one_under_a_flip(model, images, snapshot, preprocessing):
    before = snapshot(model)
    report = augmentation_stability(model, images, FLIP, "2", preprocessing=preprocessing, n_views=2)
    before.assert_unchanged()
    np.testing.assert_allclose(report.scores.correlation, 1.0, atol=1e-5)
    np.testing.assert_allclose(report.scores.probability_change, 0.0, atol=1e-6)
    assert not report.scores.flipped.any()
    # the views really are mirrored and the carried maps mirrored with them
    views = stability_views(model, images[0], FLIP, "2", preprocessing=preprocessing, n_views=1)
    np.testing.assert_array_equal(views.images[0], images[0, :, ::-1])
    np.testing.assert_array_equal(views.carried[0], np.where(views.valid[0], views.original_cam[:, ::-1], 0))


def test_a_model_that_is_not_flip_equivariant_is_seen(images):
    model = seeded(
        lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 32 * 32, 10))
    )
    report = augmentation_stability(model, images, FLIP, "1", preprocessing=SAME, n_views=2)
    assert report.scores.mean_correlation < 0.9


def test_a_pixel_only_transform_leaves_the_carried_map_alone(model, images):
    pipeline = Pipeline((PipelineStep("RandomBrightnessContrast", p=1.0),), seed=3)
    views = stability_views(model, images[1], pipeline, "2", preprocessing=SAME, n_views=4)
    assert any(not np.array_equal(view, images[1]) for view in views.images)
    for carried, valid in zip(views.carried, views.valid):
        assert valid.all()
        np.testing.assert_array_equal(carried, views.original_cam)


@pytest.mark.parametrize("name", ["FDA", "HistogramMatching", "PixelDistributionAdaptation"])
def test_second_image_steps_match_to_the_other_images_and_leave_the_map_in_place(model, images, name):
    pipeline = Pipeline((PipelineStep(name, p=1.0),), seed=3)
    report = augmentation_stability(model, images[:3], pipeline, "2", preprocessing=SAME, n_views=2)
    assert report.scores.correlation.shape == (3, 2) and (report.scores.valid_fraction == 1).all()
    views = stability_views(model, images[1], pipeline, "2", preprocessing=SAME, n_views=2)  # matched to itself
    for carried in views.carried:
        np.testing.assert_array_equal(carried, views.original_cam)


@pytest.mark.parametrize(
    "step",
    [
        PipelineStep("Rotate", {"limit": (-40.0, 40.0)}),
        PipelineStep("Affine", {"scale": (0.8, 1.2), "translate_percent": (-0.1, 0.1), "rotate": (-20.0, 20.0)}),
        PipelineStep("RandomResizedCrop", {"size": (32, 32), "scale": (0.3, 1.0)}),
        PipelineStep("PadIfNeeded", {"min_height": 44, "min_width": 40}),
        PipelineStep("GridDistortion"),
        PipelineStep("Perspective"),
    ],
    ids=lambda step: step.transform,
)
def test_carrying_coordinates_equals_carrying_the_cam_as_a_mask(model, images, step):
    """The carried map equals the original CAM passed as ``mask=`` to the same seeded Compose (Albumentations moves
    float masks by nearest neighbour and fills with 0), on every valid pixel."""
    pipeline = Pipeline((step,), seed=5)
    views = stability_views(model, images[2], pipeline, "2", preprocessing=SAME, n_views=4)
    compose = build_pipeline(dataclasses.replace(pipeline, seed=_image_seed(pipeline.seed, 0)))
    for view, carried, valid in zip(views.images, views.carried, views.valid):
        replay = compose(image=images[2], mask=views.original_cam)
        np.testing.assert_array_equal(replay["image"], view)
        np.testing.assert_array_equal(carried[valid], replay["mask"][valid])
        assert valid.any()
    if step.transform in ("Rotate", "PadIfNeeded"):  # corners and borders with no source pixel are not valid
        assert not all(valid.all() for valid in views.valid)


def test_per_step_rows_of_a_single_step_pipeline_equal_the_full_pipeline(model, images):
    pipeline = Pipeline((PipelineStep("Rotate", {"limit": (-30.0, 30.0)}), PipelineStep("VerticalFlip", enabled=False)))
    report = augmentation_stability(model, images, pipeline, "2", preprocessing=SAME, n_views=3)
    assert [(s.index, s.transform) for s in report.per_step] == [(0, "Rotate")]
    _scores_equal(report.per_step[0].scores, report.scores)


def test_per_step_rows_follow_the_enabled_steps(model, images):
    report = augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, n_views=2)
    assert [(s.index, s.transform) for s in report.per_step] == [
        (0, "HorizontalFlip"),
        (1, "PadIfNeeded"),
        (2, "RandomCrop"),
    ]
    # RandomCrop of a 32x32 image to 32x32 changes nothing
    np.testing.assert_allclose(report.per_step[2].scores.correlation, 1.0, atol=1e-9)


def test_the_same_seed_gives_the_same_report_and_another_seed_another(model, images):
    first = augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, n_views=4)
    again = augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, n_views=4)
    other = augmentation_stability(
        model, images, dataclasses.replace(FLIP_CROP, seed=1), "2", preprocessing=SAME, n_views=4
    )
    _scores_equal(first.scores, again.scores)
    for a, b in zip(first.per_step, again.per_step):
        _scores_equal(a.scores, b.scores)
    assert first.seed == 0 and other.seed == 1
    assert not np.array_equal(first.scores.correlation, other.scores.correlation)


def test_an_image_views_do_not_depend_on_the_other_images(model, images):
    """Image ``i``'s views are seeded by ``(seed, i)``: the images after it (or their number) change nothing."""
    together = augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, n_views=3)
    alone = augmentation_stability(model, images[:1], FLIP_CROP, "2", preprocessing=SAME, n_views=3)
    first = dataclasses.replace(
        together.scores, **{f.name: getattr(together.scores, f.name)[:1] for f in dataclasses.fields(together.scores)}
    )
    for field in dataclasses.fields(first):  # the same views; batched with other images' views: float rounding
        np.testing.assert_allclose(getattr(first, field.name), getattr(alone.scores, field.name), atol=1e-6)


def test_an_explicit_class_is_explained_in_every_view(model, images):
    report = augmentation_stability(model, images, FLIP, "2", preprocessing=SAME, class_idx=[1, 2, 3], n_views=2)
    np.testing.assert_array_equal(report.class_idx, [1, 2, 3])
    with pytest.raises(ClassIndexError, match="class index 10 is out of range"):
        augmentation_stability(model, images, FLIP, "2", preprocessing=SAME, class_idx=10, n_views=2)
    with pytest.raises(ClassIndexError, match="one integer per image"):
        augmentation_stability(model, images, FLIP, "2", preprocessing=SAME, class_idx=[1], n_views=2)


def test_bad_arguments_raise_typed_errors(model, images):
    def run(**kwargs):
        arguments = {"model": model, "images": images, "pipeline": FLIP, "layer": "2", "preprocessing": SAME}
        return augmentation_stability(**(arguments | kwargs))

    with pytest.raises(LayerError, match="layer"):
        run(layer="layer4")
    with pytest.raises(MethodError, match="gradcam"):
        run(method="nope")
    with pytest.raises(InputError, match="n_views"):
        run(n_views=0)
    with pytest.raises(PipelineError, match="Rotate"):
        run(pipeline=Pipeline((PipelineStep("Rotate", {"limit": (50.0, -50.0)}),)))
    with pytest.raises(PipelineError, match="failed on a 32x32 image"):
        run(pipeline=Pipeline((PipelineStep("RandomCrop", {"height": 48, "width": 48, "pad_if_needed": False}),)))


# --- flip curve ---------------------------------------------------------------------------------------------------


def test_flip_curve_brightness_zero_changes_nothing(model, images, snapshot):
    pipeline = Pipeline((PipelineStep("RandomBrightnessContrast", {"contrast_limit": (0.0, 0.0)}),), seed=2)
    before = snapshot(model)
    curve = flip_curve(
        model,
        images,
        pipeline,
        "2",
        preprocessing=SAME,
        sweep=Sweep(0, "brightness_limit", [0.0, (-0.6, 0.6)]),
        n_views=4,
    )
    before.assert_unchanged()
    assert curve.transform == "RandomBrightnessContrast" and curve.sweep.values == (0.0, (-0.6, 0.6))
    assert curve.flip_rate[0] == 0.0 and curve.mean_correlation[0] == pytest.approx(1.0) and curve.mean_iou[0] == 1.0
    assert curve.mean_probability_change[0] == pytest.approx(0.0, abs=1e-6)
    assert curve.mean_correlation[1] < 1.0 and curve.mean_probability_change[1] != 0.0


def test_flip_curve_refuses_a_bad_sweep(model, images):
    def run(sweep):
        return flip_curve(model, images, FLIP, "2", preprocessing=SAME, sweep=sweep, n_views=1)

    with pytest.raises(PipelineError, match="step_index"):
        run(Sweep(1, "p", (0.0,)))
    with pytest.raises(PipelineError, match="not a numeric parameter"):
        run(Sweep(0, "brightness_limit", (0.0,)))
    with pytest.raises(PipelineError, match="Sweep"):
        run({"step_index": 0})
    rotate = Pipeline((PipelineStep("Rotate"),))
    with pytest.raises(PipelineError, match=r"Rotate\.limit"):
        flip_curve(model, images, rotate, "2", preprocessing=SAME, sweep=Sweep(0, "limit", (500.0,)), n_views=1)


# --- real data ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar_images() -> np.ndarray:
    if not DATA.is_dir():
        pytest.skip(f"no CIFAR-10 at {DATA}")
    return load_cifar10(DATA, "test", limit=8).images


def test_bundled_resnet20_on_cifar10_gives_finite_scores_in_range(cifar_images, snapshot):
    loaded = load_model("cifar10_resnet20", device=torch.device("cpu"))
    before = snapshot(loaded.model)
    report = augmentation_stability(
        loaded.model, cifar_images, FLIP_CROP, "layer3", preprocessing=loaded.spec.preprocessing, n_views=8
    )
    before.assert_unchanged()
    for scores in (report.scores, *(step.scores for step in report.per_step)):
        assert scores.correlation.shape == (8, 8)
        assert np.isfinite(scores.correlation).all() and np.isfinite(scores.iou).all()
        assert (np.abs(scores.correlation) <= 1).all()
        assert ((scores.iou >= 0) & (scores.iou <= 1)).all()
        assert (np.abs(scores.probability_change) <= 1).all()
        assert ((scores.valid_fraction > 0.5) & (scores.valid_fraction <= 1)).all()
    # flips and crops of CIFAR-10 images move the trained model's maps with them, but not perfectly
    assert 0.5 < report.scores.mean_correlation < 1.0
    assert 0.0 <= report.scores.flip_rate < 0.5
    np.testing.assert_allclose(report.per_step[2].scores.correlation, 1.0, atol=1e-9)  # a 32x32 crop of 32x32 images


def test_progress_is_reported_per_batch_and_a_raising_callback_cancels(model, images, snapshot):
    seen = []
    with reporting_progress(lambda done, total: seen.append((done, total))):
        augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, n_views=2)
        sweep = Sweep(1, "min_height", (40, 48))
        flip_curve(model, images, FLIP_CROP, "2", preprocessing=SAME, sweep=sweep, n_views=2)
    assert seen == [(k, 4) for k in range(1, 5)] + [(k, 2) for k in range(1, 3)]  # full + 3 steps; 2 values
    before = snapshot(model)

    def cancel(done: int, total: int) -> None:
        raise KeyboardInterrupt  # what a stopped Streamlit run raises from its next element call

    with pytest.raises(KeyboardInterrupt), reporting_progress(cancel):
        augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, n_views=2)
    before.assert_unchanged()
    augmentation_stability(model, images[:1], FLIP, "2", preprocessing=SAME, n_views=1)  # no callback outside


# --- targets ------------------------------------------------------------------------------------------------------


def test_softmax_targets_change_the_probability_as_class_idx_and_keep_flip_equivariance(model, images):
    """``SoftmaxTarget(k)`` scores the probability ``class_idx=k`` reads: the same probability changes, labels and
    flips; its maps (the softmax's gradient) still mirror under a flip on the flip-equivariant model."""
    classes = [1, 2, 3]
    by_class = augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, class_idx=classes, n_views=3)
    targets = [SoftmaxTarget(k) for k in classes]
    by_target = augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, targets=targets, n_views=3)
    np.testing.assert_allclose(by_target.scores.probability_change, by_class.scores.probability_change, atol=1e-6)
    np.testing.assert_allclose(by_target.original_probability, by_class.original_probability, atol=1e-6)
    np.testing.assert_array_equal(by_target.scores.flipped, by_class.scores.flipped)
    np.testing.assert_array_equal(by_target.class_idx, classes)
    assert by_target.targets == tuple(targets) and by_class.targets is None
    flipped = augmentation_stability(model, images, FLIP, "2", preprocessing=SAME, targets=targets, n_views=2)
    np.testing.assert_allclose(flipped.scores.correlation, 1.0, atol=1e-6)


def test_logit_targets_give_the_maps_of_class_idx_and_score_the_logit(model, images):
    """``ClassTarget(k)`` explains what ``class_idx=k`` explains (the same maps, so the same correlations); its score
    is the raw logit, read here from the model's own forward of the originals."""
    classes = [4, 0, 7]
    by_class = augmentation_stability(model, images, FLIP_CROP, "2", preprocessing=SAME, class_idx=classes, n_views=2)
    by_target = augmentation_stability(
        model, images, FLIP_CROP, "2", preprocessing=SAME, targets=[ClassTarget(k) for k in classes], n_views=2
    )
    for field in ("correlation", "iou", "flipped", "augmented_label", "valid_fraction", "degenerate"):
        np.testing.assert_allclose(getattr(by_target.scores, field), getattr(by_class.scores, field), atol=1e-6)
    with torch.no_grad():
        logits = model(prepare_batch(images, SAME)).numpy()
    np.testing.assert_allclose(by_target.original_probability, logits[np.arange(3), classes], rtol=1e-5)
    view = stability_views(model, images[0], FLIP_CROP, "2", preprocessing=SAME, targets=[ClassTarget(4)], n_views=2)
    np.testing.assert_allclose(view.scores.correlation, by_target.scores.correlation[:1], atol=1e-6)


def test_bad_targets_raise_typed_errors(model, images):
    def run(**kwargs):
        return augmentation_stability(model, images, FLIP, "2", preprocessing=SAME, n_views=1, **kwargs)

    targets = [SoftmaxTarget(k) for k in (1, 2, 3)]
    with pytest.raises(InputError, match="not both"):
        run(class_idx=[1, 2, 3], targets=targets)
    with pytest.raises(TargetError, match="got 2 targets for a batch of 3"):
        run(targets=targets[:2])
    with pytest.raises(InputError, match="callables"):
        run(targets=[1, 2, 3])
    with pytest.raises(MethodError, match="predicted label"):  # a target can read a dict; the labels cannot
        augmentation_stability(
            DictOutput(model),
            images,
            FLIP,
            "inner.2",
            preprocessing=SAME,
            n_views=1,
            targets=[lambda out, k=k: out["out"][k] for k in (1, 2, 3)],
        )
    with pytest.raises(TargetError, match="got 2 targets for a batch of 1"):
        stability_views(model, images[0], FLIP, "2", preprocessing=SAME, targets=targets[:2], n_views=1)
