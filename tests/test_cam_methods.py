"""Tests of the CAM methods that tests/test_cam.py does not hold: the sampling methods (SS-CAM, IS-CAM,
Smooth Grad-CAM++) against torch-cam 0.5.0 given the same random draws, and their seeds, batches and progress; every
method on float16, bfloat16 and float64 models against the float32 model; every pair of methods in one grid call.

torch-cam draws its noise from ``torch.distributions.Normal(0, std).sample`` (the global generator); the tests replace
that sampler by one that returns camlib's seeded draws, so both libraries see the same noise. torch-cam's maps are
unnormalised here (``normalized=False``: ReLU'd weighted sums at feature resolution) and sent through
pytorch-grad-cam's finishing pipeline, which camlib's maps follow.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Callable, Iterator
from functools import partial

import numpy as np
import pytest
import torch
import torchvision
from helpers.dtype_models import DTYPE_MODELS, DTYPES, KPCA_ULPS, HotNet, dtype_tolerance, tiny_vit
from helpers.models import Amplified, seeded, seeded_resnet18
from helpers.reference_zoo import (
    ATOL,
    LAYOUT_SCORECAM_SIZE,
    LAYOUT_ZOO,
    REFERENCE_CAMS,
    SCORECAM_SIZE,
    ZOO,
    LayoutZoo,
    Zoo,
    assert_equal_up_to_eigen_sign,
    assert_same_result,
    channels_last,
    drop_tokens,
    keep_as_produced,
    layer_output,
    layout_sizes,
    random_images,
    reference_maps,
    reference_pipeline,
)
from helpers.tiers import quick_subset
from pytorch_grad_cam import SESS, RefineCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn
from torchcam.methods import ISCAM, SSCAM, LeGrad, SmoothGradCAMpp
from torchvision.models import VisionTransformer

import camlib.cam
from camlib.cam import (
    ISCAM_SAMPLES,
    METHODS,
    RANDOM_CAM_SEED,
    SMOOTH_GRADCAMPP_STD,
    SSCAM_SAMPLES,
    SSCAM_STD,
    CamResult,
    compute_cam_grid,
    compute_cams,
    finish_maps,
)
from camlib.errors import InputError, LayerError, MethodError
from camlib.layers import list_candidate_layers
from camlib.layouts import Layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Draws:
    """Stands in for torch-cam's ``Normal(0, std)``: each ``sample(shape)`` returns the next of ``draws`` (one image's
    noise, ``(C, H, W)`` or ``(3, H, W)``), expanded over the batch (camlib draws the same noise for every image)."""

    def __init__(self, draws: list[torch.Tensor]) -> None:
        self._draws: Iterator[torch.Tensor] = iter(draws)

    def sample(self, shape: torch.Size) -> torch.Tensor:
        return next(self._draws).expand(shape)


def _camlib_draws(seed: int, n: int, shape: tuple[int, ...], std: float) -> list[torch.Tensor]:
    """camlib's noise for one image: ``n`` draws of ``std * randn(shape)`` from a generator seeded with ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    return [std * torch.randn(shape, generator=generator, dtype=torch.float32) for _ in range(n)]


def _torchcam_maps(
    extractor: type,
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    class_idx: list[int],
    *,
    reshape_transform: Callable | None = None,
    draws: list[torch.Tensor] | None = None,
    **kwargs: object,
) -> np.ndarray:
    """torch-cam's CAM of one layer through pytorch-grad-cam's finishing pipeline, ``(B, H, W)``."""
    with extractor(model, layer, input_shape=tuple(x.shape[1:]), reshape_transform=reshape_transform, **kwargs) as cam:
        if draws is not None:
            cam._distrib = _Draws(draws)
        with torch.no_grad():
            model(x)
        raw = cam(class_idx=class_idx, normalized=False)[0]
    return reference_pipeline(raw.numpy(), tuple(x.shape[-2:]))


# --- SS-CAM and IS-CAM ---------------------------------------------------------------------------------------------


def _layout_score_cases(name: str, layer: str, full: int) -> list:
    """A layout-zoo case at 32 px (ConvNeXt's block 8x8, DeiT's 2x2 patches) and at ``full`` px (slow tier)."""
    entry = LAYOUT_ZOO[name]
    return [
        pytest.param(name, layer, 32, entry.reshape_transform(layer, 32), id=f"{name}-32px"),
        pytest.param(
            name, layer, full, entry.reshape_transform(layer, full), id=f"{name}-{full}px", marks=pytest.mark.slow
        ),
    ]


# (model, layer, input size, pytorch-grad-cam-style reshape_transform for torch-cam): an NCHW layer, a channels-last
# ConvNeXt block and DeiT's tokens (a class and a distillation token before a 7x7 grid at 112 px).
SCORE_CASES = [
    pytest.param("resnet18", "layer1", SCORECAM_SIZE, None, id="resnet18"),
    pytest.param("efficientnet_lite0", "blocks.1", SCORECAM_SIZE, None, id="efficientnet_lite0"),  # 24 channels
    *_layout_score_cases("convnext_tiny", "features.1.0.block.2", 64),
    *_layout_score_cases("deit_tiny", "blocks.11.norm1", 112),
]


def _narrow_swin_t() -> nn.Module:
    """torchvision's Swin-T architecture (4 px patches, 7 x 7 windows, four stages, channels-last features) at 24
    channels and 1 block a stage. SS-CAM and IS-CAM take ``n_samples * C`` forwards of the whole model per image:
    on the zoo's Swin-T (~64 ms a forward at 64 px on one thread) that is ~50 s per image and library with two
    samples for the 384 channels of its zoo layer features.5, ~12 s for the 96 of its narrowest, features.1."""
    return torchvision.models.SwinTransformer([4, 4], 24, [1, 1, 1, 1], [1, 1, 2, 2], [7, 7], num_classes=10)


def _narrow_vit_b_16() -> nn.Module:
    """torchvision's ViT-B/16 architecture at the zoo's 112 px (a class token and 7 x 7 patches of 16 px) at 32
    channels and 2 blocks, with a random head (torchvision's is zeros). The zoo's ViT-B/16 has 768 channels in every
    token layer and takes ~120 ms a forward on one thread: SS-CAM's and IS-CAM's 2 x 768 forwards per image would
    take ~3 min per image and library."""
    model = VisionTransformer(112, 16, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.1)
    return model


NARROW_ZOO = {"narrow_swin_t": _narrow_swin_t, "narrow_vit_b_16": _narrow_vit_b_16}


# The rest of the zoo, one layer each, where SS-CAM and IS-CAM stay cheap (their cost is n_samples * C forwards per
# image): (model, layer, input size, reshape_transform, images). Early, narrow layers of the CNNs (one image where a
# forward is dear); the transformers as narrow copies of the zoo's architectures (NARROW_ZOO) at their zoo layers'
# layouts. "name*gain" is the zoo model with amplified logits (Amplified).
SCORE_REST_CASES = [
    ("densenet121", "features.transition1", 32, None, 1),  # 128 channels, 4 x 4: after the first dense block
    ("mobilenet_v3_small*1e10", "model.features.8", SCORECAM_SIZE, None, 2),  # 48 channels, 4 x 4 (an SE block)
    ("vgg11_bn", "features.2", 32, None, 1),  # 64 channels, 32 x 32: VGG's narrowest layers
    ("narrow_swin_t", "features.5", SCORECAM_SIZE, channels_last, 2),  # as swin_t's: (B, 4, 4, 96) here
    ("narrow_vit_b_16", "encoder.layers.encoder_layer_1.ln_1", 112, drop_tokens(1, 7, 7), 2),  # as vit_b_16's
]


