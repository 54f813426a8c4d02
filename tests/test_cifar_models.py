"""Tests of camlib.cifar_models: the CIFAR ResNets' shapes, sizes and CAM-able layers, and the input normalisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from camlib.cam import compute_cams
from camlib.cifar_models import CIFAR10_MEAN, CIFAR10_STD, CIFAR_ARCHS, build_cifar_model, normalize_batch
from camlib.errors import UnknownModelError
from camlib.layers import default_layer, list_candidate_layers

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# (stage name, channels, height/width) of each architecture's stages for a 32x32 input
STAGES = {
    "resnet20": [("layer1", 16, 32), ("layer2", 32, 16), ("layer3", 64, 8)],
    "resnet18_cifar": [("layer1", 64, 32), ("layer2", 128, 16), ("layer3", 256, 8), ("layer4", 512, 4)],
}


def _model(arch: str) -> nn.Module:
    torch.manual_seed(0)
    return build_cifar_model(arch).eval()


@pytest.fixture(scope="module")
def resnet20() -> nn.Module:
    return _model("resnet20")


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return _model("resnet18_cifar")


def _parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_registry_lists_both_architectures() -> None:
    assert set(CIFAR_ARCHS) == {"resnet20", "resnet18_cifar"}
    assert all(name == arch.name and arch.description for name, arch in CIFAR_ARCHS.items())


@pytest.mark.parametrize("arch", ["resnet20", "resnet18_cifar"])
@pytest.mark.parametrize("batch", [1, 3])
def test_output_is_batch_by_ten_logits(arch: str, batch: int, resnet20: nn.Module, resnet18: nn.Module) -> None:
    model = resnet20 if arch == "resnet20" else resnet18
    with torch.no_grad():
        logits = model(torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(1)))
    assert logits.shape == (batch, 10)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()


def test_num_classes_sets_the_head() -> None:
    model = build_cifar_model("resnet20", num_classes=7)
    with torch.no_grad():
        assert model.eval()(torch.zeros(2, 3, 32, 32)).shape == (2, 7)


def test_resnet20_has_about_0_27_million_parameters(resnet20: nn.Module) -> None:
    count = _parameters(resnet20)
    assert 250_000 <= count <= 300_000, count
    assert count == 272_474  # He et al. 2016 report 0.27 M (this variant uses 1x1 projection shortcuts)


def test_resnet18_cifar_has_about_11_2_million_parameters(resnet18: nn.Module) -> None:
    count = _parameters(resnet18)
    assert 11_100_000 <= count <= 11_250_000, count
    assert count == 11_173_962  # the well-known CIFAR ResNet-18 size


@pytest.mark.parametrize("arch", ["resnet20", "resnet18_cifar"])
def test_stage_feature_maps(arch: str, resnet20: nn.Module, resnet18: nn.Module) -> None:
    model = resnet20 if arch == "resnet20" else resnet18
    candidates = {c.name: c for c in list_candidate_layers(model, (32, 32))}
    for name, channels, side in STAGES[arch]:
        info = candidates[name]
        assert (info.channels, info.height, info.width) == (channels, side, side), name
    assert ("layer4" in candidates) == (arch == "resnet18_cifar")


def test_stem_keeps_full_resolution(resnet20: nn.Module) -> None:
    candidates = {c.name: c for c in list_candidate_layers(resnet20, (32, 32))}
    assert (candidates["stem"].height, candidates["stem"].width) == (32, 32)  # 3x3 stem, no max-pool


def test_default_layer_of_resnet20_is_layer3(resnet20: nn.Module) -> None:
    layer = default_layer(list_candidate_layers(resnet20, (32, 32)))
    assert layer.name == "layer3"  # the last map of at least 7x7: 8x8
    assert layer.warning is None


def test_default_layer_of_resnet18_cifar_is_layer3(resnet18: nn.Module) -> None:
    assert default_layer(list_candidate_layers(resnet18, (32, 32))).name == "layer3"  # layer4 is 4x4 < 7x7


@pytest.mark.parametrize("arch", ["resnet50", "", "ResNet20", "resnet18"])
def test_unknown_architecture_is_a_typed_error(arch: str) -> None:
    with pytest.raises(UnknownModelError, match="unknown CIFAR architecture") as info:
        build_cifar_model(arch)
    assert isinstance(info.value, ValueError)
    assert "resnet20" in str(info.value) and "resnet18_cifar" in str(info.value)  # says what to choose


def test_builds_are_fresh_and_seeded_by_the_caller() -> None:
    torch.manual_seed(3)
    a = build_cifar_model("resnet20").state_dict()
    torch.manual_seed(3)
    b = build_cifar_model("resnet20").state_dict()
    c = build_cifar_model("resnet20").state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["fc.weight"], c["fc.weight"])


def test_normalize_batch_equals_the_manual_formula() -> None:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    out = normalize_batch(torch.from_numpy(images))
    mean = np.asarray(CIFAR10_MEAN, np.float64)[None, :, None, None]
    std = np.asarray(CIFAR10_STD, np.float64)[None, :, None, None]
    expected = (images.transpose(0, 3, 1, 2).astype(np.float64) / 255.0 - mean) / std
    assert out.shape == (5, 3, 32, 32)
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), expected, rtol=0, atol=1e-5)
    assert out.is_contiguous()
    assert not out.is_contiguous(memory_format=torch.channels_last)


def test_normalize_batch_extremes_and_input_untouched() -> None:
    images = torch.zeros(2, 32, 32, 3, dtype=torch.uint8)
    images[1] = 255
    before = images.clone()
    out = normalize_batch(images)
    assert torch.equal(images, before)  # the in-place div_ works on a copy
    for c in range(3):
        assert out[0, c].unique().tolist() == pytest.approx([-CIFAR10_MEAN[c] / CIFAR10_STD[c]], abs=1e-5)
        assert out[1, c].unique().tolist() == pytest.approx([(1 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]], abs=1e-5)


def test_gradcam_on_resnet20_for_every_stage(resnet20: nn.Module, snapshot) -> None:
    x = normalize_batch(torch.from_numpy(np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)))
    before = snapshot(resnet20)
    result = compute_cams(resnet20, x, ["layer1", "layer2", "layer3"], method="gradcam", class_idx=[0, 4, 9])
    before.assert_unchanged()
    assert result.layers == ("layer1", "layer2", "layer3")
    assert result.class_idx == [0, 4, 9]
    assert result.logits.shape == (3, 10)
    for name, side in [("layer1", 32), ("layer2", 16), ("layer3", 8)]:
        maps, raw = result.maps[name], result.raw[name]
        assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
        assert raw.shape == (3, side, side)
        assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
        # a map with positive evidence spans [0, 1]; a degenerate one is all zeros
        for k in range(3):
            if not result.degenerate[name][k]:
                assert maps[k].max() == pytest.approx(1.0, abs=1e-5) and maps[k].min() == pytest.approx(0, abs=1e-6)
            else:
                assert not maps[k].any()
    with torch.no_grad():
        np.testing.assert_allclose(result.logits, resnet20(x).numpy(), rtol=1e-5, atol=1e-5)
