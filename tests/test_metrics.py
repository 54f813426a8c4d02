"""camlib.metrics: each faithfulness metric against its definition on a model whose answer is known analytically,
ROAD and the confidence change against pytorch-grad-cam 1.5.7, seeded baselines, and a shared model left untouched."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from helpers.models import DictOutput, mixed_state, seeded, seeded_resnet18
from pytorch_grad_cam.metrics import road as reference_road
from pytorch_grad_cam.metrics.cam_mult_image import (
    CamMultImageConfidenceChange,
    DropInConfidence,
    IncreaseInConfidence,
)
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)
from skimage.metrics import structural_similarity as ssim_of
from torch import nn

from camlib.cam import compute_cams
from camlib.cifar import load_cifar10
from camlib.cifar_models import normalize_batch
from camlib.errors import ClassIndexError, InputError, MethodError, NonFiniteError, TargetError
from camlib.metrics import (
    METRIC_DIRECTIONS,
    FaithfulnessScores,
    average_drop_increase,
    baseline_maps,
    baseline_scores,
    blurred,
    cascading_randomization,
    compare_with_baselines,
    confidence_change,
    deletion_insertion,
    faithfulness_scores,
    random_logit,
    rank_by_faithfulness,
    road,
)
from camlib.targets import ClassTarget, SigmoidTarget, SoftmaxTarget

DATA = Path(os.environ.get("CAMLIB_CIFAR10_ROOT", Path(__file__).resolve().parents[2] / "shared/data/cifar10"))
SIDE, TOP, LEFT, SQUARE = 10, 2, 3, 5  # a 10x10 image whose 5x5 square at (2, 3) decides class 0
REGION = SQUARE * SQUARE / (SIDE * SIDE)  # the square's share of the pixels, r / N = 1/4


class RegionModel(nn.Module):
    """Class 0's probability is exactly ``m``, the mean of channel 0 over the square (clamped to [0, 1]), class 1's
    ``1 - m``: logits ``(log m, log(1 - m))``. A map marking the square is the ideal explanation of class 0."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))  # unused by the maths; gives the model a device and a state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = (self.scale * x[:, 0, TOP : TOP + SQUARE, LEFT : LEFT + SQUARE].mean(dim=(1, 2))).clamp(0, 1)
        return torch.stack([m.double().log(), (1 - m.double()).log()], dim=1).float()


def square_input(value: float = 1.0, images: int = 1) -> torch.Tensor:
    """Channel 0 is ``value`` on the square and 0 elsewhere; channels 1-2 are noise the model ignores."""
    x = torch.rand(images, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    x[:, 0] = 0
    x[:, 0, TOP : TOP + SQUARE, LEFT : LEFT + SQUARE] = value
    return x


def square_map(images: int = 1) -> np.ndarray:
    maps = np.zeros((images, SIDE, SIDE), np.float32)
    maps[:, TOP : TOP + SQUARE, LEFT : LEFT + SQUARE] = 1
    return maps


def small_cnn() -> nn.Module:
    """A seeded CIFAR-sized CNN whose probabilities move visibly when pixels change (its classifier weights scaled
    up 30 times: at the default init the logits barely depend on the image)."""

    def build() -> nn.Module:
        model = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, stride=2),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(128, 10),
        )
        with torch.no_grad():
            model[-1].weight.mul_(30)
        return model

    return seeded(build, seed=3)


@pytest.fixture(scope="module")
def cifar_batch(one_torch_thread) -> tuple[nn.Module, torch.Tensor, np.ndarray, list[int]]:
    """The small CNN, three CIFAR-10 test images (random images without the shared copy), and per image a Grad-CAM
    map (many ties at 0 after the ReLU), a random map and a map of a quarter of the image."""
    model = small_cnn()
    if DATA.is_dir():
        x = normalize_batch(torch.from_numpy(load_cifar10(DATA, "test", limit=10).images[:3]))
    else:
        x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    cams = compute_cams(model, x, ["4"], class_idx=[0, 3, 7]).maps["4"]
    cams[1] = baseline_maps(x[1:2], "random", seed=4)[0]
    cams[2] = 0
    cams[2, 8:24, 8:24] = 1
    return model, x, cams, [0, 3, 7]


# --- deletion and insertion ----------------------------------------------------------------------------------------


def test_the_square_map_gets_the_analytic_curves_with_a_zero_baseline():
    """Deleting 5 pixels a step (20 steps of 100 pixels) removes the 25-pixel square in 5 steps: the deletion curve is
    ``max(0, 1 - k/5)`` with area ``r / (2N) = 1/8``; insertion is ``min(1, k/5)`` with area ``1 - r / (2N)``."""
    result = deletion_insertion(RegionModel(), square_input(), square_map(), 0, steps=20, baseline="zeros")
    k = np.arange(21)
    np.testing.assert_array_equal(result.fractions, k / 20)
    np.testing.assert_allclose(result.deletion[0], np.maximum(0, 1 - k / 5), atol=1e-6)
    np.testing.assert_allclose(result.insertion[0], np.minimum(1, k / 5), atol=1e-6)
    np.testing.assert_allclose(result.deletion_auc, [REGION / 2], atol=1e-6)
    np.testing.assert_allclose(result.insertion_auc, [1 - REGION / 2], atol=1e-6)
    assert result.deletion.shape == result.insertion.shape == (1, 21) and result.deletion_auc.shape == (1,)


def test_the_reversed_map_gets_the_worst_areas_and_every_baseline_map_lies_between():
    """The square ranked last keeps class 0 at 1 for 15 steps: deletion area ``1 - r / (2N)``, insertion ``r / (2N)``.
    No map can do better than the square or worse than its reverse."""
    model, x = RegionModel(), square_input()
    worst = deletion_insertion(model, x, 1 - square_map(), 0, baseline="zeros")
    np.testing.assert_allclose(worst.deletion_auc, [1 - REGION / 2], atol=1e-6)
    np.testing.assert_allclose(worst.insertion_auc, [REGION / 2], atol=1e-6)
    for kind in ("random", "gaussian", "edges"):
        other = deletion_insertion(model, x, baseline_maps(x, kind), 0, baseline="zeros")
        assert REGION / 2 - 1e-6 <= other.deletion_auc[0] <= 1 - REGION / 2 + 1e-6
        assert REGION / 2 - 1e-6 <= other.insertion_auc[0] <= 1 - REGION / 2 + 1e-6