@pytest.fixture(scope="module")
def zoos(zoo: Zoo, layout_zoo: LayoutZoo) -> tuple[Zoo, LayoutZoo]:
    """The seeded reference models (NCHW zoo, channels-last and token zoo; conftest.py), built lazily."""
    return zoo, layout_zoo


@pytest.fixture(scope="module")
def narrow_zoo() -> dict[str, nn.Module]:
    return {}


def _score_case(
    zoos: tuple[Zoo, LayoutZoo], name: str, size: int, narrow: dict[str, nn.Module] | None = None
) -> tuple[nn.Module, torch.Tensor, list[int]]:
    zoo, layout_zoo = zoos
    if name in NARROW_ZOO:
        assert narrow is not None
        if name not in narrow:
            narrow[name] = seeded(NARROW_ZOO[name])
        return narrow[name], random_images(2, size, seed=11), [5, 9]
    if "*" in name:  # "zoo model*gain": Amplified
        model, gain = name.split("*")
        return Amplified(zoo.model(model), float(gain)), zoo.images(size), [3, 7]
    if name in LAYOUT_ZOO:
        return layout_zoo.model(name, size=size), layout_zoo.images(name, size), [5, 9]
    return zoo.model(name), zoo.images(size), [3, 7]


@pytest.mark.parametrize("name,layer,size,transform", SCORE_CASES)
def test_sscam_matches_torchcam_given_the_same_noise(zoos, name, layer, size, transform):
    model, x, classes = _score_case(zoos, name, size)
    ours = compute_cams(model, x, [layer], method="sscam", class_idx=classes, n_samples=2, seed=3)
    draws = _camlib_draws(3, 2, (_channel_count(model, x, layer, transform), size, size), SSCAM_STD)
    reference = _torchcam_maps(
        SSCAM, model, x, layer, classes, reshape_transform=transform, draws=draws, num_samples=2, std=SSCAM_STD
    )
    np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


def _channel_count(model: nn.Module, x: torch.Tensor, layer: str, transform: Callable | None) -> int:
    return int(layer_output(model, x[:1], layer, transform).shape[1])


@pytest.mark.parametrize("name,layer,size,transform", SCORE_CASES)
def test_iscam_matches_torchcam(zoos, name, layer, size, transform):
    model, x, classes = _score_case(zoos, name, size)
    # Two steps: scales 1/2 and 1/2 + 2/2 (torch-cam's accumulated scale goes above 1 from the second step).
    ours = compute_cams(model, x, [layer], method="iscam", class_idx=classes, n_samples=2)
    reference = _torchcam_maps(ISCAM, model, x, layer, classes, reshape_transform=transform, num_samples=2)
    np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("method", ["sscam", "iscam"])
@pytest.mark.parametrize(
    "case",
    # The quick tier checks one more CNN here (and ConvNeXt and DeiT above); the slow tier every model.
    quick_subset(SCORE_REST_CASES, SCORE_REST_CASES[:1]),
    ids=[case[0] for case in SCORE_REST_CASES],
)
def test_sscam_and_iscam_on_the_rest_of_the_zoo_match_torchcam(zoos, narrow_zoo, method, case):
    """With SCORE_CASES, every architecture and layout of the zoo: two samples (SS-CAM, the same noise) or steps
    (IS-CAM), as above. The scores decide the maps: they differ from the channel mean's (uniform weights, the map of
    a flat softmax) by far more than the tolerance."""
    name, layer, size, transform, images = case
    model, x, classes = _score_case(zoos, name, size, narrow_zoo)
    x, classes = x[:images], classes[:images]
    ours = compute_cams(model, x, [layer], method=method, class_idx=classes, n_samples=2, seed=3)
    assert not ours.degenerate[layer].any()
    flat = reference_pipeline(layer_output(model, x, layer, transform).mean(dim=1).numpy(), (size, size))
    assert np.abs(ours.maps[layer] - flat).max() > 100 * ATOL
    if method == "sscam":
        draws = _camlib_draws(3, 2, (_channel_count(model, x, layer, transform), size, size), SSCAM_STD)
        kwargs = {"draws": draws, "num_samples": 2, "std": SSCAM_STD}
        reference = _torchcam_maps(SSCAM, model, x, layer, classes, reshape_transform=transform, **kwargs)
    else:
        reference = _torchcam_maps(ISCAM, model, x, layer, classes, reshape_transform=transform, num_samples=2)
    np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


def test_sampling_defaults_are_torchcams():
    assert (METHODS["sscam"].samples, SSCAM_STD, METHODS["iscam"].samples) == (35, 2.0, 10)
    assert (SSCAM_SAMPLES, ISCAM_SAMPLES) == (35, 10)
    assert METHODS["sscam"].extra_forwards(64) == 35 * 64 and METHODS["iscam"].extra_forwards(64, 3) == 3 * 64


@pytest.mark.slow  # four SS-CAM runs; the seeded draws are checked quickly against torch-cam above
def test_sscam_is_reproducible_with_its_seed_and_changes_with_it(small_resnet, x64):
    def run(seed: int, batch_size: int = 32):
        return compute_cams(
            small_resnet, x64, ["layer2"], method="sscam", n_samples=2, seed=seed, scorecam_batch_size=batch_size
        )

    first, again, other = run(1), run(1), run(2)
    assert_same_result(first, again)
    assert np.abs(first.raw["layer2"] - other.raw["layer2"]).max() > 1e-6
    # The draws do not depend on the batch size; only the batched forwards' rounding does.
    np.testing.assert_allclose(run(1, batch_size=48).maps["layer2"], first.maps["layer2"], atol=1e-6, rtol=0)


def test_sscam_draws_the_same_noise_for_every_image_of_a_batch(small_resnet, x64):
    """Image 1 alone gives the map it gets in the batch: its draws do not depend on its place."""
    batch = compute_cams(small_resnet, x64, ["layer2"], method="sscam", n_samples=2, class_idx=[4, 4])
    alone = compute_cams(small_resnet, x64[1:], ["layer2"], method="sscam", n_samples=2, class_idx=4)
    np.testing.assert_allclose(alone.maps["layer2"][0], batch.maps["layer2"][1], atol=1e-6, rtol=0)


def test_iscam_with_one_step_is_the_softmax_of_the_masked_scores(small_resnet, x64):
    """A known answer: with one step the scale is 1, so IS-CAM's weights are the softmax over channels of the scores
    of the input masked by each normalised, upsampled channel (torch-cam's Score-CAM)."""
    layer, classes = "layer3", [2, 8]
    ours = compute_cams(small_resnet, x64, [layer], method="iscam", n_samples=1, class_idx=classes)
    store: dict[str, torch.Tensor] = {}
    handle = small_resnet.layer3.register_forward_hook(lambda _m, _i, out: store.update(out=out.clone()))
    try:
        with torch.no_grad():
            small_resnet(x64)
    finally:
        handle.remove()
    acts = store["out"].double()
    expected = []
    for b, k in enumerate(classes):
        lo = acts[b].amin(dim=(1, 2), keepdim=True)
        masks = (acts[b] - lo) / ((acts[b] - lo).amax(dim=(1, 2), keepdim=True) + 1e-8)
        masks = torch.nn.functional.interpolate(masks[None], size=(64, 64), mode="bilinear")[0]
        with torch.no_grad():
            scores = small_resnet(x64[b][None] * masks[:, None].float())[:, k].double()
        weights = torch.softmax(scores, dim=0)
        expected.append((weights[:, None, None] * acts[b]).sum(dim=0).numpy())
    scale = float(np.abs(expected).max())
    np.testing.assert_allclose(ours.raw[layer], np.stack(expected), atol=1e-5 * scale, rtol=0)


