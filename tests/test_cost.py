"""Tests of camlib.cost: the estimate before a slow CAM, from the registry's family, channel counts and a timed
forward."""

from __future__ import annotations

import math
import time

import pytest
import torch
from helpers.models import mixed_state, seeded, seeded_resnet18
from torch import nn

import camlib.cost
from camlib.cam import METHODS, compute_cams
from camlib.cost import (
    KERNEL_PROBE,
    PER_LAYER_EIGEN,
    PER_LAYER_PASSES,
    SVD_PROBE,
    CostEstimate,
    PassTimes,
    estimate_cost,
    time_forward,
    time_passes,
)
from camlib.errors import InputError, MethodError

PER_LAYER = [name for name, spec in METHODS.items() if spec.second_order or name in PER_LAYER_PASSES]
ONE_PASS = [
    name
    for name, spec in METHODS.items()
    if spec.family != "perturbation" and name not in PER_LAYER and name not in PER_LAYER_EIGEN
]
PASSES = PassTimes(forward=0.01, backward=0.03, hessian=0.2)
PERTURBATION = [name for name, spec in METHODS.items() if spec.family == "perturbation" and spec.per_channel]
PER_SAMPLE = [name for name, spec in METHODS.items() if spec.family == "perturbation" and not spec.per_channel]


@pytest.mark.parametrize("method", ONE_PASS)
def test_one_pass_methods_cost_no_extra_forward(method):
    assert estimate_cost(method, [1280, 64], seconds_per_image=0.5) == CostEstimate(method, 0, 0, 0.0)
    assert estimate_cost(method, [1280, 64], seconds_per_image=0.5, passes=PASSES) == CostEstimate(method, 0, 0, 0.0)


def test_every_family_has_a_member_whose_cost_grows_with_the_layers():
    """The families the estimate must cover: gradient (ShapleyCAM), activation (LeGrad), perturbation (all)."""
    assert {METHODS[m].family for m in PER_LAYER} == {"gradient", "activation"}
    assert {"shapleycam", "legrad"} <= set(PER_LAYER)


@pytest.mark.bad_input(72)
@pytest.mark.parametrize("method", PER_LAYER)
@pytest.mark.parametrize("channels", [[64], [64, 128, 3], [1] * 8])
def test_per_layer_methods_cost_their_passes_per_layer_whatever_the_channels(method, channels):
    """ShapleyCAM: one Hessian-vector product per layer (a second backward); LeGrad: its own forward and backward
    per layer. The estimate is that count times the model's timed pass, and needs the timings."""
    estimate = estimate_cost(method, channels, seconds_per_image=0.5, passes=PASSES)
    assert estimate.extra_forwards == 0 and estimate.batches == 0
    if METHODS[method].second_order:
        assert estimate.hessian_products == len(channels) and estimate.extra_backwards == 0
        assert math.isclose(estimate.seconds, len(channels) * PASSES.hessian)
    else:
        assert estimate.extra_backwards == len(channels) and estimate.hessian_products == 0
        assert math.isclose(estimate.seconds, len(channels) * PASSES.backward)
    for passes in (None, 0.2, (0.01, 0.03, 0.2)):
        with pytest.raises(InputError, match="passes"):
            estimate_cost(method, channels, seconds_per_image=0.5, passes=passes)


def test_the_estimated_hessian_products_are_what_shapleycam_runs(monkeypatch):
    """One ``torch.autograd.grad`` for the gradients of every layer, then one per layer: the Hessian products."""
    calls = []
    real = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(kwargs.get("create_graph", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    model = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Conv2d(4, 5, 3), nn.Tanh(), _Head(5)))
    layers = ["0", "2", "3"]
    compute_cams(model, torch.rand(1, 3, 12, 12), layers, method="shapleycam")
    estimate = estimate_cost("shapleycam", [4, 5, 5], seconds_per_image=0.1, passes=PASSES)
    assert calls[0] is True and len(calls) - 1 == estimate.hessian_products == len(layers)


