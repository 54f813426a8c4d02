"""Tests of camlib.pixel_attribution: Guided Backpropagation, Guided Grad-CAM and FullGrad equal pytorch-grad-cam
1.5.7 where it follows the papers (and differ, as documented, where it does not), and a shared model is left exactly
as it was: no hooks or function modes, same ``.grad``, flags and state dict, also after an error, and another thread's
forward of the same model is never guided or captured.

pytorch-grad-cam's ``GuidedBackpropReLUModel`` swaps the model's ReLU modules and both it and ``FullGrad`` call
``backward()``, so it only ever runs on a deep copy made after camlib's result.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from helpers.dtype_models import DTYPE_MODELS, DTYPES, dtype_tolerance
from helpers.models import DictOutput, mixed_state, registered_hooks, seeded, seeded_resnet18
from pytorch_grad_cam import FullGrad, GradCAM
from pytorch_grad_cam.guided_backprop import GuidedBackpropReLUModel
from pytorch_grad_cam.utils.image import deprocess_image
from pytorch_grad_cam.utils.model_targets import (
    BinaryClassifierOutputTarget,
    ClassifierOutputReST,
    ClassifierOutputSoftmaxTarget,
    ClassifierOutputTarget,
)
from torch import nn

from camlib.errors import (
    ClassIndexError,
    GradientUnavailableError,
    InputError,
    LayerError,
    MethodError,
    NonFiniteError,
    TargetError,
)
from camlib.pixel_attribution import (
    PIXEL_METHODS,
    FullGradResult,
    GuidedBackpropResult,
    GuidedGradCamResult,
    attribution_images,
    compute_fullgrad,
    compute_guided_backprop,
    compute_guided_gradcam,
)
from camlib.targets import SigmoidTarget

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ATOL = 1e-5  # on maps in [0, 1]; attributions are compared divided by the reference's largest magnitude
SIZE = 64


# --- models and helpers --------------------------------------------------------------------------------------------


class SmallCNN(nn.Module):
    """Conv (with biases) + batch norm + activation, twice, then global pooling and a linear classifier.

    ``functional=True`` applies its ReLUs as ``F.relu(..., inplace=True)`` and ``Tensor.relu_()`` instead of
    ``nn.ReLU`` modules (same numbers); ``act`` replaces the activation module; ``probe`` runs between the blocks."""

    def __init__(self, *, functional: bool = False, act: type[nn.Module] = nn.ReLU, probe: nn.Module | None = None):
        super().__init__()
        self.functional = functional
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), act()
        self.probe = probe or nn.Identity()
        self.conv2, self.bn2, self.act2 = nn.Conv2d(8, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), act()
        self.fc = nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn1(self.conv1(x))
        x = F.relu(x, inplace=True) if self.functional else self.act1(x)
        x = self.bn2(self.conv2(self.probe(x)))
        if self.functional:
            x.relu_()  # the return value is not used: the tensor itself must be guided
        else:
            x = self.act2(x)
        return self.fc(x.mean(dim=(2, 3)))


def randomised_norms(model: nn.Module, seed: int = 1) -> nn.Module:
    """Seeded non-trivial batch-norm statistics and affine parameters (a fresh network's implicit biases are all 0,
    which would leave FullGrad's bias terms out of every comparison)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                channels = module.num_features
                module.running_mean.copy_(torch.randn(channels, generator=generator) * 0.2)
                module.running_var.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.weight.copy_(torch.rand(channels, generator=generator) + 0.5)
                module.bias.copy_(torch.randn(channels, generator=generator) * 0.2)
    return model


def images(batch: int = 2, size: int = SIZE, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def replace_modules(model: nn.Module, kind: type[nn.Module], make: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """``model`` with every ``kind`` module replaced by ``make(module)`` (in place; use on a copy)."""
    for name, module in list(model.named_modules()):
        if isinstance(module, kind) and name:
            parent_name, _, child = name.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(parent, child, make(module))
    return model


def plain_gradient(model: nn.Module, x: torch.Tensor, class_idx: list[int]) -> np.ndarray:
    """The ordinary input gradient of each image's class logit (no guided rule)."""
    leaf = x.clone().requires_grad_(True)
    logits = model(leaf)
    (grad,) = torch.autograd.grad(logits[torch.arange(len(class_idx)), class_idx].sum(), leaf)
    return grad.numpy()


def reference_guided(model: nn.Module, x: torch.Tensor, class_idx: list[int]) -> np.ndarray:
    """pytorch-grad-cam's guided backprop of each image, ``(B, C, H, W)`` (it explains the first image only)."""
    return np.stack(
        [
            GuidedBackpropReLUModel(copy.deepcopy(model), device="cpu")(x[b : b + 1].clone(), target_category=k)
            for b, k in enumerate(class_idx)
        ]
    ).transpose(0, 3, 1, 2)


def reference_fullgrad(
    model: nn.Module, x: torch.Tensor, class_idx: list[int] | None = None, targets=None
) -> np.ndarray:
    cam = FullGrad(copy.deepcopy(model), [])
    return cam(input_tensor=x.clone(), targets=targets or [ClassifierOutputTarget(k) for k in class_idx])


def assert_attributions_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    scale = float(np.abs(expected).max())
    assert scale > 0
    np.testing.assert_allclose(actual / scale, expected / scale, atol=ATOL, rtol=0)


def other_class(result: GuidedBackpropResult | FullGradResult) -> list[int]:
    """A non-argmax class per image (explicit targets must be honoured, not replaced by the prediction)."""
    return [int(np.argsort(row)[-3]) for row in result.logits]


EXPLAINED = ["argmax", "explicit", "targets"]


def explained_result(compute: Callable, model: nn.Module, x: torch.Tensor, kind: str):
    """``compute(model, x)`` for each image's prediction ("argmax"), for a non-argmax class given as ``class_idx``
    ("explicit") or as pytorch-grad-cam's ``ClassifierOutputTarget`` ("targets"), which must give the same numbers."""
    result = compute(model, x)
    if kind == "argmax":
        return result
    explicit = compute(model, x, class_idx=other_class(result))
    if kind == "explicit":
        return explicit
    targeted = compute(model, x, targets=[ClassifierOutputTarget(k) for k in other_class(result)])
    assert_same_result(targeted, explicit)
    return targeted


MODELS = {
    "resnet18": seeded_resnet18,
    "small_cnn": lambda: seeded(SmallCNN),
    # ReLU modules in its SE blocks and Hardswish elsewhere: the ReLUs are guided, Hardswish keeps its gradient.
    "mobilenet_v3_small": lambda: seeded(lambda: torchvision.models.mobilenet_v3_small(weights=None)),
    # EfficientNet-Lite0's architecture with ReLU instead of ReLU6 (pytorch-grad-cam guides nn.ReLU modules only).
    "efficientnet_lite0_relu": lambda: seeded(
        lambda: timm.create_model("efficientnet_lite0", pretrained=False, act_layer="relu")
    ),
}

FULLGRAD_MODELS = {
    "resnet18_norms": lambda: randomised_norms(seeded_resnet18()),
    "small_cnn_norms": lambda: randomised_norms(seeded(SmallCNN)),  # conv biases as well as batch norms
    # EfficientNet-like with plain nn.BatchNorm2d modules, SiLU, and conv biases in its squeeze-excitation blocks.
    "efficientnet_b0_norms": lambda: randomised_norms(seeded(lambda: torchvision.models.efficientnet_b0(weights=None))),
}


class Zoo(dict):
    """The models above, each built on first use and shared by the module's tests (never handed to
    pytorch-grad-cam, which gets deep copies)."""

    def __missing__(self, name: str) -> nn.Module:
        self[name] = model = {**MODELS, **FULLGRAD_MODELS}[name]()
        return model


@pytest.fixture(scope="module")
def models() -> Zoo:
    return Zoo()


# --- guided backpropagation: reference ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("kind", EXPLAINED)
def test_guided_backprop_matches_pytorch_grad_cam(models, name, kind):
    model, x = models[name], images()
    result = explained_result(compute_guided_backprop, model, x, kind)
    assert result.attributions.shape == x.shape and result.attributions.dtype == np.float32
    assert result.rectifiers.get("relu", 0) > 0
    assert_attributions_equal(result.attributions, reference_guided(model, x, result.class_idx))
    with torch.no_grad():
        np.testing.assert_array_equal(result.logits, model(x).numpy())  # the guided rule changes the backward only
    if name == "mobilenet_v3_small":
        assert set(result.unguided) == {"hardswish", "hardsigmoid"}


def test_guided_backprop_is_not_the_plain_gradient(models):
    model, x = models["resnet18"], images()
    result = compute_guided_backprop(model, x)
    plain = plain_gradient(model, x, result.class_idx)
    assert np.abs(result.attributions - plain).max() > 0.1 * np.abs(plain).max()


def test_inplace_flags_do_not_change_guided_backprop(models):
    model, x = models["resnet18"], images()
    assert any(getattr(m, "inplace", False) for m in model.modules())
    out_of_place = copy.deepcopy(model)
    for module in out_of_place.modules():
        if getattr(module, "inplace", False):
            module.inplace = False
    np.testing.assert_array_equal(
        compute_guided_backprop(model, x).attributions, compute_guided_backprop(out_of_place, x).attributions
    )


def test_functional_relus_are_guided_where_pytorch_grad_cam_leaves_them():
    """``F.relu(inplace=True)`` and ``x.relu_()`` (return value unused) are guided like ``nn.ReLU`` modules: the
    functional network equals the module network with the same weights, which equals pytorch-grad-cam. pytorch-grad-cam
    on the functional network (no ReLU module to replace) returns the plain gradient."""
    modules, functional = seeded(SmallCNN), seeded(lambda: SmallCNN(functional=True))
    functional.load_state_dict(modules.state_dict())
    x = images(size=32)
    ours = compute_guided_backprop(functional, x)
    assert ours.rectifiers == {"relu": 2}
    np.testing.assert_array_equal(ours.attributions, compute_guided_backprop(modules, x).attributions)
    assert_attributions_equal(ours.attributions, reference_guided(modules, x, ours.class_idx))
    theirs = reference_guided(functional, x, ours.class_idx)
    assert_attributions_equal(theirs, plain_gradient(functional, x, ours.class_idx))
    assert np.abs(ours.attributions - theirs).max() > 0.1 * np.abs(theirs).max()


class _GuidedReLU6(torch.autograd.Function):
    """pytorch-grad-cam's ``GuidedBackpropReLU`` rule with ReLU6's upper bound, written apart from camlib."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp(0, 6)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * ((x > 0) & (x < 6)).type_as(grad) * (grad > 0).type_as(grad)


class _GuidedReLU6Module(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _GuidedReLU6.apply(x)


def test_relu6_is_guided_where_pytorch_grad_cam_returns_the_plain_gradient():
    """EfficientNet-Lite0 (ReLU6 inside timm's BatchNormAct2d): camlib equals a copy whose ReLU6 modules were
    replaced by the guided rule (as pytorch-grad-cam does for ReLU); pytorch-grad-cam finds no nn.ReLU to replace and
    returns the plain input gradient."""
    model, x = seeded(lambda: timm.create_model("efficientnet_lite0", pretrained=False)), images()
    ours = compute_guided_backprop(model, x)
    assert set(ours.rectifiers) == {"relu6"}
    guided_copy = replace_modules(copy.deepcopy(model), nn.ReLU6, lambda _: _GuidedReLU6Module())
    assert_attributions_equal(ours.attributions, plain_gradient(guided_copy, x, ours.class_idx))
    theirs = reference_guided(model, x, ours.class_idx)
    assert_attributions_equal(theirs, plain_gradient(model, x, ours.class_idx))
    assert np.abs(ours.attributions - theirs).max() > 0.1 * np.abs(theirs).max()


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
@pytest.mark.parametrize("compute", [compute_guided_backprop, compute_fullgrad])
def test_models_guided_backprop_cannot_explain_are_refused(snapshot, compute):
    silu = seeded(lambda: SmallCNN(act=nn.SiLU))
    state = snapshot(silu)
    if compute is compute_guided_backprop:
        with pytest.raises(MethodError, match=r"ReLU.*silu x 2"):
            compute(silu, images(size=32))
    else:  # FullGrad does not need rectifiers
        assert compute(silu, images(size=32)).maps.shape == (2, 32, 32)
    state.assert_unchanged()
    scripted = torch.jit.script(seeded(SmallCNN))
    with pytest.raises(MethodError, match="TorchScript"):
        compute(scripted, images(size=32))
    with pytest.raises(MethodError, match="DataParallel"):
        compute(nn.DataParallel(seeded(SmallCNN)), images(size=32))


# --- Guided Grad-CAM -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "layers"), [("resnet18", ("layer4", "layer3")), ("small_cnn", ("act1",))])
def test_guided_gradcam_matches_pytorch_grad_cams_example(models, name, layers):
    """pytorch-grad-cam's example: ``cam_mask * gb`` with the Grad-CAM map of one layer and the guided gradients."""
    model, x = models[name], images()
    result = compute_guided_gradcam(model, x, layers)
    guided = reference_guided(model, x, result.class_idx)
    assert isinstance(result, GuidedGradCamResult) and result.layers == layers
    assert result.class_idx == result.gradcam.class_idx
    for layer in layers:
        reference = copy.deepcopy(model)
        with GradCAM(reference, target_layers=[reference.get_submodule(layer)]) as cam:
            maps = cam(input_tensor=x.clone(), targets=[ClassifierOutputTarget(k) for k in result.class_idx])
        assert result.attributions[layer].shape == x.shape and result.attributions[layer].dtype == np.float32
        assert_attributions_equal(result.attributions[layer], maps[:, None] * guided)


def test_guided_gradcam_explains_the_requested_class_in_both_parts(models):
    model, x = models["small_cnn"], images(size=32)
    result = compute_guided_gradcam(model, x, ["act2"], class_idx=[3, 5])
    assert result.class_idx == [3, 5] == result.guided.class_idx == result.gradcam.class_idx
    np.testing.assert_array_equal(
        result.guided.attributions, compute_guided_backprop(model, x, class_idx=[3, 5]).attributions
    )
    with pytest.raises(LayerError):
        compute_guided_gradcam(model, x, ["no.such.layer"])


def test_attribution_images_equal_pytorch_grad_cams_deprocess_image(models):
    attributions = compute_guided_backprop(models["small_cnn"], images(size=32)).attributions
    shown = attribution_images(attributions)
    assert shown.shape == (2, 32, 32, 3) and shown.dtype == np.uint8
    for b in range(2):
        np.testing.assert_array_equal(shown[b], deprocess_image(attributions[b].transpose(1, 2, 0)))
    for bad in (attributions[0], attributions.astype(np.int32), np.full_like(attributions, np.nan), [1.0]):
        with pytest.raises(InputError):
            attribution_images(bad)


# --- FullGrad ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", FULLGRAD_MODELS)
@pytest.mark.parametrize("kind", EXPLAINED)
def test_fullgrad_matches_pytorch_grad_cam(models, name, kind):
    model, x = models[name], images()
    result = explained_result(compute_fullgrad, model, x, kind)
    assert result.maps.shape == (2, SIZE, SIZE) and result.maps.dtype == np.float32
    assert result.raw.dtype == np.float32 and not result.degenerate.any()
    np.testing.assert_allclose(result.maps, reference_fullgrad(model, x, result.class_idx), atol=ATOL, rtol=0)


def test_fullgrad_bias_terms_count(models):
    """The bias terms are in the map: FullGrad's raw sum is well above its input term (at most 3, one per channel),
    and the layers are the model's batch norms in call order, the same ones pytorch-grad-cam selects."""
    model = models["resnet18_norms"]
    result = compute_fullgrad(model, images())
    reference = copy.deepcopy(model)  # FullGrad hooks its layers when built
    names = {id(module): name for name, module in reference.named_modules()}
    assert result.bias_layers == tuple(names[id(layer)] for layer in FullGrad(reference, []).target_layers)
    assert all(name.endswith(("bn1", "bn2", "downsample.1")) for name in result.bias_layers)
    assert result.raw.max() > 100
    small = compute_fullgrad(models["small_cnn_norms"], images(size=32))
    assert small.bias_layers == ("conv1", "bn1", "conv2", "bn2")


def _unfused(model: nn.Module) -> nn.Module:
    """timm's BatchNormAct2d modules as an nn.BatchNorm2d followed by the same activation (the same numbers), the
    module types pytorch-grad-cam's FullGrad looks for."""

    def split(fused: nn.Module) -> nn.Module:
        norm = nn.BatchNorm2d(fused.num_features, eps=fused.eps).eval()
        norm.load_state_dict(fused.state_dict())
        return nn.Sequential(norm, fused.drop, fused.act)

    return replace_modules(copy.deepcopy(model), timm.layers.BatchNormAct2d, split)


def test_fullgrad_sees_timm_batch_norms_that_pytorch_grad_cam_skips():
    """timm's EfficientNet-Lite0 normalises with BatchNormAct2d (a BatchNorm2d subclass that applies its activation):
    camlib takes each bias gradient at the batch norm's own output and equals pytorch-grad-cam on the unfused copy;
    pytorch-grad-cam on the model itself finds no layer of exactly type BatchNorm2d and keeps the input term only."""
    model = randomised_norms(seeded(lambda: timm.create_model("efficientnet_lite0", pretrained=False)))
    x = images()
    ours = compute_fullgrad(model, x)
    assert len(ours.bias_layers) == sum(isinstance(m, timm.layers.BatchNormAct2d) for m in model.modules())
    np.testing.assert_allclose(ours.maps, reference_fullgrad(_unfused(model), x, ours.class_idx), atol=ATOL, rtol=0)
    assert FullGrad(copy.deepcopy(model), []).target_layers == []
    assert np.abs(ours.maps - reference_fullgrad(model, x, ours.class_idx)).max() > 0.1


def test_fullgrad_counts_the_implicit_bias_of_batch_norms_without_affine_parameters():
    """``BatchNorm2d(affine=False)`` still adds ``-mu / sqrt(var + eps)``: camlib equals pytorch-grad-cam on a copy
    whose norm has ``gamma = 1, beta = 0`` parameters (the same numbers); pytorch-grad-cam skips the norm itself (no
    ``bias``), so the two differ there."""
    model = randomised_norms(seeded(SmallCNN))
    plain = nn.BatchNorm2d(8, affine=False).eval()
    plain.running_mean.copy_(model.bn1.running_mean)
    plain.running_var.copy_(model.bn1.running_var)
    model.bn1 = plain
    affine = copy.deepcopy(model)
    affine.bn1 = nn.BatchNorm2d(8).eval()
    affine.bn1.load_state_dict(plain.state_dict(), strict=False)
    x = images(size=32)
    ours = compute_fullgrad(model, x)
    assert ours.bias_layers == ("conv1", "bn1", "conv2", "bn2")
    np.testing.assert_allclose(ours.maps, reference_fullgrad(affine, x, ours.class_idx), atol=ATOL, rtol=0)
    assert np.abs(ours.maps - reference_fullgrad(model, x, ours.class_idx)).max() > 0.01


def test_fullgrad_refuses_models_without_bias_layers_and_batch_statistics(snapshot):
    no_bias = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.ReLU(), nn.Flatten(), nn.LazyLinear(5)))
    no_bias(images(size=8))  # materialise the lazy layer
    with pytest.raises(MethodError, match="neither a convolution with a bias nor a batch norm"):
        compute_fullgrad(no_bias, images(size=8))
    batch_stats = seeded(SmallCNN)
    batch_stats.bn2 = nn.BatchNorm2d(24, track_running_stats=False).eval()
    state = snapshot(batch_stats)
    with pytest.raises(MethodError, match="bn2 normalises with the batch's own statistics"):
        compute_fullgrad(batch_stats, images(size=32))
    state.assert_unchanged()


def test_fullgrad_constant_maps_are_zeros_and_flagged():
    """A network whose logits ignore the input's pattern (every conv weight 0) has a constant map: zeros, flagged."""
    model = randomised_norms(seeded(SmallCNN))
    with torch.no_grad():
        model.conv1.weight.zero_()
        model.conv2.weight.zero_()
    result = compute_fullgrad(model, images(size=32))
    assert result.degenerate.all() and not result.maps.any()


# --- the registry --------------------------------------------------------------------------------------------------


def _run(name: str, model: nn.Module, x: torch.Tensor, *, layers: tuple[str, ...] = ("act2",), **kwargs):
    """Call a registry entry as the UI would (Guided Grad-CAM with ``layers``)."""
    spec = PIXEL_METHODS[name]
    return spec.compute(model, x, layers, **kwargs) if spec.needs_layers else spec.compute(model, x, **kwargs)


def assert_same_result(actual: object, expected: object) -> None:
    """Every field equal (arrays exactly; nested results field by field); wall times aside."""
    assert type(actual) is type(expected)
    for field in dataclasses.fields(expected):
        if not field.compare:
            continue
        a, e = getattr(actual, field.name), getattr(expected, field.name)
        if dataclasses.is_dataclass(e):
            assert_same_result(a, e)
        elif isinstance(e, dict) and e and isinstance(next(iter(e.values())), np.ndarray):
            assert a.keys() == e.keys()
            for key in e:
                np.testing.assert_array_equal(a[key], e[key])
        elif isinstance(e, np.ndarray):
            np.testing.assert_array_equal(a, e)
        else:
            assert a == e, field.name


def test_registry_entries_say_what_they_compute(models):
    assert list(PIXEL_METHODS) == ["guided_backprop", "guided_gradcam", "fullgrad"]
    x = images(size=32)
    for name, spec in PIXEL_METHODS.items():
        assert spec.name == name and spec.label and "arXiv:" in spec.paper and "forward" in spec.cost
        result = _run(name, models["small_cnn"], x)
        if spec.output == "map":
            assert result.maps.shape == (2, 32, 32) and 0 <= result.maps.min() <= result.maps.max() <= 1
        else:
            attributions = result.attributions["act2"] if spec.needs_layers else result.attributions
            assert spec.output == "attributions" and attributions.shape == x.shape


# --- shared models stay clean --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_shared_model_is_left_as_it_was(snapshot, name):
    model = mixed_state(randomised_norms(seeded_resnet18()))
    state = snapshot(model)
    _run(name, model, images(size=32), layers=("layer3",))
    state.assert_unchanged()
    assert torch._C._len_torch_function_stack() == 0
    fresh = seeded(SmallCNN)
    _run(name, fresh, images(size=32), class_idx=1)
    assert all(p.grad is None for p in fresh.parameters()) and registered_hooks(fresh) == []


class _Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom in the forward")


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_nothing_is_left_behind_after_an_error(snapshot, name):
    model = mixed_state(seeded_resnet18())
    state = snapshot(model)
    with pytest.raises(ClassIndexError):
        _run(name, model, images(size=32), layers=("layer3",), class_idx=1000)
    state.assert_unchanged()
    failing = seeded(lambda: SmallCNN(probe=_Fails()))
    failing.train()
    state = snapshot(failing)
    with pytest.raises(RuntimeError, match="boom"):
        _run(name, failing, images(size=32))
    state.assert_unchanged()
    assert torch._C._len_torch_function_stack() == 0
    # the same model works afterwards, in plain forwards too
    failing.probe = nn.Identity()
    assert _run(name, failing, images(size=32)) is not None


class _Rendezvous(nn.Module):
    """Holds the owner thread's forward here until another thread has run its own forward and backward."""

    def __init__(self) -> None:
        super().__init__()
        self.owner: int | None = None
        self.inside, self.release = threading.Event(), threading.Event()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if threading.get_ident() == self.owner:
            self.inside.set()
            if not self.release.wait(60):
                raise RuntimeError("the other thread did not finish")
        return x


@pytest.mark.parametrize("compute", [compute_guided_backprop, compute_fullgrad])
def test_another_threads_forward_is_untouched_meanwhile(compute):
    """While camlib's forward is held half-way in one thread, another thread runs a plain forward and gradient of the
    same model: it gets the plain numbers (no guided ReLU, no captured layer), and camlib's own result is unchanged."""
    probe = _Rendezvous()
    model = randomised_norms(seeded(lambda: SmallCNN(probe=probe)))
    x, other_x = images(size=32), images(size=32, seed=5)
    expected_alone = compute(model, x)
    expected_plain = plain_gradient(model, other_x, [4, 4])
    seen: dict[str, object] = {}

    def plain_session() -> None:
        try:
            assert probe.inside.wait(60)
            seen["gradient"] = plain_gradient(model, other_x, [4, 4])
        except BaseException as error:  # reported by the main thread
            seen["error"] = error
        finally:
            probe.release.set()

    thread = threading.Thread(target=plain_session)
    thread.start()
    probe.owner = threading.get_ident()
    try:
        result = compute(model, x)
    finally:
        probe.owner = None
        probe.release.set()
        thread.join()
    assert "error" not in seen, seen.get("error")
    np.testing.assert_array_equal(seen["gradient"], expected_plain)
    assert_same_result(result, expected_alone)
    assert registered_hooks(model) == []


# --- inputs and contexts -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_works_inside_no_grad_and_inference_mode(models, name):
    model, x = models["small_cnn"], images(size=32)
    expected = _run(name, model, x)
    for context in (torch.no_grad, torch.inference_mode):
        with context():
            assert_same_result(_run(name, model, x), expected)


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_bad_inputs_raise_typed_errors(models, name):
    model, x = models["small_cnn"], images(size=32)
    with pytest.raises(InputError, match="channels-last"):
        _run(name, model, x.permute(0, 2, 3, 1))
    with pytest.raises(InputError):
        _run(name, "not a model", x)
    with pytest.raises(InputError):
        _run(name, model, x[0])
    with pytest.raises(ClassIndexError):
        _run(name, model, x, class_idx=[1])
    with pytest.raises(ClassIndexError):
        _run(name, model, x, class_idx=-1)
    nan_model = copy.deepcopy(model)
    with torch.no_grad():
        nan_model.fc.bias.fill_(float("nan"))
    with pytest.raises(NonFiniteError):
        _run(name, nan_model, x)
    with torch.inference_mode():
        frozen = seeded(SmallCNN)
    with pytest.raises(GradientUnavailableError):
        _run(name, frozen, x)


# --- model dtypes ---------------------------------------------------------------------------------------------------


@pytest.mark.bad_input(75)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model_name", ["cnn", "tokens"])
def test_pixel_attribution_on_a_half_or_double_precision_model_equals_the_float32_models(model_name, dtype):
    """Every method of PIXEL_METHODS that applies (guided backprop and Guided Grad-CAM need rectifiers: the token
    model's GELU has none, and they are refused in every dtype alike), within the dtype's precision; attributions
    relative to their largest magnitude. Pixel methods follow every ReLU gate down to the input, and a gate that
    the model's rounding flips moves the pixels behind it: 99% of the pixels are held to the CAMs' bound (FullGrad on
    float16: 0.5% of them exceed it, by up to 128 units)."""
    build, size, layer, layouts = DTYPE_MODELS[model_name]
    x = images(3, size, seed=21)
    reference, model = seeded(build), seeded(build).to(dtype)
    largest, mean = dtype_tolerance(dtype)

    def assert_close(ours: np.ndarray, theirs: np.ndarray) -> None:
        difference = np.abs(ours - theirs)
        assert np.isfinite(ours).all() and np.abs(theirs).max() > 0
        assert np.quantile(difference, 0.99) <= largest and difference.mean() <= mean, (difference.max(), name)

    for name, spec in PIXEL_METHODS.items():
        extra = {"layers": [layer], "layouts": layouts} if spec.needs_layers else {}
        try:
            expected = spec.compute(reference, x, class_idx=[1, 4, 7], **extra)
        except MethodError:
            assert model_name == "tokens" and name != "fullgrad"
            with pytest.raises(MethodError):
                spec.compute(model, x, class_idx=[1, 4, 7], **extra)
            continue
        got = spec.compute(model, x, class_idx=[1, 4, 7], **extra)
        if spec.output == "map":
            assert not got.degenerate.any()
            assert_close(got.maps, expected.maps)
        else:
            ours = got.attributions if name == "guided_backprop" else got.attributions[layer]
            theirs = expected.attributions if name == "guided_backprop" else expected.attributions[layer]
            scale = np.abs(theirs).max()
            assert_close(ours / scale, theirs / scale)


# --- targets -------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LogitOfOut:
    """A target reading the ``"out"`` entry of a dict output: the logit of ``category``."""

    category: int

    def __call__(self, output: dict[str, torch.Tensor]) -> torch.Tensor:
        return output["out"][self.category]


def binary_cnn() -> nn.Module:
    """``SmallCNN`` with a one-logit (binary) head: its output is ``(B, 1)``."""

    def build() -> nn.Module:
        model = SmallCNN()
        model.fc = nn.Linear(24, 1)
        return model

    return randomised_norms(seeded(build))


@pytest.mark.parametrize(
    ("head", "make"),
    [
        ("classes", ClassifierOutputSoftmaxTarget),
        ("classes", ClassifierOutputReST),
        ("classes", SigmoidTarget),
        ("binary", BinaryClassifierOutputTarget),
    ],
)
def test_fullgrad_with_targets_matches_pytorch_grad_cam(head, make):
    """pytorch-grad-cam's FullGrad differentiates ``sum_b targets[b](output_b)``; so does ours, for the softmax, ReST
    and sigmoid targets of a 10-class head and both classes of a one-logit binary head."""
    model = binary_cnn() if head == "binary" else randomised_norms(seeded(SmallCNN))
    x = images(size=32)
    targets = [make(0), make(1)]
    result = compute_fullgrad(model, x, targets=targets)
    np.testing.assert_allclose(result.maps, reference_fullgrad(model, x, targets=targets), atol=ATOL, rtol=0)
    assert result.scores.shape == (2,) and result.scores.dtype == np.float64
    with torch.no_grad():
        output = model(x)
    np.testing.assert_allclose(result.scores, [float(t(o)) for t, o in zip(targets, output)], rtol=1e-6)
    assert result.class_idx == (None if head == "binary" else [0, 1])


def test_guided_gradcam_with_targets_matches_pytorch_grad_cam(models):
    """Both parts explain the targets: Grad-CAM equals pytorch-grad-cam's for the softmax targets, and the product
    is taken with the guided gradients of the same targets."""
    model, x = models["small_cnn"], images(size=32)
    targets = [ClassifierOutputSoftmaxTarget(3), ClassifierOutputSoftmaxTarget(5)]
    result = compute_guided_gradcam(model, x, ["act2"], targets=targets)
    reference = copy.deepcopy(model)
    with GradCAM(reference, target_layers=[reference.act2]) as cam:
        maps = cam(input_tensor=x.clone(), targets=targets)
    np.testing.assert_allclose(result.gradcam.maps["act2"], maps, atol=ATOL, rtol=0)
    assert_same_result(result.guided, compute_guided_backprop(model, x, targets=targets))
    assert result.class_idx == [3, 5]
    np.testing.assert_allclose(result.attributions["act2"], maps[:, None] * result.guided.attributions, atol=1e-6)


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_a_dict_output_model_is_explained_by_a_target_reading_it(models, name):
    """No method needs ``(B, C)`` logits when the targets read the output: a ``{"out": logits}`` model with a target
    reading ``out`` gives the plain model's result for ``class_idx``; without targets it is refused."""
    model, x = models["small_cnn"], images(size=32)
    wrapped = DictOutput(model)
    result = _run(name, wrapped, x, layers=("inner.act2",), targets=[LogitOfOut(3), LogitOfOut(5)])
    expected = _run(name, model, x, class_idx=[3, 5])
    maps = (result.guided, result.gradcam.maps["inner.act2"]) if PIXEL_METHODS[name].needs_layers else (result,)
    if PIXEL_METHODS[name].needs_layers:
        np.testing.assert_allclose(maps[1], expected.gradcam.maps["act2"], atol=1e-6)
    guided_or_fullgrad = maps[0]
    expected_part = expected.guided if PIXEL_METHODS[name].needs_layers else expected
    field = "maps" if PIXEL_METHODS[name].output == "map" else "attributions"
    np.testing.assert_array_equal(getattr(guided_or_fullgrad, field), getattr(expected_part, field))
    assert guided_or_fullgrad.logits is None and guided_or_fullgrad.class_idx is None
    with pytest.raises(InputError, match="logits"):
        _run(name, wrapped, x, layers=("inner.act2",))


@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_bad_targets_raise_typed_errors(models, name):
    model, x = models["small_cnn"], images(size=32)
    targets = [ClassifierOutputTarget(1), ClassifierOutputTarget(2)]
    with pytest.raises(InputError, match="not both"):
        _run(name, model, x, targets=targets, class_idx=[1, 2])
    with pytest.raises(TargetError, match="got 1 targets for a batch of 2"):
        _run(name, model, x, targets=targets[:1])
    with pytest.raises(InputError, match="callables"):
        _run(name, model, x, targets=[1, 2])
    with pytest.raises(TargetError, match="targets\\[1\\]"):
        _run(name, model, x, targets=[targets[0], ClassifierOutputTarget(10)])


@pytest.mark.bad_input(34)
@pytest.mark.parametrize("name", PIXEL_METHODS)
def test_a_non_finite_target_score_is_refused(models, name):
    model, x = models["small_cnn"], images(size=32)
    with pytest.raises(NonFiniteError):
        _run(name, model, x, targets=[lambda o: o[0] / 0 * 0] * 2)