@pytest.mark.parametrize("method,n", [("sscam", 2), ("iscam", 3)])
def test_sampling_methods_report_progress_per_batch(small_resnet, x64, method, n):
    calls: list[tuple[int, int]] = []
    compute_cams(
        small_resnet,
        x64[:1],
        ["layer1"],
        method=method,
        n_samples=n,
        scorecam_batch_size=16,
        progress=lambda done, total: calls.append((done, total)),
    )
    total = n * 64 // 16
    assert total == METHODS[method].batches(64, 16, n)
    assert calls == [(k, total) for k in range(1, total + 1)]


@pytest.mark.parametrize("kwargs", [{"seed": -1}, {"seed": 1.5}, {"n_samples": 0}, {"n_samples": True}])
def test_seed_and_sample_count_are_validated(small_resnet, x64, kwargs):
    with pytest.raises(InputError):
        compute_cams(small_resnet, x64, ["layer3"], method="sscam", **kwargs)


# --- Smooth Grad-CAM++ ---------------------------------------------------------------------------------------------


def _keep_as_produced(store: dict[str, torch.Tensor]) -> Callable:
    """A forward hook keeping the layer's output in ``store`` and passing a copy on, so later in-place ops (DenseNet's
    functional ReLU) change neither the kept values nor the tensor the gradient is taken for."""

    def keep(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        store["out"] = output
        return output.clone()

    return keep


def _noisy_evidence(
    model: nn.Module, x: torch.Tensor, layer: str, classes: list[int], transform: Callable | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """By hand, in float64 sums: the layer's activations on ``x`` and the gradients of the ``classes`` logits with
    respect to them (``_keep_as_produced``; ``torch.autograd.grad``, no ``.grad`` touched),
    both read as ``(B, C, h, w)`` through ``transform``."""
    store: dict[str, torch.Tensor] = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(_keep_as_produced(store))
    try:
        with torch.enable_grad():
            inputs = x.clone().requires_grad_(True)
            logits = model(inputs)
            (grad,) = torch.autograd.grad(logits[torch.arange(len(classes)), torch.tensor(classes)].sum(), store["out"])
    finally:
        handle.remove()
    read = transform or (lambda t: t)
    return read(store["out"].detach()).double(), read(grad).double()


def _paper_smooth_gradcam_plus_plus(acts: torch.Tensor, grads: list[torch.Tensor]) -> torch.Tensor:
    """Grad-CAM++ with averaged derivative powers on the clean activations (camlib's reading of Omeiza et al.)."""
    g1, g2, g3 = (torch.stack([g**p for g in grads]).mean(dim=0) for p in (1, 2, 3))
    alpha = g2 / (2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3 + 1e-6)
    alpha = torch.where(g2 != 0, alpha, torch.zeros_like(alpha))
    return ((alpha * torch.relu(g1)).sum(dim=(2, 3))[:, :, None, None] * acts).sum(dim=1)


def _torchcam_smooth_gradcam_plus_plus(
    clean: torch.Tensor, grads: list[torch.Tensor], last_acts: torch.Tensor
) -> torch.Tensor:
    """torch-cam 0.5.0's SmoothGradCAMpp as written: ``relu`` of the last copy's gradients, ``sum(A G3)`` in the
    denominator, the map on the last noisy copy's activations."""
    g2, g3 = (torch.stack([g**p for g in grads]).mean(dim=0) for p in (2, 3))
    alpha = g2 / (2 * g2 + (g3 * clean).flatten(2).sum(-1)[:, :, None, None] + 1e-8)
    weights = (alpha * torch.relu(grads[-1])).flatten(2).sum(-1)
    return torch.relu((weights[:, :, None, None] * last_acts).sum(dim=1))


SMOOTH_CASES = [
    ("resnet18", "layer3", SCORECAM_SIZE, None),
    ("convnext_tiny", "features.5.8.block.3", 96, channels_last),
    ("deit_tiny", "blocks.4", 112, drop_tokens(2, 7, 7)),
]


@pytest.mark.parametrize("name,layer,size,transform", SMOOTH_CASES, ids=[case[0] for case in SMOOTH_CASES])
def test_smooth_gradcam_plus_plus_is_the_paper_formula_and_differs_from_torchcam_where_torchcam_errs(
    zoos, name, layer, size, transform
):
    """camlib equals Grad-CAM++ with derivative powers averaged over the noisy copies (computed by hand from the same
    draws); torch-cam, given the same draws, equals its own formula (last copy's gradients and activations, another
    denominator), which gives another map."""
    model, x, classes = _score_case(zoos, name, size)
    n = 3
    ours = compute_cams(model, x, [layer], method="smoothgradcam++", class_idx=classes, n_samples=n, seed=4)
    draws = _camlib_draws(4, n, tuple(x.shape[1:]), SMOOTH_GRADCAMPP_STD)
    clean, _ = _noisy_evidence(model, x, layer, classes, transform)
    noisy = [_noisy_evidence(model, x + draw, layer, classes, transform) for draw in draws]
    paper = _paper_smooth_gradcam_plus_plus(clean, [grad for _, grad in noisy]).numpy()
    scale = float(np.abs(paper).max())
    np.testing.assert_allclose(ours.raw[layer], paper, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(ours.maps[layer], reference_pipeline(paper, (size, size)), atol=ATOL, rtol=0)

    reference = _torchcam_maps(
        SmoothGradCAMpp,
        model,
        x,
        layer,
        classes,
        reshape_transform=transform,
        draws=draws,
        num_samples=n,
        std=SMOOTH_GRADCAMPP_STD,
    )
    as_written = _torchcam_smooth_gradcam_plus_plus(clean, [grad for _, grad in noisy], noisy[-1][0]).numpy()
    np.testing.assert_allclose(reference, reference_pipeline(as_written, (size, size)), atol=1e-4, rtol=0)
    assert np.abs(reference - ours.maps[layer]).max() > 0.05


@pytest.mark.parametrize("name", [name for name in ZOO if name != "resnet18"])
def test_smooth_gradcam_plus_plus_is_the_paper_formula_on_the_rest_of_the_cnn_zoo(zoos, name):
    """The other zoo CNNs at 64 px, each zoo layer from one call, against the hand-built formula (same draws)."""
    zoo, _ = zoos
    model, x, classes, n = zoo.model(name), zoo.images(SCORECAM_SIZE), [3, 7], 2
    layers = list(ZOO[name].layers)
    ours = compute_cams(model, x, layers, method="smoothgradcam++", class_idx=classes, n_samples=n, seed=4)
    draws = _camlib_draws(4, n, tuple(x.shape[1:]), SMOOTH_GRADCAMPP_STD)
    for layer in layers:
        clean, _ = _noisy_evidence(model, x, layer, classes, None)
        grads = [_noisy_evidence(model, x + draw, layer, classes, None)[1] for draw in draws]
        paper = _paper_smooth_gradcam_plus_plus(clean, grads).numpy()
        scale = float(np.abs(paper).max())
        np.testing.assert_allclose(ours.raw[layer], paper, atol=1e-4 * scale, rtol=0)


@pytest.mark.parametrize(
    "name,layer,size",
    [
        ("swin_t", "features.5", LAYOUT_SCORECAM_SIZE["swin_t"]),
        # ViT-B/16 (768 channels at 112 px): tens of seconds; DeiT's tokens are in the quick tier above
        pytest.param("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", 112, marks=pytest.mark.slow),
    ],
)
def test_smooth_gradcam_plus_plus_is_the_paper_formula_on_swin_and_vit(zoos, name, layer, size):
    """With SMOOTH_CASES and the CNN zoo, every model of the zoo: Swin-T's channels-last stage output (4 x 4 at 64 px)
    and ViT-B/16's tokens (a class token and 7 x 7 patches), against the hand-built formula (same draws)."""
    model, x, classes = _score_case(zoos, name, size)
    transform, n = LAYOUT_ZOO[name].layers[layer], 2
    ours = compute_cams(model, x, [layer], method="smoothgradcam++", class_idx=classes, n_samples=n, seed=4)
    draws = _camlib_draws(4, n, tuple(x.shape[1:]), SMOOTH_GRADCAMPP_STD)
    clean, _ = _noisy_evidence(model, x, layer, classes, transform)
    grads = [_noisy_evidence(model, x + draw, layer, classes, transform)[1] for draw in draws]
    paper = _paper_smooth_gradcam_plus_plus(clean, grads).numpy()
    scale = float(np.abs(paper).max())
    np.testing.assert_allclose(ours.raw[layer], paper, atol=1e-4 * scale, rtol=0)
    np.testing.assert_allclose(ours.maps[layer], reference_pipeline(paper, (size, size)), atol=ATOL, rtol=0)


def test_smooth_gradcam_plus_plus_with_one_noiseless_sample_is_gradcam_plus_plus(monkeypatch, small_resnet, x64):
    monkeypatch.setattr(camlib.cam.perturbation, "SMOOTH_GRADCAMPP_STD", 0.0)
    layers, classes = ["layer2", "layer3"], [3, 7]
    smooth = compute_cams(small_resnet, x64, layers, method="smoothgradcam++", class_idx=classes, n_samples=1)
    plain = compute_cams(small_resnet, x64, layers, method="gradcam++", class_idx=classes)
    for layer in layers:
        np.testing.assert_allclose(smooth.maps[layer], plain.maps[layer], atol=ATOL, rtol=0)


def test_smooth_gradcam_plus_plus_is_seeded_batched_and_reports_progress(small_resnet, x64):
    steps: list[tuple[int, int]] = []

    def run(seed: int, batch_size: int, progress=None):
        return compute_cams(
            small_resnet,
            x64,
            ["layer3"],
            method="smoothgradcam++",
            n_samples=5,
            seed=seed,
            scorecam_batch_size=batch_size,
            progress=progress,
        )

    first = run(1, 2, progress=lambda done, total: steps.append((done, total)))
    assert steps == [(k, 6) for k in range(1, 7)]  # 2 images x ceil(5 / 2) batches of noisy copies
    assert METHODS["smoothgradcam++"].batches(256, 2, 5) == 3 and METHODS["smoothgradcam++"].extra_forwards(256) == 4
    assert_same_result(run(1, 2), first)
    np.testing.assert_allclose(run(1, 5).maps["layer3"], first.maps["layer3"], atol=1e-5, rtol=0)
    assert np.abs(run(2, 2).raw["layer3"] - first.raw["layer3"]).max() > 1e-6


# --- FEM -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(ZOO))
def test_fem_matches_pytorch_grad_cam(zoos, name):
    """Every zoo layer of a model from one camlib call, each equal to a one-layer pytorch-grad-cam FEM call."""
    zoo, _ = zoos
    ours = zoo.ours(name, "fem", "argmax")
    for layer in ZOO[name].layers:
        reference = reference_maps(zoo.model(name), zoo.images(), layer, "fem", None)
        np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", list(LAYOUT_ZOO))
def test_fem_on_channels_last_and_token_layers_matches_pytorch_grad_cam(zoos, name):
    _, layout_zoo = zoos
    entry = LAYOUT_ZOO[name]
    ours = layout_zoo.ours(name, "fem", tuple(entry.layers))
    model, x = layout_zoo.model(name), layout_zoo.images(name)
    for layer, transform in entry.layers.items():
        reference = reference_maps(model, x, layer, "fem", [5, 9], reshape_transform=transform)
        np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


def test_fem_weighs_channels_by_their_share_of_outlying_positions():
    """A known answer: a channel with one outlier among 25 positions gets weight 1/25 (5 > mean + 2 std = 2.16); a
    constant one gets 0 (3 is not above 3 + 0)."""
    acts = torch.zeros(1, 2, 5, 5)
    acts[0, 0, 1, 2] = 5.0
    acts[0, 1] = 3.0
    net = nn.Sequential(nn.Identity(), nn.Flatten(), nn.Linear(50, 3))
    result = compute_cams(net, acts, ["0"], method="fem", class_idx=0)
    expected = np.zeros((5, 5), np.float32)
    expected[1, 2] = 5.0 / 25
    np.testing.assert_allclose(result.raw["0"][0], expected, atol=1e-7, rtol=0)


# --- RefineCAM -----------------------------------------------------------------------------------------------------


def _pytorch_grad_cam_refinecam(
    model: nn.Module, x: torch.Tensor, layers: tuple[str, ...], classes: list[int], transform: Callable | None = None
) -> np.ndarray:
    """pytorch-grad-cam's RefineCAM (base Grad-CAM++) on ``layers``, each layer's output kept as produced."""
    modules = dict(model.named_modules())
    cam = RefineCAM(model, [modules[layer] for layer in layers], reshape_transform=transform)
    handles = [modules[layer].register_forward_hook(keep_as_produced) for layer in layers]
    try:
        return cam(x, [ClassifierOutputTarget(k) for k in classes])
    finally:
        for handle in handles:
            handle.remove()
        for base in cam.base_cam_per_layer:
            base.activations_and_grads.release()
        model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["resnet18", "efficientnet_lite0", "densenet121"])
def test_refinecam_matches_pytorch_grad_cam(zoos, name):
    zoo, _ = zoos
    layers, classes = ZOO[name].layers, [3, 7]
    ours = compute_cams(zoo.model(name), zoo.images(), list(layers), method="refinecam", class_idx=classes)
    reference = _pytorch_grad_cam_refinecam(zoo.model(name), zoo.images(), layers, classes)
    np.testing.assert_allclose(ours.refined, reference, atol=ATOL, rtol=0)
    plus_plus = compute_cams(zoo.model(name), zoo.images(), list(layers), method="gradcam++", class_idx=classes)
    for layer in layers:  # each layer's own map is Grad-CAM++'s
        np.testing.assert_array_equal(ours.raw[layer], plus_plus.raw[layer])


@pytest.mark.parametrize("name,size", layout_sizes("deit_tiny", "convnext_tiny"))
def test_refinecam_on_token_and_channels_last_layers_matches_pytorch_grad_cam(zoos, name, size):
    """In float64 (see test_channels_last_and_token_layers_match_pytorch_grad_cam_with_a_reshape_transform); the
    layers of one model share a reshape_transform (ConvNeXt: its two channels-last block internals)."""
    _, layout_zoo = zoos
    entry = LAYOUT_ZOO[name]
    layers = tuple(layer for layer, transform in entry.layers.items() if transform is not None)[:2]
    model, x = layout_zoo.model(name, torch.float64, size), layout_zoo.images(name, size, torch.float64)
    ours = compute_cams(model, x, list(layers), method="refinecam", class_idx=[5, 9])
    reference = _pytorch_grad_cam_refinecam(model, x, layers, [5, 9], entry.reshape_transform(layers[0], size))
    np.testing.assert_allclose(ours.refined, reference, atol=ATOL, rtol=0)


def test_refined_is_the_normalised_product_of_the_layer_maps(small_resnet, x64):
    """A known answer on hand-made maps, and one layer gives back its own map."""
    result = compute_cams(small_resnet, x64, ["layer2", "layer3"], method="refinecam")
    maps = {
        "a": np.array([[[0.0, 0.5], [1.0, 1.0]]], np.float32),
        "b": np.array([[[1.0, 1.0], [0.5, 0.0]]], np.float32),
    }
    made = dataclasses.replace(result, layers=("a", "b"), maps=maps, class_idx=[0])
    np.testing.assert_allclose(made.refined, [[[0.0, 1.0], [1.0, 0.0]]], atol=1e-6)
    assert made.refined.dtype == np.float32
    alone = compute_cams(small_resnet, x64, ["layer3"], method="refinecam")
    np.testing.assert_allclose(alone.refined, alone.maps["layer3"], atol=1e-6)


# --- LeGrad --------------------------------------------------------------------------------------------------------

VIT_BLOCKS = ["encoder.layers.encoder_layer_5", "encoder.layers.encoder_layer_11"]


def test_legrad_matches_torchcam_per_block(zoos):
    """Two blocks of torchvision's ViT-B/16 (112 px, a class token and 7x7 patches) from one camlib call, each equal
    to torch-cam's LeGrad on that block alone (torch-cam averages the blocks of one call)."""
    _, layout_zoo = zoos
    model, x = layout_zoo.model("vit_b_16"), layout_zoo.images("vit_b_16")
    ours = compute_cams(model, x, VIT_BLOCKS, method="legrad", class_idx=[5, 9])
    for layer in VIT_BLOCKS:
        assert ours.raw[layer].shape == (2, 7, 7) and ours.raw[layer].min() >= 0
        with LeGrad(model, layer) as cam:
            model(x)
            relevance = cam(class_idx=[5, 9], normalized=False)[0]
        reference = reference_pipeline(relevance.detach().numpy(), (112, 112))
        np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)
        model.zero_grad(set_to_none=True)


def test_legrad_leaves_a_shared_vit_as_it_was(snapshot):
    """Train mode, one frozen weight and a pre-set gradient: LeGrad's own hooked pass leaves all of it (and no hook)."""
    model = seeded(tiny_vit)
    model.train()
    model.conv_proj.weight.requires_grad_(False)
    model.heads.head.weight.grad = torch.full_like(model.heads.head.weight, 0.25)
    before = snapshot(model)
    layer = "encoder.layers.encoder_layer_1"  # 17 tokens: 1 + 4x4 is told explicitly (8 + 3x3 would fit too)
    result = compute_cams(model, random_images(2, 32, seed=3), [layer], method="legrad", layouts={layer: "tokens:1"})
    assert result.raw[layer].shape == (2, 4, 4) and not result.degenerate[layer].any()
    before.assert_unchanged()


@pytest.mark.parametrize(
    "model_name,layer,message",
    [
        ("resnet18", "layer4", "vision-transformer blocks.*channels-first"),
        ("deit_tiny", "blocks.4", "nn.MultiheadAttention"),  # timm's fused attention: not supported
        ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", "nn.MultiheadAttention"),  # tokens, but not a block
    ],
)
def test_legrad_refuses_layers_it_cannot_explain(zoos, model_name, layer, message):
    zoo, layout_zoo = zoos
    model, x = (
        (layout_zoo.model(model_name), layout_zoo.images(model_name))
        if model_name in LAYOUT_ZOO
        else (zoo.model(model_name), zoo.images(SCORECAM_SIZE))
    )
    with pytest.raises(MethodError, match=message):
        compute_cams(model, x, [layer], method="legrad")


# --- aug_smooth and eigen_smooth (pytorch-grad-cam's options) --------------------------------------------------------

SMOOTHING_METHODS = ["gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "gradcam_elementwise", "scorecam"]


def _pytorch_grad_cam_call(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    method: str,
    classes: list[int],
    *,
    transform: Callable | None = None,
    **call: bool,
) -> np.ndarray:
    """pytorch-grad-cam's map of one layer, called with ``call`` (aug_smooth, eigen_smooth); output as produced."""
    module = dict(model.named_modules())[layer]
    with REFERENCE_CAMS[method](model=model, target_layers=[module], reshape_transform=transform) as cam:
        handle = module.register_forward_hook(keep_as_produced)
        try:
            return cam(input_tensor=x, targets=[ClassifierOutputTarget(k) for k in classes], **call)
        finally:
            handle.remove()
            model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("method", [m for m in SMOOTHING_METHODS if m != "scorecam"])  # 6 views: slow on CPU
def test_aug_smooth_matches_pytorch_grad_cam(zoos, method):
    zoo, _ = zoos
    model, x, classes = zoo.model("resnet18"), zoo.images(SCORECAM_SIZE), [3, 7]
    ours = compute_cams(model, x, ["layer2", "layer3"], method=method, class_idx=classes, aug_smooth=True)
    for layer in ours.layers:
        reference = _pytorch_grad_cam_call(model, x, layer, method, classes, aug_smooth=True)
        np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)
    plain = compute_cams(model, x, ["layer3"], method=method, class_idx=classes)
    assert np.abs(plain.maps["layer3"] - ours.maps["layer3"]).max() > 1e-3  # the views change the map


def _first_reshaped_layer(layout_zoo: LayoutZoo, name: str, size: int):
    """``(model, x, layer, transform)`` in float64: the layout-zoo model's first layer that needs a reshape_transform
    (channels-last or tokens), with pytorch-grad-cam's transform at ``size`` px."""
    entry = LAYOUT_ZOO[name]
    layer = next(layer for layer, t in entry.layers.items() if t is not None)
    model, x = layout_zoo.model(name, torch.float64, size), layout_zoo.images(name, size, torch.float64)
    return model, x, layer, entry.reshape_transform(layer, size)


# ConvNeXt's channels-last layers cost seconds here; its other methods' channels-last checks stay quick.
@pytest.mark.parametrize("name,size", layout_sizes("deit_tiny", "convnext_tiny", slow=("convnext_tiny",)))
def test_aug_smooth_on_token_and_channels_last_layers_matches_pytorch_grad_cam(zoos, name, size):
    model, x, layer, transform = _first_reshaped_layer(zoos[1], name, size)
    ours = compute_cams(model, x, [layer], class_idx=[5, 9], aug_smooth=True)
    reference = _pytorch_grad_cam_call(model, x, layer, "gradcam", [5, 9], transform=transform, aug_smooth=True)
    np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "method",
    # Score-CAM: one forward per channel of layer2 and layer3 (384 in all), ~10 s
    [pytest.param(m, marks=pytest.mark.slow) if m == "scorecam" else m for m in SMOOTHING_METHODS],
)
def test_eigen_smooth_matches_pytorch_grad_cam_up_to_the_sign(zoos, method):
    """pytorch-grad-cam keeps LAPACK's sign of the principal component; camlib orients it like the channel sum."""
    zoo, _ = zoos
    model, x, classes = zoo.model("resnet18"), zoo.images(SCORECAM_SIZE), [3, 7]
    ours = compute_cams(model, x, ["layer2", "layer3"], method=method, class_idx=classes, eigen_smooth=True)
    plain = compute_cams(model, x, ["layer2", "layer3"], method=method, class_idx=classes)
    for layer in ours.layers:
        reference = _pytorch_grad_cam_call(model, x, layer, method, classes, eigen_smooth=True)
        assert_equal_up_to_eigen_sign(ours, layer, reference, SCORECAM_SIZE)
        for smooth, summed in zip(ours.raw[layer], plain.raw[layer], strict=True):
            assert np.corrcoef(smooth.ravel(), summed.ravel())[0, 1] > 0