def test_the_mean_baseline_gives_the_analytic_curves():
    """Channel 0's mean is ``r / N = 1/4``: deleting the square takes ``m`` from 1 down to 1/4 (area
    ``1/4 + 3/4 * 1/8``), inserting it from 1/4 up to 1 (area ``1/4 + 3/4 * 7/8``)."""
    result = deletion_insertion(RegionModel(), square_input(), square_map(), 0, baseline="mean")
    k = np.arange(21)
    np.testing.assert_allclose(result.deletion[0], 1 - (1 - REGION) * np.minimum(1, k / 5), atol=1e-6)
    np.testing.assert_allclose(result.insertion[0], REGION + (1 - REGION) * np.minimum(1, k / 5), atol=1e-6)
    np.testing.assert_allclose(result.deletion_auc, [REGION + (1 - REGION) * REGION / 2], atol=1e-6)
    np.testing.assert_allclose(result.insertion_auc, [REGION + (1 - REGION) * (1 - REGION / 2)], atol=1e-6)


def test_class_one_and_several_images_are_scored_per_image():
    """Per-image classes: class 1's probability ``1 - m`` rises as the square is deleted (area ``1 - r / (2N)``)."""
    x = square_input(images=2)
    result = deletion_insertion(RegionModel(), x, square_map(2), [0, 1], baseline="zeros")
    np.testing.assert_allclose(result.deletion_auc, [REGION / 2, 1 - REGION / 2], atol=1e-6)


def brute_force_curves(model, x, maps, targets, *, steps, base) -> tuple[np.ndarray, np.ndarray]:
    """The definition, one image and one step at a time: rank pixels by map value (ties by flat index), replace the
    top ceil(k HW / steps) by the baseline (deletion) or restore them onto it (insertion)."""
    images, _, height, width = x.shape
    deletion, insertion = np.zeros((images, steps + 1)), np.zeros((images, steps + 1))
    for b in range(images):
        order = sorted(range(height * width), key=lambda i: (-float(maps[b].reshape(-1)[i]), i))
        for k in range(steps + 1):
            top = np.zeros(height * width, bool)
            top[order[: math.ceil(k * height * width / steps)]] = True
            top = torch.from_numpy(top.reshape(height, width))
            for curve, image in (
                (deletion, torch.where(top, base[b], x[b])),
                (insertion, torch.where(top, x[b], base[b])),
            ):
                with torch.no_grad():
                    curve[b, k] = torch.softmax(model(image[None]), dim=1)[0, targets[b]]
    return deletion, insertion


@pytest.mark.parametrize("steps", [3, 7])
def test_curves_follow_the_definition_on_a_cnn_with_ties_and_uneven_steps(cifar_batch, steps):
    model, x, maps, targets = cifar_batch
    base = blurred(x)
    expected_deletion, expected_insertion = brute_force_curves(model, x, maps, targets, steps=steps, base=base)
    result = deletion_insertion(model, x, maps, targets, steps=steps, baseline="blur", batch_size=5)
    np.testing.assert_allclose(result.deletion, expected_deletion, atol=1e-5)
    np.testing.assert_allclose(result.insertion, expected_insertion, atol=1e-5)
    fractions = np.arange(steps + 1) / steps
    np.testing.assert_allclose(result.deletion_auc, np.trapezoid(expected_deletion, fractions, axis=1), atol=1e-5)


def test_baselines_blur_zeros_mean_and_tensor(cifar_batch):
    """ "blur" is torchvision's Gaussian blur with RISE's 11 px kernel and sigma 5; "zeros" and "mean" equal the same
    tensors passed explicitly; the batch size changes nothing."""
    model, x, maps, targets = cifar_batch
    np.testing.assert_array_equal(blurred(x).numpy(), TF.gaussian_blur(x, [11, 11], [5.0, 5.0]).numpy())
    for name, tensor in (
        ("blur", TF.gaussian_blur(x, [11, 11], [5.0, 5.0])),
        ("zeros", torch.zeros_like(x)),
        ("mean", x.mean(dim=(2, 3), keepdim=True).expand_as(x).clone()),
    ):
        by_name = deletion_insertion(model, x, maps, targets, steps=4, baseline=name, batch_size=64)
        by_tensor = deletion_insertion(model, x, maps, targets, steps=4, baseline=tensor, batch_size=3)
        np.testing.assert_allclose(by_name.deletion, by_tensor.deletion, atol=1e-6)
        np.testing.assert_allclose(by_name.insertion, by_tensor.insertion, atol=1e-6)
    same = deletion_insertion(model, x, maps, targets, steps=4, baseline=x)
    np.testing.assert_allclose(same.deletion, same.deletion[:, :1].repeat(5, axis=1), atol=1e-6)


def test_tiny_images_blur_with_the_largest_kernel_reflect_padding_allows():
    x = torch.rand(1, 3, 3, 4)
    np.testing.assert_array_equal(blurred(x).numpy(), TF.gaussian_blur(x, [5, 5], [5.0, 5.0]).numpy())


def test_deletion_insertion_refuses_bad_arguments():
    model, x = RegionModel(), square_input()
    with pytest.raises(InputError, match="baseline"):
        deletion_insertion(model, x, square_map(), 0, baseline="black")
    with pytest.raises(InputError, match="baseline"):
        deletion_insertion(model, x, square_map(), 0, baseline=torch.zeros(1, 3, 5, 5))
    with pytest.raises(InputError, match="steps"):
        deletion_insertion(model, x, square_map(), 0, steps=0)
    with pytest.raises(InputError, match="maps"):
        deletion_insertion(model, x, square_map(2), 0)
    with pytest.raises(ClassIndexError):
        deletion_insertion(model, x, square_map(), 2)


# --- ROAD ----------------------------------------------------------------------------------------------------------


REFERENCES = {
    "morf": reference_road.ROADMostRelevantFirstAverage,
    "lerf": reference_road.ROADLeastRelevantFirstAverage,
    "combined": reference_road.ROADCombined,
}


