"""Tests of camlib.cost: the estimate before a slow CAM, from the registry's family, channel counts and a timed
forward."""

from __future__ import annotations

import math
import time

import pytest
import torch
from conftest import mixed_state, seeded, seeded_resnet18
from torch import nn

from camlib.cam import METHODS, compute_cams
from camlib.cost import CostEstimate, estimate_cost, time_forward
from camlib.errors import InputError, MethodError

ONE_PASS = [name for name, spec in METHODS.items() if spec.family != "perturbation"]
PERTURBATION = [name for name, spec in METHODS.items() if spec.family == "perturbation" and spec.per_channel]
PER_SAMPLE = [name for name, spec in METHODS.items() if spec.family == "perturbation" and not spec.per_channel]


@pytest.mark.parametrize("method", ONE_PASS)
def test_one_pass_methods_cost_no_extra_forward(method):
    assert estimate_cost(method, [1280, 64], seconds_per_image=0.5) == CostEstimate(method, 0, 0, 0.0)


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