@pytest.mark.parametrize("name", ["deit_tiny", "convnext_tiny"])
def test_eigen_smooth_on_token_and_channels_last_layers_matches_pytorch_grad_cam(zoos, name):
    _, layout_zoo = zoos
    entry = LAYOUT_ZOO[name]
    layer, transform = next((layer, t) for layer, t in entry.layers.items() if t is not None)
    model, x = layout_zoo.model(name, torch.float64), layout_zoo.images(name, dtype=torch.float64)
    ours = compute_cams(model, x, [layer], method="layercam", class_idx=[5, 9], eigen_smooth=True)
    reference = _pytorch_grad_cam_call(model, x, layer, "layercam", [5, 9], transform=transform, eigen_smooth=True)
    assert_equal_up_to_eigen_sign(ours, layer, reference, entry.size)


def test_fem_ignores_eigen_smooth_as_pytorch_grad_cam(small_resnet, x64):
    smooth = compute_cams(small_resnet, x64, ["layer3"], method="fem", eigen_smooth=True)
    assert_same_result(smooth, compute_cams(small_resnet, x64, ["layer3"], method="fem"))


def test_aug_smooth_explains_the_original_images_class_and_counts_every_views_batches(small_resnet, x64):
    steps: list[tuple[int, int]] = []
    result = compute_cams(
        small_resnet,
        x64[:1],
        ["layer1"],
        method="scorecam",
        scorecam_batch_size=32,
        aug_smooth=True,
        progress=lambda done, total: steps.append((done, total)),
    )
    assert steps == [(k, 12) for k in range(1, 13)]  # 6 views x 64 / 32 batches
    with torch.no_grad():
        assert result.class_idx == small_resnet(x64[:1]).argmax(dim=1).tolist()
    np.testing.assert_allclose(result.logits, compute_cams(small_resnet, x64[:1], ["layer1"]).logits, atol=1e-6)
    assert result.maps["layer1"].dtype == np.float32 and result.raw["layer1"].shape == (1, 16, 16)