# pytorch-grad-cam calls np.argwhere on torch tensors, which numpy 2 warns about.
REFERENCE_WARNINGS = pytest.mark.filterwarnings("ignore:__array_wrap__ must accept context:DeprecationWarning")


@REFERENCE_WARNINGS
@pytest.mark.parametrize("order", list(REFERENCES))
def test_road_without_noise_equals_pytorch_grad_cam(cifar_batch, order, monkeypatch):
    """pytorch-grad-cam's imputer hard-codes noise 0.01; with its default set to 0 the two agree to 1e-4 (in fact
    to the last bit), on Grad-CAM maps with ties, a random map and a binary map, for the default percentiles and for
    extreme ones (at 0 every pixel is imputed: the reference's singular system gives zeros, as we do)."""
    model, x, maps, targets = cifar_batch
    monkeypatch.setattr(
        reference_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, reference_road.neighbors_weights)
    )
    softmax_targets = [ClassifierOutputSoftmaxTarget(k) for k in targets]
    for percentiles in ((10, 20, 30, 40, 50, 60, 70, 80, 90), (0, 5, 99.5, 100)):
        expected = REFERENCES[order](list(percentiles))(x, maps, softmax_targets, model)
        result = road(model, x, maps, targets, order=order, noise=0, percentiles=percentiles)
        np.testing.assert_allclose(result.scores, expected, atol=1e-4, rtol=0)
        assert result.scores.shape == (3,) and result.scores.dtype == np.float32
        assert (result.morf is None) == (order == "lerf") and (result.lerf is None) == (order == "morf")
        changes = result.lerf if result.morf is None else result.morf
        assert np.abs(changes).max() > 0.01  # the comparison is not between near-zeros