class _Head(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, 3)

    def forward(self, x):
        return self.linear(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("method", PERTURBATION)
@pytest.mark.parametrize("channels,batch_size,batches", [([1280], 32, 40), ([64, 65], 32, 2 + 3), ([5], 8, 1)])
def test_perturbation_methods_cost_one_forward_per_channel(method, channels, batch_size, batches):
    """Times the noisy or integration samples of SS-CAM and IS-CAM (one batch series per sample)."""
    samples = METHODS[method].samples
    estimate = estimate_cost(method, channels, seconds_per_image=0.04, batch_size=batch_size)
    assert estimate.extra_forwards == samples * sum(channels)
    assert estimate.batches == samples * batches
    assert math.isclose(estimate.seconds, 0.04 * samples * sum(channels))


class _Counting(nn.Module):
    """Counts the images each forward sees."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4))
        self.images = 0

    def forward(self, x):
        self.images += x.shape[0]
        return self.head(self.features(x))


@pytest.mark.parametrize("method", PER_SAMPLE)
def test_per_sample_methods_cost_their_noisy_passes_whatever_the_channels(method):
    """Smooth Grad-CAM++: one forward (and backward) per noisy copy of the input and layer, batched; SESS: about
    ``forwards_per_sample`` forwards per scale, one progress step per scale."""
    spec = METHODS[method]
    forwards = spec.samples * spec.forwards_per_sample
    estimate = estimate_cost(method, [1280, 64], seconds_per_image=0.5, batch_size=3)
    assert estimate.extra_forwards == 2 * forwards
    assert estimate.batches == 2 * (math.ceil(spec.samples / 3) if spec.batched else spec.samples)
    assert math.isclose(estimate.seconds, 0.5 * 2 * forwards)


@pytest.mark.parametrize("batch_size", [1, 4, 32])
def test_the_estimated_forward_count_is_what_scorecam_runs(batch_size):
    """The estimate's count is the number of extra images the model sees: Score-CAM's one per channel (and one
    batch per progress step)."""
    model = seeded(_Counting)
    steps: list[tuple[int, int]] = []
    compute_cams(
        model,
        torch.rand(1, 3, 8, 8),
        ["features.0"],
        method="scorecam",
        scorecam_batch_size=batch_size,
        progress=lambda done, total: steps.append((done, total)),
    )
    estimate = estimate_cost("scorecam", [6], seconds_per_image=0.0, batch_size=batch_size)
    assert model.images - 1 == estimate.extra_forwards  # minus the shared forward
    assert steps[-1] == (estimate.batches, estimate.batches)


class _Sleepy(nn.Module):
    """A model whose forward takes at least ``delay`` seconds, whatever the batch."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay, self.linear = delay, nn.Linear(3, 2)

    def forward(self, x):
        time.sleep(self.delay)
        return self.linear(x.mean(dim=(2, 3)))


def test_time_forward_is_the_forward_time_per_image():
    """A forward that sleeps 80 ms on a batch of 8 takes at least 10 ms per image (the lower bound cannot be beaten
    on a busy machine; the upper one is loose)."""
    seconds = time_forward(_Sleepy(0.08), (4, 4), batch_size=8)
    assert 0.01 <= seconds < 0.05


def test_time_forward_leaves_the_model_as_it_was(snapshot):
    model = mixed_state(seeded_resnet18())  # train mode, one eval sub-tree, a frozen weight, a pre-set gradient
    before = snapshot(model)
    assert time_forward(model, 32, batch_size=2) > 0
    before.assert_unchanged()


def test_an_unknown_method_is_a_method_error():
    with pytest.raises(MethodError, match="unknown CAM method"):
        estimate_cost("gradcam+++", [3], seconds_per_image=0.1)


@pytest.mark.parametrize("method", ["sscam", "iscam"])
def test_n_samples_scales_the_sampling_methods_cost(method):
    default = estimate_cost(method, [64], seconds_per_image=0.01)
    two = estimate_cost(method, [64], seconds_per_image=0.01, n_samples=2)
    assert two.extra_forwards == 64 * 2 and default.extra_forwards == 64 * METHODS[method].samples
    with pytest.raises(InputError, match="n_samples"):
        estimate_cost(method, [64], seconds_per_image=0.01, n_samples=0)


class _SlowGrad(torch.autograd.Function):
    """The identity, whose backward sleeps ``DELAY`` and is itself this function (so a second backward sleeps too)."""

    DELAY = 0.06

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        time.sleep(_SlowGrad.DELAY)
        return _SlowGrad.apply(grad)


class _SlowBackward(_Sleepy):
    """A forward that sleeps ``delay`` and whose score is not linear in the input (a Hessian product runs)."""

    def forward(self, x):
        time.sleep(self.delay)
        return self.linear((_SlowGrad.apply(x) ** 2).mean(dim=(2, 3)))


def test_time_passes_times_each_kind_of_pass():
    """Forward 40 ms; each backward through ``_SlowGrad`` 60 ms: a forward and backward takes at least 100 ms, and
    with a Hessian product (a second backward through the first) at least 160 ms (lower bounds hold on a busy
    machine; the upper ones are loose)."""
    passes = time_passes(_SlowBackward(0.04), (4, 4))
    assert 0.04 <= passes.forward < 0.2
    assert 0.10 <= passes.backward < 0.4
    assert 0.16 <= passes.hessian < 0.6


def test_time_passes_of_a_piecewise_linear_model_has_no_second_backward_to_run():
    passes = time_passes(seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), _Head(4))), 16)
    assert passes.forward > 0 and passes.backward > 0 and passes.hessian > 0