@pytest.mark.parametrize("kwargs", [{"aug_smooth": 1}, {"eigen_smooth": "yes"}])
def test_smoothing_flags_must_be_booleans(small_resnet, x64, kwargs):
    with pytest.raises(InputError, match="aug_smooth, eigen_smooth and counterfactual must be True or False"):
        compute_cams(small_resnet, x64, ["layer3"], **kwargs)


# --- applicability: MethodSpec.refusal ------------------------------------------------------------------------------


def _inspected(model: nn.Module, size: int) -> dict[str, Layout]:
    return {info.name: info.layout for info in list_candidate_layers(model, (size, size))}


def _applicability_cases():
    for name, entry in ZOO.items():
        if name in ("resnet18", "efficientnet_lite0"):
            for layer in entry.layers:
                yield pytest.param(name, layer, id=f"{name}-{layer}")
    for name, entry in LAYOUT_ZOO.items():
        for layer in entry.layers:
            yield pytest.param(name, layer, id=f"{name}-{layer}")
    yield pytest.param("vit_b_16", "encoder.layers.encoder_layer_11", id="vit_b_16-block")


@pytest.mark.parametrize("name,layer", _applicability_cases())
def test_a_refused_method_is_refused_at_compute_time_too(zoos, name, layer):
    """For CAM, LeGrad and KPCA-CAM on the zoo layers: where ``refusal`` gives a reason, ``compute_cams`` raises
    MethodError; LeGrad's reasons are exact (it computes wherever it is not refused). No other method refuses."""
    zoo, layout_zoo = zoos
    model, size = (layout_zoo.model(name), LAYOUT_ZOO[name].size) if name in LAYOUT_ZOO else (zoo.model(name), 64)
    layout = _inspected(model, size)[layer]
    x = random_images(1, size, seed=2)
    for method in ("cam", "legrad", "kpcacam"):
        reason = METHODS[method].refusal(model, layer, layout)
        assert reason is None or (isinstance(reason, str) and reason)
        if reason is not None:
            with pytest.raises(MethodError):
                compute_cams(model, x, [layer], method=method)
        elif method == "legrad":
            compute_cams(model, x, [layer], method=method)
    assert all(
        METHODS[m].refusal(model, layer, layout) is None for m in METHODS if m not in ("cam", "legrad", "kpcacam")
    )