@REFERENCE_WARNINGS
def test_road_noise_is_seeded_and_draws_what_the_reference_draws(cifar_batch):
    """With noise the reference draws from the global RNG; seeded alike, the two agree. Ours leaves that RNG alone."""
    model, x, maps, targets = cifar_batch
    softmax_targets = [ClassifierOutputSoftmaxTarget(k) for k in targets]
    state = torch.get_rng_state()
    first = road(model, x, maps, targets, noise=0.01, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(road(model, x, maps, targets, noise=0.01, seed=7).scores, first.scores)
    assert not np.array_equal(road(model, x, maps, targets, noise=0.01, seed=8).scores, first.scores)
    torch.manual_seed(7)
    expected = reference_road.ROADCombined()(x, maps, softmax_targets, model)
    np.testing.assert_allclose(first.scores, expected, atol=1e-4, rtol=0)
    torch.set_rng_state(state)


def test_road_per_percentile_changes_average_to_the_scores(cifar_batch):
    model, x, maps, targets = cifar_batch
    result = road(model, x, maps, targets, order="combined", noise=0)
    assert result.morf.shape == result.lerf.shape == (3, 9) and result.percentiles == tuple(range(10, 100, 10))
    np.testing.assert_allclose(result.scores, (result.lerf.mean(axis=1) - result.morf.mean(axis=1)) / 2, atol=1e-7)


def test_road_refuses_bad_arguments(cifar_batch):
    model, x, maps, targets = cifar_batch
    for kwargs, argument in (
        ({"order": "both"}, "order"),
        ({"percentiles": []}, "percentiles"),
        ({"percentiles": (10, 120)}, "percentiles"),
        ({"percentiles": "10"}, "percentiles"),
        ({"noise": -0.1}, "noise"),
        ({"noise": float("nan")}, "noise"),
        ({"seed": -1}, "seed"),
    ):
        with pytest.raises(InputError, match=argument):
            road(model, x, maps, targets, **kwargs)


# --- confidence with the map applied -------------------------------------------------------------------------------


def test_average_drop_and_increase_follow_chattopadhay():
    """Image 0: ``Y = m = 0.8``, half the map gives ``O = 0.4``, a drop of ``0.4 / 0.8``. Image 1, class 1:
    ``Y = 1 - 0.4``, ``O = 1 - 0.2``: an increase, no drop. Average Drop 25 %, Increase in Confidence 50 %."""
    x = torch.cat([square_input(0.8), square_input(0.4)])
    result = average_drop_increase(RegionModel(), x, 0.5 * square_map(2), [0, 1])
    np.testing.assert_allclose(result.original, [0.8, 0.6], atol=1e-6)
    np.testing.assert_allclose(result.explanation, [0.4, 0.8], atol=1e-6)
    np.testing.assert_allclose(result.drop, [0.5, 0.0], atol=1e-6)
    np.testing.assert_array_equal(result.increased, [False, True])
    assert result.average_drop == pytest.approx(25, abs=1e-4)
    assert result.increase_in_confidence == 50


def test_confidence_change_equals_pytorch_grad_cam(cifar_batch):
    model, x, maps, targets = cifar_batch
    expected = CamMultImageConfidenceChange()(x, maps, [ClassifierOutputSoftmaxTarget(k) for k in targets], model)
    result = confidence_change(model, x, maps, targets, batch_size=2)
    np.testing.assert_allclose(result, expected, atol=1e-6, rtol=0)
    assert np.abs(result).max() > 1e-3
    drop = average_drop_increase(model, x, torch.from_numpy(maps), targets)
    np.testing.assert_allclose(drop.explanation - drop.original, expected, atol=1e-6)


# --- baselines -----------------------------------------------------------------------------------------------------


def test_baseline_maps_are_seeded_unit_range_float32():
    x = torch.rand(2, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    for kind in ("random", "gaussian", "edges"):
        maps = baseline_maps(x, kind, seed=1)
        assert maps.shape == (2, 12, 16) and maps.dtype == np.float32
        assert maps.min() >= 0 and maps.max() <= 1
        np.testing.assert_array_equal(maps, baseline_maps(x, kind, seed=1))
    assert not np.array_equal(baseline_maps(x, "random", seed=1), baseline_maps(x, "random", seed=2))
    np.testing.assert_array_equal(baseline_maps((2, 12, 16), "random", seed=1), baseline_maps(x, "random", seed=1))


def test_gaussian_map_peaks_at_the_centre_and_is_symmetric():
    maps = baseline_maps((1, 9, 13), "gaussian")[0]
    assert maps[4, 6] == 1 and np.unravel_index(maps.argmax(), maps.shape) == (4, 6)
    np.testing.assert_allclose(maps, maps[::-1, ::-1], atol=1e-7)
    assert maps[4, 6 + 2] == pytest.approx(math.exp(-4 / (2 * (9 / 4) ** 2)), rel=1e-6)


def test_edge_map_marks_a_step_and_nothing_on_flat_areas():
    x = torch.zeros(2, 3, 8, 8)
    x[0, :, :, 4:] = 1  # a vertical step between columns 3 and 4; image 1 is flat
    maps = baseline_maps(x, "edges")
    assert maps[0, 1:-1, 3:5].min() == 1 and maps[0, :, :2].max() == 0 and maps[0, :, 6:].max() == 0
    np.testing.assert_array_equal(maps[1], 0)


def test_baseline_maps_refuse_bad_arguments():
    for args, argument in (
        (((1, 8, 8), "noise"), "kind"),
        (((1, 8, 8), "edges"), "x"),
        (((1, 0, 8), "random"), "x"),
        (((8, 8), "random"), "x"),
    ):
        with pytest.raises(InputError, match=argument):
            baseline_maps(*args)
    with pytest.raises(InputError, match="seed"):
        baseline_maps((1, 8, 8), seed=-1)


# --- against the baselines -----------------------------------------------------------------------------------------


def test_compare_with_baselines_follows_each_metrics_direction_and_the_margin():
    """Means over images; deletion lower, insertion and ROAD higher is better; a tie does not beat; the margin."""
    method = {"deletion_auc": [0.125, 0.375], "insertion_auc": np.array([0.75, 0.75]), "road": torch.tensor([0.25])}
    baselines = {
        "random": {"deletion_auc": 0.5, "insertion_auc": 0.5, "road": 0.0},
        "gaussian": {"deletion_auc": 0.25, "insertion_auc": 0.875, "road": 0.25},
    }
    result = compare_with_baselines(method, baselines)
    assert result.method == {"deletion_auc": 0.25, "insertion_auc": 0.75, "road": 0.25}
    assert result.baselines["gaussian"]["insertion_auc"] == 0.875
    assert result.beats == {
        "deletion_auc": {"random": True, "gaussian": False},
        "insertion_auc": {"random": True, "gaussian": False},
        "road": {"random": True, "gaussian": False},
    }
    assert result.failures == (("deletion_auc", "gaussian"), ("insertion_auc", "gaussian"), ("road", "gaussian"))
    assert result.flagged
    assert not compare_with_baselines(method, {"random": baselines["random"]}).flagged
    assert not compare_with_baselines(method, {"random": baselines["random"]}, margin=0.2).flagged
    strict = compare_with_baselines(method, {"random": baselines["random"]}, margin=0.25)
    assert len(strict.failures) == 3  # 0.25 better on each is not more than 0.25 better
    assert set(result.method) == set(METRIC_DIRECTIONS)


def test_the_ideal_map_beats_every_baseline_and_its_reverse_is_flagged():
    """On the square model the square map is the best possible deletion and insertion ranking (analytic areas
    ``r / (2N)`` and ``1 - r / (2N)``) and its reverse the worst: the first beats the random, Gaussian and edge maps,
    the second is flagged on both metrics against all three."""
    model, x = RegionModel(), square_input()
    baselines = baseline_scores(model, x, 0, baseline="zeros", seed=3)
    assert list(baselines) == ["random", "gaussian", "edges"]
    areas = ("deletion_auc", "insertion_auc")

    def areas_of(scores: FaithfulnessScores) -> dict[str, np.ndarray]:
        return {k: v for k, v in scores.summary.items() if k in areas}

    best = faithfulness_scores(model, x, square_map(), 0, baseline="zeros")
    np.testing.assert_allclose(best.summary["deletion_auc"], [REGION / 2], atol=1e-6)
    verdict = compare_with_baselines(areas_of(best), {k: areas_of(v) for k, v in baselines.items()})
    assert not verdict.flagged and verdict.failures == ()
    worst = faithfulness_scores(model, x, 1 - square_map(), 0, baseline="zeros")
    verdict = compare_with_baselines(areas_of(worst), {k: areas_of(v) for k, v in baselines.items()})
    assert verdict.flagged and set(verdict.failures) == {(m, k) for m in areas for k in baselines}


def test_baseline_scores_are_seeded_scores_of_the_baseline_maps(cifar_batch):
    model, x, _, targets = cifar_batch
    scores = baseline_scores(model, x, targets, kinds=("random", "edges"), seed=4, steps=5)
    assert list(scores) == ["random", "edges"]
    again = baseline_scores(model, x, targets, kinds=("random",), seed=4, steps=5)
    for metric, values in scores["random"].summary.items():
        np.testing.assert_array_equal(again["random"].summary[metric], values)
        assert values.shape == (3,) and values.dtype == np.float64
    direct = faithfulness_scores(model, x, baseline_maps(x, "random", seed=4), targets, steps=5, seed=4)
    np.testing.assert_array_equal(direct.curves.deletion, scores["random"].curves.deletion)
    np.testing.assert_array_equal(direct.road.scores, scores["random"].road.scores)
    other = baseline_scores(model, x, targets, kinds=("random",), seed=5, steps=5)
    assert not np.array_equal(other["random"].curves.deletion, scores["random"].curves.deletion)
    # the method compared is a FaithfulnessScores too
    verdict = compare_with_baselines(scores["edges"], scores)
    assert verdict.flagged and ("deletion_auc", "edges") in verdict.failures  # no map beats itself


def test_rank_by_faithfulness_orders_by_mean_rank_in_each_direction():
    """a: ranks 1, 2, 1 (mean 4/3); b: 2, 1, 2 (5/3); c: last everywhere; d ties a exactly and stays after it."""
    means = {
        "a": {"deletion_auc": 0.1, "insertion_auc": 0.7, "road": 0.3},
        "b": {"deletion_auc": 0.2, "insertion_auc": 0.8, "road": 0.2},
        "c": {"deletion_auc": 0.9, "insertion_auc": 0.1, "road": -0.5},
    }
    assert rank_by_faithfulness(means) == ["a", "b", "c"]
    assert rank_by_faithfulness({("m", "l"): {"road": 0.0}}) == [("m", "l")]
    assert rank_by_faithfulness({"x": {"deletion_auc": 0.5}, "y": {"deletion_auc": 0.5}}) == ["x", "y"]
    with pytest.raises(InputError, match="same metrics"):
        rank_by_faithfulness({"a": {"road": 0.1}, "b": {"deletion_auc": 0.1}})
    with pytest.raises(InputError, match="means"):
        rank_by_faithfulness({})


def test_baseline_comparison_refuses_bad_arguments(cifar_batch):
    good = {"deletion_auc": [0.5]}
    for args, kwargs, match in [
        (({}, {"random": good}), {}, "method_scores"),
        (({"auc": [0.5]}, {"random": good}), {}, "unknown metric"),
        (({"deletion_auc": [np.nan]}, {"random": good}), {}, "finite"),
        (({"deletion_auc": []}, {"random": good}), {}, "finite"),
        (({"deletion_auc": ["a"]}, {"random": good}), {}, "finite"),
        ((good, {}), {}, "baselines"),
        ((good, {"random": {"road": [0.1]}}), {}, "lacks the metrics"),
        ((good, {"random": good}), {"margin": -1}, "margin"),
        ((good, {"random": good}), {"margin": True}, "margin"),
    ]:
        with pytest.raises(InputError, match=match):
            compare_with_baselines(*args, **kwargs)
    model, x, _, targets = cifar_batch
    for kinds in ("random", (), ("sobel",)):
        with pytest.raises(InputError, match="kind"):
            baseline_scores(model, x, targets, kinds=kinds)


# --- sanity checks -------------------------------------------------------------------------------------------------


def grad_cam(model: nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    return compute_cams(model, x, ["4"], class_idx=classes).maps["4"]


def test_maps_that_ignore_the_model_fail_the_randomisation_test(cifar_batch):
    """Edge maps do not change when the weights do: rank correlation and SSIM stay exactly 1 at every step. Layers are
    randomised from the logits down."""
    model, x, _, targets = cifar_batch
    result = cascading_randomization(model, x, targets, lambda m, x, k: baseline_maps(x, "edges"))
    assert result.layers == ("8", "4", "2", "0")
    np.testing.assert_allclose(result.spearman, 1.0)
    np.testing.assert_allclose(result.ssim, 1.0)


def test_grad_cam_maps_change_as_the_layers_are_randomised(cifar_batch):
    model, x, _, targets = cifar_batch
    state = torch.get_rng_state()
    result = cascading_randomization(model, x, targets, grad_cam, seed=2)
    assert torch.equal(torch.get_rng_state(), state)
    assert result.spearman.shape == result.ssim.shape == (3, 4)
    assert np.nanmean(result.spearman[:, -1]) < 0.9 and np.nanmean(result.ssim[:, -1]) < 0.9
    again = cascading_randomization(model, x, targets, grad_cam, seed=2)
    np.testing.assert_array_equal(again.spearman, result.spearman)
    with pytest.raises(InputError, match="explain"):
        cascading_randomization(model, x, targets, lambda m, x, k: np.zeros((1, 4, 4), np.float32))


class TwoFeatureModel(nn.Module):
    """Features ``relu(conv(x))`` with channel 0 ``= x_0`` and channel 1 ``= 1 - x_0``; logits ``head @ GAP(features)``.
    Grad-CAM of class k at ``features`` is ``minmax(relu(head[k] . features))``: with ``head = I`` class 0's map is
    ``x_0`` and class 1's ``1 - x_0`` (exact reverses); with rows ``(1, 0)`` and ``(2, 0)`` both maps are ``x_0``."""

    def __init__(self, head: list[list[float]]) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features[0].weight.zero_()
            self.features[0].weight[:, 0, 0, 0] = torch.tensor([1.0, -1.0])
            self.features[0].bias.copy_(torch.tensor([0.0, 1.0]))
            self.head.weight.copy_(torch.tensor(head))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


def ramp_input() -> tuple[torch.Tensor, np.ndarray]:
    """An 8x8 input whose channel 0 rises strictly from 0 to 1 in flat-index order, and that ramp as a map."""
    ramp = np.arange(64, dtype=np.float32).reshape(8, 8) / 63
    x = torch.zeros(1, 3, 8, 8)
    x[0, 0] = torch.from_numpy(ramp)
    return x, ramp


def features_cam(model: nn.Module, x: torch.Tensor, classes: list[int]) -> np.ndarray:
    return compute_cams(model, x, ["features"], class_idx=classes).maps["features"]


def test_random_logit_maps_that_reverse_with_the_class_correlate_minus_one():
    """Two classes: the other class is always the one not explained. Its map ``1 - x_0`` ranks every pixel in reverse:
    Spearman -1 exactly, and SSIM that of the two analytic maps (negative: anti-correlated structure)."""
    x, ramp = ramp_input()
    for explained in (0, 1):
        result = random_logit(TwoFeatureModel([[1, 0], [0, 1]]), x, explained, features_cam, seed=5)
        assert result.class_idx == (explained,) and result.other_class_idx == (1 - explained,)
        np.testing.assert_allclose(result.maps[0], ramp if explained == 0 else 1 - ramp, atol=1e-5)
        np.testing.assert_allclose(result.other_maps[0], 1 - ramp if explained == 0 else ramp, atol=1e-5)
        np.testing.assert_allclose(result.spearman, [-1.0], atol=1e-12)
        expected = ssim_of(ramp.astype(np.float64), 1 - ramp.astype(np.float64), data_range=1.0, win_size=7)
        np.testing.assert_allclose(result.ssim, [expected], atol=1e-4)
        assert result.ssim[0] < 0


def test_random_logit_maps_that_ignore_the_class_are_identical():
    """Class rows (1, 0) and (2, 0): both classes' Grad-CAMs are ``x_0``, so similarity is exactly 1."""
    x, ramp = ramp_input()
    result = random_logit(TwoFeatureModel([[1, 0], [2, 0]]), x, 1, features_cam)
    assert result.other_class_idx == (0,)
    np.testing.assert_allclose(result.maps, result.other_maps, atol=1e-6)
    np.testing.assert_allclose(result.maps[0], ramp, atol=1e-5)
    np.testing.assert_allclose(result.spearman, [1.0])
    np.testing.assert_allclose(result.ssim, [1.0], atol=1e-6)


def test_random_logit_is_seeded_and_each_map_is_the_methods_own(cifar_batch):
    """Other classes are never the explained one, the same for the same seed, drawn without the global RNG; each map
    equals Grad-CAM of its class on the model itself; a rank correlation of the same maps matches."""
    model, x, _, targets = cifar_batch
    state = torch.get_rng_state()
    result = random_logit(model, x, targets, grad_cam, seed=7)
    assert torch.equal(torch.get_rng_state(), state)
    assert result.class_idx == tuple(targets)
    assert all(o != k and 0 <= o < 10 for o, k in zip(result.other_class_idx, targets))
    again = random_logit(model, x, targets, grad_cam, seed=7)
    assert again.other_class_idx == result.other_class_idx
    np.testing.assert_array_equal(again.spearman, result.spearman)
    np.testing.assert_array_equal(again.ssim, result.ssim)
    np.testing.assert_allclose(result.maps, grad_cam(model, x, targets), atol=1e-6)
    np.testing.assert_allclose(result.other_maps, grad_cam(model, x, list(result.other_class_idx)), atol=1e-6)
    draws = {random_logit(model, x, targets, grad_cam, seed=s).other_class_idx for s in range(4)}
    assert len(draws) > 1  # the seed matters
    assert result.spearman.shape == result.ssim.shape == (3,) and result.maps.dtype == np.float32
    assert np.all(result.spearman <= 1) and np.all(result.ssim <= 1)


def test_random_logit_refuses_bad_arguments(cifar_batch):
    model, x, _, targets = cifar_batch
    with pytest.raises(InputError, match="explain"):
        random_logit(model, x, targets, lambda m, x, k: np.zeros((1, 4, 4), np.float32))
    with pytest.raises(InputError, match="explain"):
        random_logit(model, x, targets, "grad_cam")
    with pytest.raises(InputError, match="seed"):
        random_logit(model, x, targets, grad_cam, seed=-1)
    with pytest.raises(ClassIndexError):
        random_logit(model, x, 10, grad_cam)
    one_class = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 1)).eval()
    with pytest.raises(InputError, match="at least 2 classes"):
        random_logit(one_class, x, 0, lambda m, x, k: baseline_maps(x, "edges"))


def test_cascading_randomization_reports_progress_per_step(cifar_batch):
    model, x, _, targets = cifar_batch
    calls = []
    result = cascading_randomization(
        model, x, targets, lambda m, x, k: baseline_maps(x, "edges"), progress=lambda d, t: calls.append((d, t))
    )
    assert calls == [(d, len(result.layers) + 1) for d in range(1, len(result.layers) + 2)]


# --- the shared model ----------------------------------------------------------------------------------------------


def test_metrics_leave_a_shared_model_as_they_found_it(snapshot, one_torch_thread):
    """Modes (train mode with an eval sub-tree), frozen flags, a pre-set gradient, weights, hooks and the global RNG."""
    model = mixed_state(seeded_resnet18())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = baseline_maps(x, "gaussian")
    before, rng = snapshot(model), torch.get_rng_state()
    deletion_insertion(model, x, maps, [1, 2], steps=3)
    road(model, x, maps, [1, 2], percentiles=(50,))
    confidence_change(model, x, maps, 1)
    average_drop_increase(model, x, maps, 1)
    compare_with_baselines(
        faithfulness_scores(model, x, maps, 1, steps=2), baseline_scores(model, x, 1, kinds=("edges",), steps=2)
    )
    calls = []
    cascading_randomization(
        model, x, 1, lambda m, x, k: calls.append(m) or compute_cams(m, x, ["layer4"], class_idx=k).maps["layer4"]
    )
    random_logit(
        model, x, 1, lambda m, x, k: calls.append(m) or compute_cams(m, x, ["layer4"], class_idx=k).maps["layer4"]
    )
    assert calls and all(m is not model for m in calls)
    before.assert_unchanged()
    assert torch.equal(torch.get_rng_state(), rng)


# --- targets -------------------------------------------------------------------------------------------------------


def binary_cnn() -> nn.Module:
    """``small_cnn`` with a one-logit (binary) head: its output is ``(B, 1)``."""

    def build() -> nn.Module:
        model = small_cnn()
        model[-1] = nn.Linear(128, 1)
        with torch.no_grad():
            model[-1].weight.mul_(30)
        return model

    return seeded(build, seed=5)


@dataclass(frozen=True)
class SoftmaxOfOut:
    """A target reading the ``"out"`` entry of a dict output: the softmax probability of ``category``."""

    category: int

    def __call__(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.softmax(output["out"], dim=-1)[self.category]


def target_cases(classes: list[int]) -> dict[str, tuple[nn.Module, list]]:
    """The model and the pytorch-grad-cam targets of each kind of head: raw logits, softmax, one binary logit."""
    return {
        "logit": (small_cnn(), [ClassifierOutputTarget(k) for k in classes]),
        "softmax": (small_cnn(), [ClassifierOutputSoftmaxTarget(k) for k in classes]),
        "binary": (binary_cnn(), [BinaryClassifierOutputTarget(k % 2) for k in classes]),
    }


TARGET_KINDS = ("logit", "softmax", "binary")


@REFERENCE_WARNINGS
@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_road_with_targets_equals_pytorch_grad_cam(cifar_batch, kind, monkeypatch):
    """pytorch-grad-cam's ROAD metrics score each input by ``target(output)`` as returned; given the same targets
    (raw logits, softmax, a one-logit binary head) the numbers agree, one percentile (``ROADMostRelevantFirst``,
    ``ROADLeastRelevantFirst``) and averaged (``ROAD*Average``, ``ROADCombined``)."""
    _, x, maps, classes = cifar_batch
    model, targets = target_cases(classes)[kind]
    monkeypatch.setattr(
        reference_road.NoisyLinearImputer.__init__, "__defaults__", (0.0, reference_road.neighbors_weights)
    )
    single = {"morf": reference_road.ROADMostRelevantFirst, "lerf": reference_road.ROADLeastRelevantFirst}
    for order, reference in single.items():
        expected = reference(percentile=30)(x, maps, targets, model).reshape(-1)
        result = road(model, x, maps, targets=targets, order=order, noise=0, percentiles=(30,))
        np.testing.assert_allclose(result.scores, expected, atol=1e-4, rtol=0)
    for order, reference in REFERENCES.items():
        expected = reference([20, 50, 80])(x, maps, targets, model).reshape(-1)
        result = road(model, x, maps, targets=targets, order=order, noise=0, percentiles=(20, 50, 80))
        np.testing.assert_allclose(result.scores, expected, atol=1e-4, rtol=0)
        changes = result.lerf if result.morf is None else result.morf
        assert np.abs(changes).max() > 0.01  # the comparison is not between near-zeros


@REFERENCE_WARNINGS
@pytest.mark.parametrize("kind", TARGET_KINDS)
def test_confidence_metrics_with_targets_equal_pytorch_grad_cam(cifar_batch, kind):
    """``CamMultImageConfidenceChange``, ``DropInConfidence`` and ``IncreaseInConfidence`` given the same targets."""
    _, x, maps, classes = cifar_batch
    model, targets = target_cases(classes)[kind]
    expected = CamMultImageConfidenceChange()(x, maps, targets, model).reshape(-1)
    result = confidence_change(model, x, maps, targets=targets, batch_size=2)
    np.testing.assert_allclose(result, expected, atol=1e-5, rtol=0)
    assert np.abs(result).max() > 1e-3
    drop = average_drop_increase(model, x, torch.from_numpy(maps), targets=targets)
    reference_drop = DropInConfidence()(x, maps, targets, model).reshape(-1)
    positive = drop.original > 0  # Average Drop divides by Y_i; the reference's drop is Y_i - O_i, clipped at 0
    np.testing.assert_allclose(drop.drop[positive] * drop.original[positive], reference_drop[positive], atol=1e-5)
    np.testing.assert_array_equal(drop.increased, IncreaseInConfidence()(x, maps, targets, model).reshape(-1) > 0)


def test_softmax_targets_give_the_numbers_of_class_idx(cifar_batch):
    """camlib's ``SoftmaxTarget`` and pytorch-grad-cam's ``ClassifierOutputSoftmaxTarget`` score what ``class_idx``
    scores: every metric's numbers are the same."""
    model, x, maps, classes = cifar_batch
    for targets in ([SoftmaxTarget(k) for k in classes], [ClassifierOutputSoftmaxTarget(k) for k in classes]):
        by_class = deletion_insertion(model, x, maps, classes, steps=4)
        by_target = deletion_insertion(model, x, maps, targets=targets, steps=4)
        np.testing.assert_allclose(by_target.deletion, by_class.deletion, atol=1e-6, rtol=0)
        np.testing.assert_allclose(by_target.insertion, by_class.insertion, atol=1e-6, rtol=0)
        by_class_road = road(model, x, maps, classes, percentiles=(30, 70), seed=3)
        by_target_road = road(model, x, maps, targets=targets, percentiles=(30, 70), seed=3)
        np.testing.assert_allclose(by_target_road.morf, by_class_road.morf, atol=1e-6, rtol=0)
        np.testing.assert_allclose(by_target_road.lerf, by_class_road.lerf, atol=1e-6, rtol=0)
        np.testing.assert_allclose(
            confidence_change(model, x, maps, targets=targets), confidence_change(model, x, maps, classes), atol=1e-6
        )
        scores = faithfulness_scores(model, x, maps, targets=targets, steps=3).summary
        for metric, values in faithfulness_scores(model, x, maps, classes, steps=3).summary.items():
            np.testing.assert_allclose(scores[metric], values, atol=1e-6, rtol=0)
        baselines = baseline_scores(model, x, targets=targets, kinds=("edges",), steps=2)["edges"].summary
        for metric, values in baseline_scores(model, x, classes, kinds=("edges",), steps=2)["edges"].summary.items():
            np.testing.assert_allclose(baselines[metric], values, atol=1e-6, rtol=0)


def test_logit_targets_score_the_raw_logit_on_the_analytic_model():
    """``RegionModel``'s class-0 logit is ``log m``: deleting the square with a zero baseline sends it to
    ``log 0 = -inf``; with the map halved, ``O = log(m / 2)``."""
    x = square_input(0.8)
    result = confidence_change(RegionModel(), x, 0.5 * square_map(), targets=[ClassTarget(0)])
    np.testing.assert_allclose(result, [math.log(0.4) - math.log(0.8)], atol=1e-6)
    result = confidence_change(RegionModel(), x, 0.5 * square_map(), targets=[SigmoidTarget(0)])
    sigmoid = 1 / (1 + np.exp(-np.log([0.4, 0.8])))
    np.testing.assert_allclose(result, [sigmoid[0] - sigmoid[1]], atol=1e-6)


class PerImageOutputs(nn.Module):
    """A model whose output is a list with one ``{"out": (C,)}`` dict per image (as a detector's list of dicts)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        return [{"out": row} for row in self.inner(x)]


@pytest.mark.parametrize("wrap", [DictOutput, PerImageOutputs])
def test_a_dict_or_list_output_model_is_scored_by_a_target_reading_it(cifar_batch, wrap):
    """Metrics need no ``(B, C)`` logits when the targets read the output: a ``{"out": logits}`` model, or one with a
    list of per-image dicts, with a target reading ``out`` scores as the plain model with ``class_idx``; without
    targets it is refused."""
    model, x, maps, classes = cifar_batch
    wrapped = wrap(model)
    targets = [SoftmaxOfOut(k) for k in classes]
    np.testing.assert_allclose(
        confidence_change(wrapped, x, maps, targets=targets), confidence_change(model, x, maps, classes), atol=1e-6
    )
    np.testing.assert_allclose(
        deletion_insertion(wrapped, x, maps, targets=targets, steps=3).deletion_auc,
        deletion_insertion(model, x, maps, classes, steps=3).deletion_auc,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        road(wrapped, x, maps, targets=targets, percentiles=(50,)).scores,
        road(model, x, maps, classes, percentiles=(50,)).scores,
        atol=1e-6,
    )
    with pytest.raises(InputError, match="logits"):
        confidence_change(wrapped, x, maps, classes)


def _run_deletion(model, x, maps, **kwargs):
    return deletion_insertion(model, x, maps, steps=2, **kwargs)


def _run_road(model, x, maps, **kwargs):
    return road(model, x, maps, percentiles=(50,), **kwargs)


def _run_faithfulness(model, x, maps, **kwargs):
    return faithfulness_scores(model, x, maps, steps=2, **kwargs)


def _run_baselines(model, x, maps, **kwargs):
    return baseline_scores(model, x, kinds=("edges",), steps=2, **kwargs)


def _run_cascading(model, x, maps, **kwargs):
    return cascading_randomization(model, x, kwargs.pop("class_idx", None), grad_cam_targets, **kwargs)


def _run_random_logit(model, x, maps, **kwargs):
    return random_logit(model, x, kwargs.pop("class_idx", None), grad_cam_targets, **kwargs)


METRIC_RUNS = {
    "deletion_insertion": _run_deletion,
    "road": _run_road,
    "confidence_change": confidence_change,
    "average_drop_increase": average_drop_increase,
    "faithfulness_scores": _run_faithfulness,
    "baseline_scores": _run_baselines,
    "cascading_randomization": _run_cascading,
    "random_logit": _run_random_logit,
}


class NaNTarget:
    """A target whose score is NaN (a target dividing by zero, an overflowed output)."""

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return output[0] * float("nan")


@pytest.mark.parametrize("metric", list(METRIC_RUNS))
def test_every_metric_refuses_bad_targets(cifar_batch, metric):
    """Both ``class_idx`` and ``targets``, a wrong count, something not callable, a target failing on the output."""
    model, x, maps, classes = cifar_batch
    run = METRIC_RUNS[metric]
    targets = [ClassTarget(k) for k in classes]
    with pytest.raises(InputError, match="not both"):
        run(model, x, maps, class_idx=classes, targets=targets)
    for wrong in (targets[:2], targets + targets[:1]):
        with pytest.raises(TargetError, match=f"got {len(wrong)} targets for a batch of 3"):
            run(model, x, maps, targets=wrong)
    with pytest.raises(InputError, match="callables"):
        run(model, x, maps, targets=[0, 3, 7])
    with pytest.raises(TargetError, match="targets\\[0\\]"):
        run(model, x, maps, targets=[ClassifierOutputTarget(12), *targets[1:]])  # a class the model does not have


@pytest.mark.bad_input(34)
@pytest.mark.parametrize("metric", list(METRIC_RUNS))
def test_every_metric_refuses_a_non_finite_target_score(cifar_batch, metric):
    model, x, maps, _ = cifar_batch
    with pytest.raises(NonFiniteError):
        METRIC_RUNS[metric](model, x, maps, targets=[NaNTarget()] * 3)


# --- sanity checks with targets ------------------------------------------------------------------------------------


def grad_cam_targets(model: nn.Module, x: torch.Tensor, targets: list) -> np.ndarray:
    return compute_cams(model, x, ["4"], targets=targets).maps["4"]


def test_cascading_randomization_passes_the_targets_to_explain(cifar_batch):
    """With ``targets`` the explainer gets the targets in place of the classes: logit targets give the numbers of
    ``class_idx``; a dict-output model works with a target reading its output."""
    model, x, _, classes = cifar_batch
    by_class = cascading_randomization(model, x, classes, grad_cam, seed=2)
    seen = []

    def explain(m, x, targets):
        seen.append(targets)
        return grad_cam_targets(m, x, targets)

    targets = [ClassTarget(k) for k in classes]
    by_target = cascading_randomization(model, x, None, explain, targets=targets, seed=2)
    assert all(t == targets for t in seen) and len(seen) == len(by_target.layers) + 1
    assert by_target.layers == by_class.layers
    np.testing.assert_allclose(by_target.spearman, by_class.spearman, atol=1e-6)
    np.testing.assert_allclose(by_target.ssim, by_class.ssim, atol=1e-6)
    wrapped = DictOutput(model)
    edges = cascading_randomization(
        wrapped, x, None, lambda m, x, t: baseline_maps(x, "edges"), targets=[SoftmaxOfOut(k) for k in classes]
    )
    assert edges.layers == ("inner.8", "inner.4", "inner.2", "inner.0")
    np.testing.assert_allclose(edges.spearman, 1.0)


@pytest.mark.parametrize("make", [ClassTarget, SoftmaxTarget, ClassifierOutputTarget, ClassifierOutputSoftmaxTarget])
def test_random_logit_swaps_the_class_of_class_targets(cifar_batch, make):
    """The other target is the same kind of target for the other class, drawn as with ``class_idx``."""
    model, x, _, classes = cifar_batch
    by_class = random_logit(model, x, classes, grad_cam, seed=7)
    seen = []

    def explain(m, x, targets):
        seen.append(targets)
        return baseline_maps(x, "edges")

    result = random_logit(model, x, None, explain, targets=[make(k) for k in classes], seed=7)
    assert result.class_idx == tuple(classes) and result.other_class_idx == by_class.other_class_idx
    (given,) = seen
    assert all(type(t) is make for t in given)
    assert [t.category for t in given] == classes + list(by_class.other_class_idx)


def test_random_logit_refuses_targets_without_a_class(cifar_batch):
    """The test swaps a class for another: a binary head's target, or a model without ``(B, C)`` logits, has none."""
    _, x, _, classes = cifar_batch
    with pytest.raises(MethodError, match="explains no class"):
        random_logit(binary_cnn(), x, None, grad_cam_targets, targets=[BinaryClassifierOutputTarget(1)] * 3)
    model = cifar_batch[0]
    with pytest.raises(MethodError, match="\\(B, num_classes\\) logits"):
        random_logit(DictOutput(model), x, None, grad_cam_targets, targets=[SoftmaxOfOut(k) for k in classes])
    with pytest.raises(TargetError, match="out of bounds"):
        random_logit(model, x, None, grad_cam_targets, targets=[SoftmaxTarget(12)] * 3)
    with pytest.raises(ClassIndexError, match="-1"):  # reads the last class; as a class to swap it is refused
        random_logit(model, x, None, grad_cam_targets, targets=[SoftmaxTarget(-1)] * 3)
