"""The reference comparison of camlib.cam with pytorch-grad-cam 1.5.7, shared by tests/test_cam.py and
tests/test_cam_methods.py: pytorch-grad-cam's map for one layer (``reference_maps``) and its finishing pipeline, the
seeded zoo of torchvision/timm CNNs (``ZOO``, ``Zoo``) and the zoo of channels-last and token layers (``LAYOUT_ZOO``,
``LayoutZoo``) with pytorch-grad-cam's reshape transforms.

The zoos build each model once per test module and take the input size as an argument: the quick tier compares at
small inputs (``QUICK_SIZE``, ``LAYOUT_QUICK_SIZE``), the slow tier (``pytest.mark.slow``) at the models' full sizes.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
import torchvision
from pytorch_grad_cam import (
    FEM,
    KPCA_CAM,
    SESS,
    AblationCAM,
    EigenCAM,
    EigenGradCAM,
    FinerCAM,
    GradCAM,
    GradCAMElementWise,
    GradCAMPlusPlus,
    HiResCAM,
    LayerCAM,
    RandomCAM,
    RefineCAM,
    ScoreCAM,
    ShapleyCAM,
    XGradCAM,
)
from pytorch_grad_cam.utils.image import scale_cam_image
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from camlib.cam import CamResult, compute_cams

from .models import seeded

FEW_SAMPLES = 2  # noisy or integration samples of the sampling methods in the invariant tests (others ignore it)
FULL_SIZE = 224  # the ImageNet input size the zoo's models are built for
QUICK_SIZE = 64  # the quick tier's input: the zoo layers' maps are 2x2 (stride 32) to 16x16 (stride 4)


def sizes(quick: int, full: int) -> list:
    """``size`` parameters: ``quick`` in the quick tier, ``full`` (the model's own size) under ``pytest.mark.slow``."""
    return [pytest.param(quick, id=f"{quick}px"), pytest.param(full, id=f"{full}px", marks=pytest.mark.slow)]


ATOL = 1e-5  # on maps in [0, 1]
REFERENCE_CAMS = {
    "gradcam": GradCAM,
    "gradcam++": GradCAMPlusPlus,
    "xgradcam": XGradCAM,
    "hirescam": HiResCAM,
    "layercam": LayerCAM,
    "eigencam": EigenCAM,
    "scorecam": ScoreCAM,
    "gradcam_elementwise": GradCAMElementWise,
    "eigengradcam": EigenGradCAM,
    "ablationcam": AblationCAM,
    "kpcacam": KPCA_CAM,
    "randomcam": RandomCAM,  # with its numpy draws replaced by camlib's (see _injected_random_weights)
    "cam": GradCAM,  # pytorch-grad-cam has no CAM: where CAM is defined, Grad-CAM's weights are CAM's / (h w)
    "finercam": FinerCAM,  # its own targets: called with target_idx (see reference_maps)
    "shapleycam": ShapleyCAM,
    "fem": FEM,  # compared in tests/test_cam_methods.py
    "refinecam": RefineCAM,  # CamResult.refined, compared in tests/test_cam_methods.py
    "sess": SESS,  # compared in tests/test_cam_methods.py
}


def random_images(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def classes_per_image(class_idx: int | list[int], batch: int) -> list[int]:
    return [class_idx] * batch if isinstance(class_idx, int) else list(class_idx)


def inplace_off(model: nn.Module) -> nn.Module:
    """The same model (same weights, in place) with every module's ``inplace`` flag switched off."""
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    return model


def keep_as_produced(_module: nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
    """Registered after pytorch-grad-cam's hooks: the network continues on a copy, so the tensor pytorch-grad-cam
    stored keeps the layer's output as produced, also under in-place ops that are not module flags (a residual
    ``+=``, DenseNet's functional ``F.relu(..., inplace=True)``)."""
    return output.clone()


def reference_maps(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    method: str,
    class_idx: int | list[int] | None,
    *,
    reshape_transform: Callable | None = None,
    as_produced: bool = True,
    cam_kwargs: dict | None = None,
) -> np.ndarray:
    """pytorch-grad-cam's map for one target layer; its parameter gradients are dropped afterwards.

    pytorch-grad-cam reads its stored activations after the forward, so in-place ops that run later change them
    (but not its gradients). camlib uses the output as produced; ``as_produced=True`` makes pytorch-grad-cam do the
    same (see ``keep_as_produced``); the zoo models also have their ``inplace`` flags off. ``cam_kwargs`` go to the
    reference class's constructor (AblationCAM's ``ablation_layer`` and ``batch_size``).
    """
    targets = None if class_idx is None else [ClassifierOutputTarget(k) for k in classes_per_image(class_idx, len(x))]
    module = dict(model.named_modules())[layer]
    reference = REFERENCE_CAMS[method]
    with reference(
        model=model, target_layers=[module], reshape_transform=reshape_transform, **(cam_kwargs or {})
    ) as cam:
        handle = module.register_forward_hook(keep_as_produced) if as_produced else None
        try:
            if method != "finercam":
                maps = cam(input_tensor=x, targets=targets)
            elif class_idx is None or isinstance(class_idx, int):  # FinerCAM builds its targets from target_idx
                maps = cam(input_tensor=x, target_idx=class_idx)
            else:
                maps = np.concatenate([cam(input_tensor=x[b : b + 1], target_idx=k) for b, k in enumerate(class_idx)])
        finally:
            if handle is not None:
                handle.remove()
    model.zero_grad(set_to_none=True)
    return maps


def layer_output(
    model: nn.Module, x: torch.Tensor, layer: str, transform: Callable[[torch.Tensor], torch.Tensor] | None = None
) -> torch.Tensor:
    """The layer's output on ``x`` (no gradients), read as ``(B, C, h, w)`` through ``transform`` when given."""
    store: dict[str, torch.Tensor] = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda _m, _i, out: store.update(out=out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return store["out"] if transform is None else transform(store["out"])


def reference_pipeline(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """base_cam's path from a signed (B, h, w) map: ReLU, scale_cam_image to (W, H), the one-layer aggregation."""
    height, width = size
    return scale_cam_image(scale_cam_image(np.maximum(raw, 0), (width, height)))


def assert_same_result(got: CamResult, expected: CamResult) -> None:
    """Same method, layers, classes and degenerate flags; logits, raw maps and maps equal up to float32 rounding (a
    batch or a grid may sum in another order)."""
    assert got.method == expected.method and got.layers == expected.layers and got.class_idx == expected.class_idx
    np.testing.assert_allclose(got.logits, expected.logits, atol=1e-6)
    for layer in expected.layers:
        np.testing.assert_allclose(got.raw[layer], expected.raw[layer], atol=1e-6, rtol=1e-5)
        np.testing.assert_allclose(got.maps[layer], expected.maps[layer], atol=1e-5)
        np.testing.assert_array_equal(got.degenerate[layer], expected.degenerate[layer])


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    build: Callable[[], nn.Module]
    layers: tuple[str, ...]  # explained together in ONE camlib call, each compared with a one-layer reference call


# The reference comparison runs on these models with every `inplace` flag off (`Zoo.model`); `Zoo.model_inplace` is the
# same weights with the flags as built, which must give the same maps.
ZOO = {
    # layer4.1.bn2: its output is then changed in place by the residual `+=` and the inplace ReLU.
    "resnet18": ZooEntry(lambda: torchvision.models.resnet18(weights=None), ("layer4", "layer3", "layer4.1.bn2")),
    # features: followed by F.relu(..., inplace=True) in DenseNet.forward.
    "densenet121": ZooEntry(lambda: torchvision.models.densenet121(weights=None), ("features", "features.denseblock3")),
    "mobilenet_v3_small": ZooEntry(lambda: torchvision.models.mobilenet_v3_small(weights=None), ("features.12",)),
    # features.27: the last ReLU(inplace=True), whose output is its input tensor modified in place; features.26: that
    # batch norm, whose output the next module changes in place.
    "vgg11_bn": ZooEntry(lambda: torchvision.models.vgg11_bn(weights=None), ("features.27", "features.26")),
    "efficientnet_lite0": ZooEntry(
        lambda: timm.create_model("efficientnet_lite0", pretrained=False), ("bn2", "blocks.5")
    ),
}
SCORECAM_SIZE = 64


class Zoo:
    """Seeded models, inputs, explicit classes and camlib results, built lazily and shared by the module."""

    def __init__(self) -> None:
        self._models: dict[str, nn.Module] = {}
        self._images: dict[int, torch.Tensor] = {}
        self._results: dict[tuple, CamResult] = {}
        self._activations: dict[str, dict[str, np.ndarray]] = {}
        self._logits: dict[tuple[str, int], np.ndarray] = {}

    def model(self, name: str) -> nn.Module:
        """The seeded zoo model with every ``inplace`` flag off (the reference comparison's model)."""
        if name not in self._models:
            self._models[name] = inplace_off(seeded(ZOO[name].build))
        return self._models[name]

    def model_inplace(self, name: str) -> nn.Module:
        """The same weights with the ``inplace`` flags as torchvision/timm build them."""
        key = f"{name}:inplace"
        if key not in self._models:
            self._models[key] = seeded(ZOO[name].build)
        return self._models[key]

    def model64(self, name: str) -> nn.Module:
        """A float64 copy of ``model(name)``."""
        key = f"{name}:float64"
        if key not in self._models:
            self._models[key] = copy.deepcopy(self.model(name)).double()
        return self._models[key]

    def images(self, size: int = FULL_SIZE) -> torch.Tensor:
        if size not in self._images:
            self._images[size] = random_images(2, size, seed=size)
        return self._images[size]

    def logits(self, name: str, size: int = FULL_SIZE) -> np.ndarray:
        if (name, size) not in self._logits:
            with torch.no_grad():
                self._logits[name, size] = self.model(name)(self.images(size)).numpy()
        return self._logits[name, size]

    def targets(self, name: str, kind: str, size: int = FULL_SIZE) -> int | list[int] | None:
        """None, or classes that are not the argmax of either image."""
        if kind == "argmax":
            return None
        logits = self.logits(name, size)
        order = np.argsort(-logits, axis=1, kind="stable")
        top = set(order[:, 0].tolist())
        if kind == "same":
            return next(int(k) for k in order[0, 1:] if int(k) not in top)
        per_image = [int(order[0, 2]), int(order[1, -1])]
        assert per_image[0] != per_image[1] and not top & set(per_image)
        return per_image

    def ours(
        self, name: str, method: str, kind: str, size: int = FULL_SIZE, layers: tuple[str, ...] | None = None
    ) -> CamResult:
        layers = layers or ZOO[name].layers
        key = (name, method, kind, size, layers)
        if key not in self._results:
            self._results[key] = compute_cams(
                self.model(name),
                self.images(size),
                list(layers),
                method=method,
                class_idx=self.targets(name, kind, size),
                n_samples=FEW_SAMPLES,
            )
        return self._results[key]

    def activations(self, name: str) -> dict[str, np.ndarray]:
        """Each zoo layer's output values as the layer produced them (copied in the hook, before any later in-place
        op), from our own forward hooks."""
        if name not in self._activations:
            model = self.model(name)
            modules = dict(model.named_modules())
            store: dict[str, torch.Tensor] = {}
            handles = [
                modules[layer].register_forward_hook(
                    lambda _m, _i, out, layer=layer: store.update({layer: out.clone()})
                )
                for layer in ZOO[name].layers
            ]
            try:
                with torch.no_grad():
                    model(self.images())
            finally:
                for handle in handles:
                    handle.remove()
            self._activations[name] = {layer: out.numpy().copy() for layer, out in store.items()}
        return self._activations[name]


def channels_last(tensor: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's reshape_transform for Swin/ConvNeXt internals (its tutorial's swin example)."""
    return tensor.permute(0, 3, 1, 2)


def drop_tokens(prefix: int, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's ViT reshape_transform (tutorials/vision_transformers.md), dropping ``prefix`` tokens."""

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        result = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return result.transpose(2, 3).transpose(1, 2)

    return reshape


def vit_b_16_at(size: int) -> nn.Module:
    """ViT-B/16 for ``size`` px inputs; torchvision initialises its head to zeros (all-zero logits and gradients), so
    it gets a random one here, drawn from the caller's seeded RNG."""
    model = torchvision.models.vit_b_16(weights=None, image_size=size)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


@dataclasses.dataclass(frozen=True)
class LayoutEntry:
    build: Callable[[int], nn.Module]  # called with the input size (a token model's position embeddings fix it)
    size: int
    layers: dict[str, Callable[[torch.Tensor], torch.Tensor] | None]  # layer -> pytorch-grad-cam reshape_transform
    scorecam_layer: str | None  # a layer with few enough channels for Score-CAM on CPU (None: skipped, see below)
    token_prefix: int | None = None  # class/distillation tokens before the 16-px patches of a token model

    def reshape_transform(self, layer: str, size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """pytorch-grad-cam's reshape_transform for ``layer`` at a ``size`` px input."""
        if self.token_prefix is None:
            return self.layers[layer]
        return drop_tokens(self.token_prefix, size // 16, size // 16)


LAYOUT_ZOO = {
    "convnext_tiny": LayoutEntry(
        lambda _size: torchvision.models.convnext_tiny(weights=None),
        96,
        {"features.1.0.block.2": channels_last, "features.5.8.block.3": channels_last, "features.5": None},
        "features.1.0.block.2",
    ),
    "swin_t": LayoutEntry(
        lambda _size: torchvision.models.swin_t(weights=None),
        96,
        {"features.5": channels_last, "features.7.1.norm2": channels_last, "norm": channels_last},
        "features.1",
    ),
    # ViT-B/16 at 112 px: 1 class token + 7x7 patches. Score-CAM (768 channels = 1,536 ViT-B forwards) is left to
    # DeiT-Tiny, which exercises the same token path with 192 channels.
    "vit_b_16": LayoutEntry(
        vit_b_16_at,
        112,
        {
            "encoder.layers.encoder_layer_11.ln_1": drop_tokens(1, 7, 7),
            "encoder.layers.encoder_layer_5": drop_tokens(1, 7, 7),
        },
        None,
        token_prefix=1,
    ),
    # DeiT-Tiny distilled: a class token and a distillation token before the patches.
    "deit_tiny": LayoutEntry(
        lambda size: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=size),
        112,
        {"blocks.11.norm1": drop_tokens(2, 7, 7), "blocks.4": drop_tokens(2, 7, 7)},
        "blocks.11.norm1",
        token_prefix=2,
    ),
}
LAYOUT_SCORECAM_SIZE = {"convnext_tiny": 64, "swin_t": 64, "deit_tiny": 112}
# The quick tier's inputs: every zoo layer's map still 2x2 or more (ConvNeXt's stride 16; 3x3 DeiT and 4x4 narrow
# ViT patches: at 3x3 the narrow ViT's last-layer Grad-CAM is all negative for one seeded image). Swin stays at 96: at
# 64 its final norm's 2x2 Hi-Res map is all negative (degenerate) for one of the seeded images.
LAYOUT_QUICK_SIZE = {"convnext_tiny": 64, "swin_t": 96, "vit_b_16": 64, "deit_tiny": 48}


def _narrow_convnext_tiny(_size: int) -> nn.Module:
    """torchvision's ConvNeXt-T (stages of 3, 3, 9 and 3 blocks, its layer scale and layer names) at a quarter of its
    widths: 24 to 192 channels instead of 96 to 768."""
    from torchvision.models.convnext import CNBlockConfig

    stages = [
        CNBlockConfig(24, 48, 3),
        CNBlockConfig(48, 96, 3),
        CNBlockConfig(96, 192, 9),
        CNBlockConfig(192, None, 3),
    ]
    return torchvision.models.ConvNeXt(stages, stochastic_depth_prob=0.1)


def _narrow_swin_t(_size: int) -> nn.Module:
    """torchvision's Swin-T (4 px patches, 7 x 7 windows, stages of 2, 2, 6 and 2 blocks, its layer names) at a quarter
    of its widths: 24 channels a head, 24 to 192 channels instead of 96 to 768."""
    return torchvision.models.SwinTransformer([4, 4], 24, [2, 2, 6, 2], [1, 2, 4, 8], [7, 7], stochastic_depth_prob=0.2)


def _narrow_vit_b_16(size: int) -> nn.Module:
    """torchvision's ViT-B/16 (16 px patches, a class token, 12 encoder layers and their names) at 64 channels and 2
    heads instead of 768 and 12, with a random head (torchvision's is zeros)."""
    model = torchvision.models.VisionTransformer(size, 16, num_layers=12, num_heads=2, hidden_dim=64, mlp_dim=128)
    nn.init.normal_(model.heads.head.weight, std=0.02)
    return model


# Narrow copies of the layout zoo's wide models, with the same layer names and layouts: the quick tier's comparison
# on channels-last and token layers (a full-width ConvNeXt, Swin or ViT-B in float64 takes ~1 s a reference call).
NARROW_LAYOUT = {"convnext_tiny": _narrow_convnext_tiny, "swin_t": _narrow_swin_t, "vit_b_16": _narrow_vit_b_16}


def layout_sizes(*names: str, slow: tuple[str, ...] = ()) -> list:
    """``(name, size)`` parameters: each layout-zoo model at LAYOUT_QUICK_SIZE, and at its zoo size under
    ``pytest.mark.slow`` where that differs; the models in ``slow`` run at both sizes in the slow tier only."""
    params = []
    for name in names:
        quick, full = LAYOUT_QUICK_SIZE[name], LAYOUT_ZOO[name].size
        marks = pytest.mark.slow if name in slow else ()
        params.append(pytest.param(name, quick, id=f"{name}-{quick}px", marks=marks))
        if full != quick:
            params.append(pytest.param(name, full, id=f"{name}-{full}px", marks=pytest.mark.slow))
    return params


class LayoutZoo:
    """Seeded layout-zoo models (per dtype, and per input size for token models) and camlib results, built lazily."""

    def __init__(self) -> None:
        self._models: dict[tuple, nn.Module] = {}
        self._results: dict[tuple, CamResult] = {}

    def model(
        self, name: str, dtype: torch.dtype = torch.float32, size: int | None = None, narrow: bool = False
    ) -> nn.Module:
        """The seeded model, or its narrow copy (``NARROW_LAYOUT``), for ``size`` px inputs in ``dtype``."""
        entry = LAYOUT_ZOO[name]
        size = size or entry.size
        build = NARROW_LAYOUT[name] if narrow else entry.build
        key = (name, dtype, size if entry.token_prefix is not None or narrow else None, narrow)
        if key not in self._models:
            self._models[key] = inplace_off(seeded(lambda: build(size))).to(dtype)
        return self._models[key]

    def images(self, name: str, size: int | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return random_images(2, size or LAYOUT_ZOO[name].size, seed=11).to(dtype)

    def ours(
        self,
        name: str,
        method: str,
        layers: tuple[str, ...],
        size: int | None = None,
        dtype: torch.dtype = torch.float32,
        *,
        narrow: bool = False,
    ) -> CamResult:
        key = (name, method, layers, size, dtype, narrow)
        if key not in self._results:
            self._results[key] = compute_cams(
                self.model(name, dtype, size, narrow),
                self.images(name, size, dtype),
                list(layers),
                method=method,
                class_idx=[5, 9],
            )
        return self._results[key]


def assert_equal_up_to_eigen_sign(ours: CamResult, layer: str, reference: np.ndarray, size: int) -> None:
    """EigenCAM: per image, camlib's map equals pytorch-grad-cam's where the SVD signs agree, else the map of the
    negated projection (see test_eigencam_matches_pytorch_grad_cam_up_to_the_svd_sign)."""
    for b in range(len(reference)):
        flipped = reference_pipeline(-ours.raw[layer][b : b + 1], (size, size))[0]
        assert np.abs(ours.maps[layer][b] - reference[b]).max() <= ATOL or np.abs(flipped - reference[b]).max() <= ATOL