@pytest.mark.parametrize(
    "name,layer,cam,legrad",
    [
        ("resnet18", "layer4", None, "vision-transformer"),
        ("resnet18", "layer3", "256 channels", "vision-transformer"),
        ("efficientnet_lite0", "bn2", None, "vision-transformer"),
        ("deit_tiny", "blocks.4", "class token", "nn.MultiheadAttention"),
        ("vit_b_16", "encoder.layers.encoder_layer_11", "class token", None),
    ],
)
def test_refusal_reasons_for_cam_and_legrad(zoos, name, layer, cam, legrad):
    """The UI greys a method out with this reason: CAM needs GAP + Linear, LeGrad needs a ViT block."""
    zoo, layout_zoo = zoos
    model, size = (layout_zoo.model(name), LAYOUT_ZOO[name].size) if name in LAYOUT_ZOO else (zoo.model(name), 64)
    layout = _inspected(model, size)[layer]
    for method, expected in (("cam", cam), ("legrad", legrad)):
        reason = METHODS[method].refusal(model, layer, layout)
        assert reason is None if expected is None else expected in reason
    assert (METHODS["legrad"].refusal(model, layer) is None) == (legrad is None)  # also without the layout


def test_refusal_of_an_unknown_layer_is_a_layer_error(small_resnet):
    with pytest.raises(LayerError, match="not a module"):
        METHODS["cam"].refusal(small_resnet, "layer9")


# --- KPCA-CAM's memory cap -----------------------------------------------------------------------------------------


def test_kpcacam_refuses_a_kernel_over_its_memory_cap_before_building_it(monkeypatch):
    """A 112 x 112 layer: a 12,544 x 12,544 float64 kernel (1.2 GiB) is over the 512 MiB cap; the kernel is never
    built (the projection is replaced by a tripwire), and the static refusal says the same from the layout."""
    assert camlib.cam.KPCA_MAX_KERNEL_BYTES == 512 * 2**20

    def tripwire(_acts):
        raise AssertionError("the kernel was built")

    monkeypatch.setattr(camlib.cam.activation, "_kernel_projection", tripwire)
    net = seeded(lambda: nn.Sequential(nn.Conv2d(3, 4, 1), nn.Flatten(), nn.Linear(4 * 112 * 112, 3)))
    with pytest.raises(MethodError, match=r"12,544 x 12,544 kernel.*1\.2 GiB.*512 MiB.*8,192 positions"):
        compute_cams(net, random_images(1, 112, seed=0), ["0"], method="kpcacam")
    layout = _inspected(net, 112)["0"]
    assert "12,544 x 12,544" in METHODS["kpcacam"].refusal(net, "0", layout)


def test_kpcacam_cap_separates_layers_by_their_positions(monkeypatch, small_resnet, x64):
    """With the cap set to 63^2 entries, ResNet-18's 8 x 8 layer2 (64 positions) is refused and its 4 x 4 layer3
    computed; at the default cap both are."""
    layouts = _inspected(small_resnet, 64)
    assert METHODS["kpcacam"].refusal(small_resnet, "layer2", layouts["layer2"]) is None
    compute_cams(small_resnet, x64, ["layer2", "layer3"], method="kpcacam")
    monkeypatch.setattr(camlib.cam.activation, "KPCA_MAX_KERNEL_BYTES", 8 * 63**2)
    assert "64 x 64 kernel" in METHODS["kpcacam"].refusal(small_resnet, "layer2", layouts["layer2"])
    assert METHODS["kpcacam"].refusal(small_resnet, "layer3", layouts["layer3"]) is None
    with pytest.raises(MethodError, match="KPCA-CAM cannot explain layer 'layer2'.*64 x 64 kernel"):
        compute_cams(small_resnet, x64, ["layer2", "layer3"], method="kpcacam")
    assert not compute_cams(small_resnet, x64, ["layer3"], method="kpcacam").degenerate["layer3"].any()


# --- SESS ----------------------------------------------------------------------------------------------------------

SESS_SCALES_IN_TESTS = 3  # pytorch-grad-cam's default is 12 (SESS_SCALES); 3 keep the CPU time small


