"""camlib.cam's registry and package layout: the fixed order of ``METHODS``, each method in its family's module,
``MethodSpec`` by keyword; ``CamOptions``, the one definition of the options ``compute_cams`` and ``compute_cam_grid``
take."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers.models import seeded
from torch import nn

from camlib.cam import METHODS, CamOptions, MethodSpec, compute_cam_grid, compute_cams, register_method
from camlib.cam.registry import _order_methods
from camlib.errors import InputError, MethodError
from camlib.targets import ClassTarget, SoftmaxTarget

# The order pickers, tables and the Compare grid show; fixed on purpose (changing it changes every page and report).
EXPECTED_ORDER = (  # noqa: SIM905 (one string: a list literal would be formatted one name per line)
    "gradcam gradcam++ refinecam xgradcam hirescam shapleycam layercam finercam eigencam kpcacam fem "
    "gradcam_elementwise eigengradcam scorecam ablationcam sscam iscam smoothgradcam++ sess randomcam legrad cam"
).split()


def test_methods_are_listed_in_their_fixed_order():
    assert list(METHODS) == EXPECTED_ORDER


def test_each_method_lives_in_its_familys_module():
    """Methods are grouped by family, one module each; LeGrad (an activation-family map read from a transformer's
    attention) lives with the transformer methods."""
    for name, spec in METHODS.items():
        expected = "camlib.cam.transformer" if name == "legrad" else f"camlib.cam.{spec.family}"
        assert spec.raw_map.__module__ == expected, name


@pytest.fixture
def scratch_method():
    """Registers a throwaway method and removes it afterwards, leaving METHODS as it was."""
    before = dict(METHODS)
    yield "scratch_test_method"
    METHODS.clear()
    METHODS.update(before)


def test_a_method_registered_later_follows_the_fixed_order(scratch_method):
    @register_method(scratch_method, label="Scratch", paper="none", family="activation", cost="1 forward")
    def _scratch(e):
        return e.activations.sum(dim=1)

    _order_methods()
    assert list(METHODS) == [*EXPECTED_ORDER, scratch_method]
    assert METHODS[scratch_method].raw_map is _scratch and METHODS[scratch_method].samples == 1


def test_register_method_takes_methodspecs_fields_by_keyword_only(scratch_method):
    with pytest.raises(MethodError, match="by keyword"):
        register_method(scratch_method, label="x", paper="x", family="activation", cost="x", sample=3)
    with pytest.raises(TypeError):
        register_method(scratch_method, "label", "paper", "activation", "cost")  # type: ignore[misc]
    with pytest.raises(TypeError):
        MethodSpec("x", "x", "x", "activation", "x", lambda e: e)  # type: ignore[misc]
    register_method(scratch_method, label="x", paper="x", family="activation", cost="x")(lambda e: e)
    with pytest.raises(MethodError, match="registered twice"):
        register_method(scratch_method, label="x", paper="x", family="activation", cost="x")(lambda e: e)


def test_every_spec_field_is_declared_by_keyword_in_register_method():
    """The keyword declaration and ``MethodSpec`` cannot drift apart: each spec's fields round-trip."""
    for spec in METHODS.values():
        values = {f.name: getattr(spec, f.name) for f in dataclasses.fields(MethodSpec)}
        assert MethodSpec(**values) == spec


# --- CamOptions: the options of compute_cams and compute_cam_grid, once ---------------------------------------------


@pytest.fixture(scope="module")
def small_net() -> nn.Module:
    return seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 5)
        ),
        seed=2,
    )


def _assert_same_grid(actual: dict, expected: dict) -> None:
    assert list(actual) == list(expected)
    for method, result in expected.items():
        assert actual[method].class_idx == result.class_idx and actual[method].counterfactual == result.counterfactual
        np.testing.assert_array_equal(actual[method].raw["1"], result.raw["1"])
        np.testing.assert_array_equal(actual[method].maps["1"], result.maps["1"])


@pytest.mark.parametrize(
    ("methods", "options"),
    [
        (["gradcam", "layercam"], CamOptions(counterfactual=True, eigen_smooth=True)),
        (["sscam", "randomcam"], CamOptions(seed=7, n_samples=2, batch_size=3)),
        (["gradcam"], CamOptions(aug_smooth=True, targets=[ClassTarget(1), ClassTarget(4)])),
    ],
)
def test_options_give_what_the_same_keywords_give(small_net, methods, options):
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    keywords = {f.name: getattr(options, f.name) for f in dataclasses.fields(options) if f.name != "method"}
    keywords["scorecam_batch_size"] = keywords.pop("batch_size")
    by_options = compute_cam_grid(small_net, x, ["1"], methods, options=options)
    _assert_same_grid(by_options, compute_cam_grid(small_net, x, ["1"], methods, **keywords))
    alone = compute_cams(small_net, x, ["1"], method=methods[0], **keywords)
    _assert_same_grid({methods[0]: alone}, {methods[0]: by_options[methods[0]]})
    # and the options take effect: without them the maps differ
    plain = compute_cam_grid(small_net, x, ["1"], methods)
    assert any(not np.array_equal(plain[m].raw["1"], by_options[m].raw["1"]) for m in methods)


def test_options_are_frozen_hashable_and_keep_targets_as_a_tuple():
    options = CamOptions(method="scorecam", targets=[ClassTarget(1), SoftmaxTarget(2)], seed=3)
    assert options.targets == (ClassTarget(1), SoftmaxTarget(2))
    assert hash(options) == hash(CamOptions(method="scorecam", targets=(ClassTarget(1), SoftmaxTarget(2)), seed=3))
    with pytest.raises(dataclasses.FrozenInstanceError):
        options.seed = 4  # type: ignore[misc]


def test_options_and_option_keywords_together_or_unknown_keywords_are_refused(small_net):
    x = torch.zeros(1, 3, 16, 16)
    with pytest.raises(InputError, match="not both"):
        compute_cam_grid(small_net, x, ["1"], ["gradcam"], options=CamOptions(), seed=1)
    with pytest.raises(InputError, match="unknown CAM options"):
        compute_cam_grid(small_net, x, ["1"], ["gradcam"], sed=1)
    with pytest.raises(InputError, match="must be True or False"):
        compute_cam_grid(small_net, x, ["1"], ["gradcam"], options=CamOptions(aug_smooth="yes"))