def test_time_passes_leaves_the_model_as_it_was(snapshot):
    model = mixed_state(seeded_resnet18())  # train mode, one eval sub-tree, a frozen weight, a pre-set gradient
    before = snapshot(model)
    assert time_passes(model, 32).hessian > 0
    before.assert_unchanged()


EIGEN_PASSES = PassTimes(forward=0.01, backward=0.03, hessian=0.2, kernel=2.0, svd=0.5)


@pytest.mark.bad_input(72)
@pytest.mark.parametrize(
    "positions,expected",
    [([2500], 2.0), ([5000], 8.0), ([1250], 1.0), ([49, 2500], 2.0 * 49 / 2500 + 2.0), ([8100] * 2, 2 * 2.0 * 3.24**2)],
)
def test_kpca_cam_costs_its_probe_kernel_scaled_to_each_layer(positions, expected):
    """The (hw, hw) kernel's build and Lanczos products grow as positions squared above the timed probe; below it the
    estimate stays linear (fixed costs dominate small kernels)."""
    estimate = estimate_cost(
        "kpcacam", [32] * len(positions), seconds_per_image=0.5, passes=EIGEN_PASSES, positions=positions
    )
    assert estimate == CostEstimate("kpcacam", 0, 0, pytest.approx(expected), eigenproblems=len(positions))


@pytest.mark.parametrize("method", ["eigencam", "eigengradcam"])
@pytest.mark.parametrize(
    "positions,channels,expected",
    [
        ([2500], [256], 0.5),
        ([2500], [512], 2.0),
        ([10000], [256], 2.0),
        ([49], [64], 0.5 * 49 * 64 * 49 / 2500 / 256**2),
    ],
)
def test_eigen_cam_costs_its_probe_svd_scaled_to_each_layer(method, positions, channels, expected):
    """An SVD of (hw, C) costs hw x C x min(hw, C) (Golub & Van Loan, Matrix Computations, 5.4)."""
    estimate = estimate_cost(method, channels, seconds_per_image=0.5, passes=EIGEN_PASSES, positions=positions)
    assert estimate.seconds == pytest.approx(expected) and estimate.eigenproblems == 1


@pytest.mark.parametrize("method", sorted(PER_LAYER_EIGEN))
def test_eigen_estimates_need_the_timings_and_every_layers_positions(method):
    for passes in (None, 0.2):
        with pytest.raises(InputError, match="passes"):
            estimate_cost(method, [64], seconds_per_image=0.5, passes=passes, positions=[49])
    for positions in (None, [49, 49], "49", [0], [True]):
        with pytest.raises(InputError, match="positions"):
            estimate_cost(method, [64], seconds_per_image=0.5, passes=EIGEN_PASSES, positions=positions)


def test_time_passes_times_the_eigen_methods_own_solvers_at_the_probe_sizes(monkeypatch):
    """The timed eigenproblems are camlib's KPCA-CAM kernel and Eigen-CAM SVD, on activations of the probe sizes."""
    seen = []
    for name in ("_kernel_projection", "eigen_projection"):
        real = getattr(camlib.cost, name)

        def record(acts, real=real):
            seen.append(tuple(acts.shape))
            return real(acts)

        monkeypatch.setattr(camlib.cost, name, record)
    kernel, svd = camlib.cost.time_eigenproblems()
    assert kernel > 0 and svd > 0
    assert seen == [(1, KERNEL_PROBE[1], 50, 50), (1, SVD_PROBE[1], 50, 50)]