def _pytorch_grad_cam_sess(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    classes: list[int],
    transform: Callable | None = None,
    *,
    scales: int = SESS_SCALES_IN_TESTS,
) -> np.ndarray:
    module = dict(model.named_modules())[layer]
    with SESS(model, [module], transform, num_scales=scales) as cam:
        handle = module.register_forward_hook(keep_as_produced)
        try:
            return cam(x, [ClassifierOutputTarget(k) for k in classes])
        finally:
            handle.remove()
            model.zero_grad(set_to_none=True)


@pytest.mark.parametrize(
    "name",
    ["efficientnet_lite0", "mobilenet_v3_small", "densenet121", pytest.param("vgg11_bn", marks=pytest.mark.slow)],
)
def test_sess_on_the_rest_of_the_cnn_zoo_matches_pytorch_grad_cam(zoos, name):
    zoo, _ = zoos
    model, x, classes = zoo.model(name), zoo.images(SCORECAM_SIZE), [3, 7]
    layer = ZOO[name].layers[0]
    ours = compute_cams(model, x, [layer], method="sess", class_idx=classes, n_samples=SESS_SCALES_IN_TESTS)
    np.testing.assert_allclose(ours.maps[layer], _pytorch_grad_cam_sess(model, x, layer, classes), atol=ATOL, rtol=0)


def test_sess_matches_pytorch_grad_cam(zoos):
    """Two layers of ResNet-18 from one call (64 px: scales 64, 82, 100 and their 64 px patches), and a non-square
    input (64 x 96: the windows slide along the long side)."""
    zoo, _ = zoos
    model, classes = zoo.model("resnet18"), [3, 7]
    for x in (zoo.images(SCORECAM_SIZE), random_images(2, 96, seed=8)[:, :, :64]):
        ours = compute_cams(model, x, ["layer2", "layer3"], method="sess", class_idx=classes, n_samples=3)
        for layer in ours.layers:
            assert ours.raw[layer].shape == (2, *x.shape[-2:])
            reference = _pytorch_grad_cam_sess(model, x, layer, classes)
            np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


# ConvNeXt's channels-last layers cost seconds here; its other methods' channels-last checks stay quick.
@pytest.mark.parametrize("name,size", layout_sizes("deit_tiny", "convnext_tiny", slow=("convnext_tiny",)))
def test_sess_on_token_and_channels_last_layers_matches_pytorch_grad_cam(zoos, name, size):
    model, x, layer, transform = _first_reshaped_layer(zoos[1], name, size)
    ours = compute_cams(model, x, [layer], method="sess", class_idx=[5, 9], n_samples=2)
    module = dict(model.named_modules())[layer]
    with SESS(model, [module], transform, num_scales=2) as cam:
        reference = cam(x, [ClassifierOutputTarget(5), ClassifierOutputTarget(9)])
    model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "name,layer,size",
    [
        ("swin_t", "features.5", LAYOUT_SCORECAM_SIZE["swin_t"]),
        # ViT-B/16 (768 channels at 112 px): tens of seconds; DeiT's tokens are in the quick tier above
        pytest.param("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", 112, marks=pytest.mark.slow),
    ],
)
def test_sess_on_swin_and_vit_matches_pytorch_grad_cam(zoos, name, layer, size):
    """Swin-T's channels-last stage output at 64 px (4 x 4) and ViT-B/16's tokens at 112 px (its only size: a class
    token and 7 x 7 patches), two scales each, in float32 (DeiT's and ConvNeXt's SESS test above is in float64)."""
    _, layout_zoo = zoos
    model, x = layout_zoo.model(name), layout_zoo.images(name, size)
    transform = LAYOUT_ZOO[name].layers[layer]
    ours = compute_cams(model, x, [layer], method="sess", class_idx=[5, 9], n_samples=2)
    reference = _pytorch_grad_cam_sess(model, x, layer, [5, 9], transform, scales=2)
    np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


class _Tokens(nn.Module):
    """8 px patches of any input size and a class token: ``block`` outputs ``(B, 1 + h w, 8)`` tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patches, self.block, self.head = nn.Conv2d(3, 8, 8, stride=8), nn.Identity(), nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patches(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)
        return self.head(self.block(tokens).mean(dim=1))


def test_sess_steps_once_per_scale_and_refuses_tokens_on_a_non_square_input(small_resnet, x64):
    steps: list[tuple[int, int]] = []
    compute_cams(
        small_resnet,
        x64,
        ["layer3"],
        method="sess",
        n_samples=2,
        progress=lambda done, total: steps.append((done, total)),
    )
    assert steps == [(k, 4) for k in range(1, 5)]  # 2 images x 2 scales
    assert METHODS["sess"].extra_forwards(256) == 20 * 12 and METHODS["sess"].batches(256, 32) == 12
    with pytest.raises(MethodError, match="square input"):
        compute_cams(
            seeded(_Tokens),
            random_images(1, 64, seed=1)[:, :, :32],
            ["block"],
            method="sess",
            layouts={"block": "tokens:1"},
        )


def test_randomcam_draws_its_weights_from_the_seed(small_resnet, x64):
    """The seed of compute_cams (default RANDOM_CAM_SEED) picks Random-CAM's weights: reproducible, and another seed
    gives another map (the same for every image and class)."""
    default = compute_cams(small_resnet, x64, ["layer3"], method="randomcam")
    assert_same_result(compute_cams(small_resnet, x64, ["layer3"], method="randomcam", seed=RANDOM_CAM_SEED), default)
    other = compute_cams(small_resnet, x64, ["layer3"], method="randomcam", seed=RANDOM_CAM_SEED + 1)
    assert np.abs(other.raw["layer3"] - default.raw["layer3"]).max() > 1e-3 * np.abs(default.raw["layer3"]).max()


# --- counterfactual maps (Selvaraju et al. 2017, negated gradients) ---------------------------------------------------

COUNTERFACTUAL_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam", "gradcam_elementwise")


class _NegatedTarget:
    """pytorch-grad-cam target for the counterfactual map: minus the class's logit (its gradients negated)."""

    def __init__(self, k: int) -> None:
        self.k = k

    def __call__(self, output: torch.Tensor) -> torch.Tensor:
        return -output[..., self.k]


@pytest.fixture(scope="module")
def counterfactual_model() -> nn.Module:
    model = seeded_resnet18(3)
    for module in model.modules():  # pytorch-grad-cam reads post-in-place values otherwise (test_cam.py)
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return model


@pytest.mark.parametrize("method", COUNTERFACTUAL_METHODS)
@pytest.mark.parametrize("layer", ["layer3", "layer4"])
def test_counterfactual_maps_equal_pytorch_grad_cam_with_a_negated_target(counterfactual_model, method, layer):
    model, x, classes = counterfactual_model, random_images(2, 64, 5), [7, 281]
    ours = compute_cams(model, x, [layer], method=method, class_idx=classes, counterfactual=True)
    assert ours.counterfactual and ours.class_idx == classes
    module = dict(model.named_modules())[layer]
    with REFERENCE_CAMS[method](model=model, target_layers=[module]) as cam:
        handle = module.register_forward_hook(keep_as_produced)
        try:
            theirs = cam(input_tensor=x, targets=[_NegatedTarget(k) for k in classes])
        finally:
            handle.remove()
    model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(ours.maps[layer], theirs, atol=ATOL)


@pytest.mark.parametrize("method", ["gradcam", "hirescam"])
def test_a_counterfactual_map_is_the_negated_raw_map_for_methods_linear_in_the_gradients(counterfactual_model, method):
    """Grad-CAM's and HiResCAM's raw maps are linear in the gradients, so negating the gradients negates the raw map:
    the counterfactual map is exactly the evidence against the class that the plain map's ReLU drops."""
    x = random_images(2, 64, 6)
    plain = compute_cams(counterfactual_model, x, ["layer4"], method=method, class_idx=3)
    against = compute_cams(counterfactual_model, x, ["layer4"], method=method, class_idx=3, counterfactual=True)
    np.testing.assert_allclose(against.raw["layer4"], -plain.raw["layer4"], rtol=1e-5, atol=1e-7)
    assert not plain.counterfactual
    positive, negative = plain.raw["layer4"] > 0, against.raw["layer4"] > 0
    assert positive.any() and negative.any() and not (positive & negative).any()


def test_a_counterfactual_grid_shares_one_pass_and_equals_its_cells(counterfactual_model):
    x = random_images(1, 64, 7)
    grid = camlib.cam.compute_cam_grid(
        counterfactual_model, x, ["layer3", "layer4"], ["gradcam", "layercam"], counterfactual=True
    )
    for method, result in grid.items():
        alone = compute_cams(counterfactual_model, x, ["layer4"], method=method, counterfactual=True)
        np.testing.assert_allclose(result.maps["layer4"], alone.maps["layer4"], atol=1e-6)
        assert result.counterfactual


@pytest.mark.parametrize("method", ["eigencam", "scorecam", "cam", "fem"])
def test_counterfactual_is_refused_for_methods_without_gradients(counterfactual_model, method):
    with pytest.raises(MethodError, match="negates the gradients"):
        compute_cams(counterfactual_model, random_images(1, 32, 0), ["layer4"], method=method, counterfactual=True)


@pytest.mark.parametrize("bad", [1, "yes", None])
def test_counterfactual_must_be_a_bool(counterfactual_model, bad):
    with pytest.raises(InputError, match="counterfactual"):
        compute_cams(counterfactual_model, random_images(1, 32, 0), ["layer4"], counterfactual=bad)


# --- model dtypes: every method on float16, bfloat16 and float64 models ------------------------------------------


def _dtype_cases():
    for model_name in DTYPE_MODELS:
        for method in METHODS:
            if (method == "legrad") == (model_name == "vit"):
                yield model_name, method


@functools.cache
def _float32_result(model_name: str, method: str) -> CamResult:
    build, size, layer, layouts = DTYPE_MODELS[model_name]
    x = random_images(3, size, seed=21)
    return compute_cams(seeded(build), x, [layer], method=method, layouts=layouts, n_samples=2)


@pytest.mark.bad_input(75)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("model_name,method", list(_dtype_cases()))
def test_every_method_on_a_half_or_double_precision_model_equals_the_float32_models_maps(model_name, method, dtype):
    """The model runs in its own dtype and is never cast (its parameters keep their dtype and values); the maps are
    finite, flagged as the float32 model's, and equal to them within the dtype's precision; the raw maps are in the
    method's working precision (float64 for a float64 model, else float32) and rebuild the maps (finish_maps)."""
    build, size, layer, layouts = DTYPE_MODELS[model_name]
    expected = _float32_result(model_name, method)
    model = seeded(build).to(dtype)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    x = random_images(3, size, seed=21)
    result = compute_cams(model, x, [layer], method=method, layouts=layouts, n_samples=2, class_idx=expected.class_idx)
    assert all(t.dtype == dtype and torch.equal(t, before[n]) for n, t in model.state_dict().items())
    maps = result.maps[layer]
    assert maps.dtype == np.float32 and np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    np.testing.assert_array_equal(result.degenerate[layer], expected.degenerate[layer])
    assert not expected.degenerate[layer].all()  # a blank reference would prove nothing
    saturated = method == "kpcacam" and model_name == "cnn" and dtype == torch.float64
    largest, mean = dtype_tolerance(dtype, KPCA_ULPS if saturated else 32)
    difference = np.abs(maps - expected.maps[layer])
    assert difference.max() <= largest and difference.mean() <= mean, (difference.max(), difference.mean())
    assert result.raw[layer].dtype == (np.float64 if dtype == torch.float64 else np.float32)
    np.testing.assert_array_equal(finish_maps(result.raw[layer], (size, size)), maps)


@pytest.mark.bad_input(75)
@pytest.mark.parametrize("method", ["gradcam++", "smoothgradcam++", "refinecam"])
def test_gradcam_plus_plus_on_float16_is_finite_where_its_sums_overflow_float16(method):
    """The case of the issue, made sure of: on the float16 model, ``deep``'s channel sums overflow float16 and the
    cubes of its gradients underflow, yet the maps are finite, not degenerate, and the float32 model's."""
    model = seeded(HotNet).half()
    x = random_images(3, 16, seed=21)
    captured = {}
    handle = model.deep.register_forward_hook(lambda _m, _i, output: captured.update(acts=output.detach()))
    with torch.no_grad():
        model(x.half())
    handle.remove()
    assert torch.isinf(captured["acts"].sum(dim=(2, 3))).any()  # the premise: float16 cannot hold the sums
    result = compute_cams(model, x, ["deep"], method=method, n_samples=2)
    expected = _float32_result("cnn", method)
    assert np.isfinite(result.maps["deep"]).all() and not result.degenerate["deep"].any()
    np.testing.assert_allclose(result.maps["deep"], expected.maps["deep"], atol=dtype_tolerance(torch.float16)[0])


# --- methods combined in one grid call ---------------------------------------------------------------------------


class _StridedNet(nn.Module):
    """conv (stride 2) -> BN -> ReLU -> ``features`` -> spatial mean -> ``head``: a 12 px input gives a 6 x 6 map."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.features = nn.Identity()
        self.head = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(torch.relu(self.bn(self.conv(x)))).mean(dim=(2, 3)))


# (model, input size, layer, layouts): every method but LeGrad on a small CNN's 6 x 6 feature map (it feeds the
# global pooling and one Linear, so CAM applies), LeGrad with every method that applies to a ViT block's 4 x 4 grid.
# SESS's raw map is at the input size, every other method's at the layer's.
PAIR_MODELS = {
    "cnn": (partial(seeded, _StridedNet), 12, "features", None),
    "vit": (
        partial(seeded, tiny_vit),
        32,
        "encoder.layers.encoder_layer_0",
        {"encoder.layers.encoder_layer_0": "tokens:1"},
    ),
}


def _pairs():
    cnn = [m for m in METHODS if m != "legrad"]
    yield from (("cnn", pair) for pair in itertools.combinations(cnn, 2))
    # CAM refuses a class-token model; ShapleyCAM needs second derivatives, which CPU flash attention lacks.
    yield from (("vit", ("legrad", m)) for m in METHODS if m not in ("legrad", "cam", "shapleycam"))


@functools.cache
def _alone(model_name: str, method: str) -> CamResult:
    build, size, layer, layouts = PAIR_MODELS[model_name]
    x = random_images(2, size, seed=8)
    return compute_cams(build(), x, [layer], method=method, layouts=layouts, n_samples=2, scorecam_batch_size=4)


@pytest.mark.bad_input(76)
@pytest.mark.parametrize("model_name,pair", list(_pairs()), ids=lambda v: "+".join(v) if isinstance(v, tuple) else v)
def test_every_pair_of_methods_in_one_grid_call_equals_each_method_alone(model_name, pair):
    """Each cell of a two-method grid call equals its method's own compute_cams call, whatever the raw maps'
    resolutions (SESS's is the input's), in both orders."""
    build, size, layer, layouts = PAIR_MODELS[model_name]
    x = random_images(2, size, seed=8)
    for methods in (pair, pair[::-1]):
        grid = compute_cam_grid(build(), x, [layer], list(methods), layouts=layouts, n_samples=2, scorecam_batch_size=4)
        assert list(grid) == list(methods)
        for method in methods:
            assert_same_result(grid[method], _alone(model_name, method))
