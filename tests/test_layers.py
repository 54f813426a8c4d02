"""Tests of camlib.layers: candidate target layers (4-D output, run once, forward order) and the suggested default.

Models are built offline (``weights=None`` / ``pretrained=False``) and seeded inside the helpers.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import timm
import torch
import torchvision
from helpers.models import Amplified, mixed_state, seeded, seeded_resnet18
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from camlib.cam import compute_cams
from camlib.errors import LayerError
from camlib.layers import MIN_USEFUL_SIZE, LayerInfo, default_layer, list_candidate_layers
from camlib.layouts import Layout

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    """Shared, read-only (the probe must leave it untouched; the tests that mutate build their own)."""
    return seeded_resnet18()


def _expected_resnet18(size: int) -> list[tuple[str, str, int, int, int]]:
    """torchvision ResNet-18's 4-D, run-once modules in the order their outputs are produced, for a square input
    whose side is a multiple of 32. BasicBlock's ``relu`` runs twice per block, so no ``layerX.Y.relu`` appears."""
    side = size // 2
    rows = [
        ("conv1", "Conv2d", 64, side, side),
        ("bn1", "BatchNorm2d", 64, side, side),
        ("relu", "ReLU", 64, side, side),
    ]
    side //= 2
    rows.append(("maxpool", "MaxPool2d", 64, side, side))
    for stage, channels in enumerate((64, 128, 256, 512), start=1):
        for block in range(2):
            if stage > 1 and block == 0:
                side //= 2
            prefix = f"layer{stage}.{block}"
            rows += [
                (f"{prefix}.conv1", "Conv2d", channels, side, side),
                (f"{prefix}.bn1", "BatchNorm2d", channels, side, side),
                (f"{prefix}.conv2", "Conv2d", channels, side, side),
                (f"{prefix}.bn2", "BatchNorm2d", channels, side, side),
            ]
            if stage > 1 and block == 0:
                rows += [
                    (f"{prefix}.downsample.0", "Conv2d", channels, side, side),
                    (f"{prefix}.downsample.1", "BatchNorm2d", channels, side, side),
                    (f"{prefix}.downsample", "Sequential", channels, side, side),
                ]
            rows.append((prefix, "BasicBlock", channels, side, side))
        rows.append((f"layer{stage}", "Sequential", channels, side, side))
    rows.append(("avgpool", "AdaptiveAvgPool2d", 512, 1, 1))
    return rows


def _rows(candidates: list[LayerInfo]) -> list[tuple[str, str, int, int, int]]:
    return [(c.name, c.type_name, c.channels, c.height, c.width) for c in candidates]


def _by_name(candidates: list[LayerInfo]) -> dict[str, LayerInfo]:
    return {c.name: c for c in candidates}


# --- candidates ----------------------------------------------------------------------------------------------------


def test_resnet18_candidates_in_forward_order_with_shapes(resnet18):
    candidates = list_candidate_layers(resnet18, (224, 224))
    assert all(isinstance(c, LayerInfo) for c in candidates)
    assert _rows(candidates) == _expected_resnet18(224)
    layers = _by_name(candidates)
    assert (layers["layer4"].channels, layers["layer4"].height, layers["layer4"].width) == (512, 7, 7)
    assert (layers["layer1"].channels, layers["layer1"].height, layers["layer1"].width) == (64, 56, 56)
    assert layers["layer4"].shape_label == "512 x 7 x 7"


@pytest.mark.bad_input(35)
def test_modules_run_twice_and_non_4d_outputs_are_excluded(resnet18):
    names = {c.name for c in list_candidate_layers(resnet18, (224, 224))}
    twice = {f"layer{s}.{b}.relu" for s in range(1, 5) for b in range(2)}  # BasicBlock calls self.relu twice
    assert twice <= dict(resnet18.named_modules()).keys()
    assert not names & twice
    assert "fc" not in names  # (B, 1000)
    assert "" not in names  # the model itself (2-D logits)


def test_candidates_follow_the_input_size(resnet18):
    layers = _by_name(list_candidate_layers(resnet18, (256, 320)))
    assert (layers["layer4"].height, layers["layer4"].width) == (8, 10)
    assert (layers["conv1"].height, layers["conv1"].width) == (128, 160)


def test_input_channels_option():
    model = seeded(
        lambda: nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    )
    assert _rows(list_candidate_layers(model, (9, 9), channels=1)) == [
        ("0", "Conv2d", 4, 9, 9),
        ("1", "AdaptiveAvgPool2d", 4, 1, 1),
    ]


# --- default layer and warnings ------------------------------------------------------------------------------------


def test_resnet18_default_is_layer4(resnet18):
    default = default_layer(list_candidate_layers(resnet18, (224, 224)))
    assert default.name == "layer4"
    assert default.warning is None  # exactly 7x7 is not coarse


@pytest.mark.bad_input(35)
def test_one_by_one_layer_warns_always_blank(resnet18):
    avgpool = _by_name(list_candidate_layers(resnet18, (224, 224)))["avgpool"]
    assert (avgpool.height, avgpool.width) == (1, 1)
    assert "1x1" in avgpool.warning and "blank" in avgpool.warning


def test_only_maps_below_7x7_warn_coarse(resnet18):
    candidates = list_candidate_layers(resnet18, (32, 32))
    layers = _by_name(candidates)
    assert (layers["layer3"].height, layers["layer3"].width) == (2, 2)
    assert "2x2" in layers["layer3"].warning and "coarse" in layers["layer3"].warning
    assert "coarse" in layers["layer2"].warning  # 4x4
    assert (layers["layer4"].height, layers["layer4"].width) == (1, 1)
    assert "blank" in layers["layer4"].warning
    for c in candidates:
        if min(c.height, c.width) >= MIN_USEFUL_SIZE:
            assert c.warning is None, c


def test_non_square_map_warns_on_its_short_side():
    info = LayerInfo("x", "Conv2d", Layout("nchw", channels=8, height=20, width=5), (8, 20, 5))
    assert "20x5" in info.warning and "coarse" in info.warning


def test_efficientnet_lite0_default_is_bn2():
    model = seeded(lambda: timm.create_model("efficientnet_lite0", pretrained=False))
    candidates = list_candidate_layers(model, (224, 224))
    default = default_layer(candidates)
    assert default.name == "bn2"
    assert (default.channels, default.height, default.width) == (1280, 7, 7)
    names = [c.name for c in candidates]
    assert names.index("conv_head") < names.index("bn2") < names.index("global_pool.pool")


@pytest.mark.parametrize(
    "build,expected",
    [
        (lambda: torchvision.models.densenet121(weights=None), "features"),  # 1024 x 7 x 7, before DenseNet's F.relu
        (lambda: torchvision.models.mobilenet_v3_small(weights=None), "features"),  # 576 x 7 x 7
    ],
    ids=["densenet121", "mobilenet_v3_small"],
)
def test_torchvision_defaults(build, expected):
    default = default_layer(list_candidate_layers(seeded(build), (224, 224)))
    assert (default.name, default.height, default.width) == (expected, 7, 7)


def test_auxiliary_heads_of_a_train_mode_googlenet_are_not_candidates(snapshot):
    """GoogLeNet runs aux1/aux2 only in training; the probe runs in eval mode, as the CAM does."""
    model = seeded(lambda: torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True)).train()
    before = snapshot(model)
    names = [c.name for c in list_candidate_layers(model, (64, 64))]
    assert "inception4e" in names and not [name for name in names if name.startswith("aux")]
    before.assert_unchanged()


def test_resnet18_at_32x32_default_is_the_last_map_of_at_least_7x7(resnet18):
    candidates = list_candidate_layers(resnet18, (32, 32))
    default = default_layer(candidates)
    # layer4 is 1x1, layer3 2x2, layer2 4x4: the last candidate of at least 7x7 is layer1 (8x8).
    assert default.name == "layer1"
    assert (default.height, default.width) == (8, 8)
    later = candidates[[c.name for c in candidates].index("layer1") + 1 :]
    assert later and all(min(c.height, c.width) < MIN_USEFUL_SIZE for c in later)


class _SmallMaps(nn.Module):
    """No map reaches 7x7 on a 6x6 input: conv 6x6 -> pool 3x3 -> conv 3x3."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2(self.pool(torch.relu(self.conv(x))))
        return self.head(x.mean(dim=(2, 3)))


def test_without_a_7x7_map_the_default_is_the_largest_map():
    candidates = list_candidate_layers(seeded(_SmallMaps), (6, 6))
    assert _rows(candidates) == [
        ("conv", "Conv2d", 4, 6, 6),
        ("pool", "MaxPool2d", 4, 3, 3),
        ("conv2", "Conv2d", 4, 3, 3),
    ]
    assert default_layer(candidates).name == "conv"


def test_resnet18_at_8x8_falls_back_to_a_largest_map(resnet18):
    candidates = list_candidate_layers(resnet18, (8, 8))
    assert all(min(c.height, c.width) < MIN_USEFUL_SIZE for c in candidates)
    default = default_layer(candidates)
    assert default.height * default.width == max(c.height * c.width for c in candidates) == 16


def test_no_candidates_raises_layer_error():
    with pytest.raises(LayerError, match="no layer"):
        default_layer([])
    mlp = seeded(lambda: nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    assert list_candidate_layers(mlp, (2, 2)) == []


# --- channels-last and token layers (bad-inputs row 64) ------------------------------------------------------------


def _channel_axis_by_probing(model: nn.Module, sizes: tuple[tuple[int, int], tuple[int, int]]) -> dict[str, int]:
    """The truth, found independently of camlib's inference: probe at two input sizes of different aspect ratio and
    see which output axis keeps its size (the channels). Only for 4-D outputs whose spatial axes all change."""
    shapes = []
    for size in sizes:
        store: dict[str, tuple[int, ...]] = {}

        def record(_module, _inputs, out, name: str, store=store) -> None:
            if isinstance(out, torch.Tensor):
                store.setdefault(name, tuple(out.shape))

        handles = [
            m.register_forward_hook(lambda _m, _i, out, name=name: record(_m, _i, out, name))
            for name, m in model.named_modules()
            if name
        ]
        try:
            with torch.no_grad():
                model(torch.zeros(1, 3, *size))
        finally:
            for handle in handles:
                handle.remove()
        shapes.append(store)
    axes = {}
    for name, first in shapes[0].items():
        second = shapes[1].get(name)
        if len(first) == 4 and second is not None and len(second) == 4:
            same = [axis for axis in (1, 2, 3) if first[axis] == second[axis]]
            if len(same) == 1:
                axes[name] = same[0]
    return axes


@pytest.mark.bad_input(64)
@pytest.mark.parametrize(
    "build,size,expected_nhwc",
    [
        (lambda: torchvision.models.convnext_tiny(weights=None), 96, 90),
        (lambda: torchvision.models.swin_t(weights=None), 96, None),
    ],
    ids=["convnext_tiny", "swin_t"],
)
def test_channels_last_layers_are_listed_with_their_true_shape(build, size, expected_nhwc):
    """Every 4-D candidate's inferred layout agrees with the axis that keeps its size when the input's aspect ratio
    changes; ConvNeXt-Tiny has 90 channels-last candidates (its block internals), Swin-T's stages are channels-last."""
    model = seeded(build)
    candidates = list_candidate_layers(model, (size, size))
    truth = _channel_axis_by_probing(model, ((size, size + 32), (size + 32, size)))
    checked = 0
    for c in candidates:
        if c.name in truth:
            assert c.layout.kind == {1: "nchw", 3: "nhwc"}[truth[c.name]], c
            checked += 1
    assert checked > 0.9 * len(candidates)
    nhwc = [c for c in candidates if c.layout.kind == "nhwc"]
    if expected_nhwc is not None:
        assert len(nhwc) == expected_nhwc
        block = _by_name(candidates)["features.1.0.block.2"]  # the LayerNorm whose output is (1, 24, 24, 96)
        assert block.output_shape == (24, 24, 96) and block.shape_label == "96 x 24 x 24"
        assert "channels-last" in block.layout.label
    else:
        stages = _by_name(candidates)
        for stage, (channels, side) in {
            "features.1": (96, 24),
            "features.3": (192, 12),
            "features.5": (384, 6),
            "features.7": (768, 3),
        }.items():
            assert stages[stage].layout.kind == "nhwc"
            assert (stages[stage].channels, stages[stage].height, stages[stage].width) == (channels, side, side)
    assert not [c for c in candidates if c.ambiguous]


@pytest.mark.bad_input(64)
@pytest.mark.parametrize(
    "build,prefix",
    [
        (lambda: torchvision.models.vit_b_16(weights=None, image_size=112), 1),
        (lambda: timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, img_size=112), 2),
        (lambda: timm.create_model("vit_small_patch16_224", pretrained=False, img_size=112, reg_tokens=4), 5),
    ],
    ids=["vit_b_16", "deit_tiny_distilled", "vit_small_4_registers"],
)
def test_token_layers_are_listed_with_grid_and_leading_tokens(build, prefix):
    """ViT blocks output (B, 1 + 49, C) at 112 px; DeiT adds a distillation token, a registers ViT 4 registers."""
    model = seeded(build)
    candidates = list_candidate_layers(model, (112, 112))
    tokens = [c for c in candidates if c.layout.kind == "tokens"]
    assert len(tokens) > 20
    for c in tokens:  # the patch embedding's own outputs come before the leading tokens are added
        expected = prefix if c.output_shape[0] == prefix + 49 else 0
        assert (c.height, c.width, c.layout.prefix_tokens) == (7, 7, expected), c
        assert c.output_shape[0] == expected + 49 and c.channels == c.output_shape[1]
        assert f"{expected} leading token" in c.layout.label
    assert sum(c.layout.prefix_tokens == prefix for c in tokens) > 20
    assert not [c for c in candidates if c.ambiguous]


def _cube_model() -> nn.Module:
    """(1, 8, 8, 8) at an 8x8 input: conv "0" and identity "1" read both as C x H x W and as H x W x C by shape."""
    return seeded(
        lambda: nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Identity(),
            nn.Conv2d(8, 4, 3, padding=1),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(4, 2),
        )
    )


class _FixedSize(nn.Module):
    """``model`` that refuses every input size but ``size``, as ViTs with a fixed position embedding do."""

    def __init__(self, model: nn.Module, size: tuple[int, int]) -> None:
        super().__init__()
        self.model, self.size = model, size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            raise AssertionError(f"input size {tuple(x.shape[-2:])} != {self.size}")
        return self.model(x)


@pytest.mark.bad_input(64, 77)
def test_an_ambiguous_shape_is_resolved_by_a_second_probe():
    """(1, 8, 8, 8) at 8 px is (1, 8, 40, 40) at 40 px: only channels-first reads both (Conv2d's own layout)."""
    candidates = _by_name(list_candidate_layers(_cube_model(), (8, 8)))
    assert candidates["0"].layout == candidates["1"].layout == Layout("nchw", 8, 8, 8)
    assert candidates["2"].layout == Layout("nchw", 4, 8, 8)


def test_a_layers_second_probe_runs_once_per_model_and_size():
    """compute_cams probes an ambiguous layer again at a larger size once per model; later calls reuse the answer.
    Forwards are counted by the input sizes the model sees."""
    model = _cube_model()
    sizes: list[tuple[int, ...]] = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
        first = compute_cams(model, x, ["0"], class_idx=[1])
        probes = [s for s in sizes if s != (8, 8)]
        assert probes == [(40, 40)]
        again = compute_cams(model, x, ["0"], class_idx=[1])
        assert [s for s in sizes if s != (8, 8)] == probes
        np.testing.assert_array_equal(again.maps["0"], first.maps["0"])
    finally:
        handle.remove()
    other = _cube_model()  # another model with the same structure is probed for itself
    handle = other.register_forward_pre_hook(lambda _m, args: sizes.append(tuple(args[0].shape[-2:])))
    try:
        compute_cams(other, x, ["0"], class_idx=[1])
        assert [s for s in sizes if s != (8, 8)] == [(40, 40), (40, 40)]
    finally:
        handle.remove()


@pytest.mark.bad_input(64, 77)
def test_an_ambiguous_layout_is_listed_as_such_and_never_the_default():
    """When the model refuses the second probe's size, the inspector says the layout cannot be told, why, and names
    ``layouts=``; it suggests another layer, and compute_cams refuses the layer until told how to read it."""
    model = _FixedSize(_cube_model(), (8, 8))
    candidates = _by_name(list_candidate_layers(model, (8, 8)))
    cube = candidates["model.0"]
    assert cube.ambiguous and candidates["model.1"].ambiguous
    assert "cannot be told" in cube.warning and "(layout ambiguous)" in cube.shape_label
    assert "refuses a 40x40 input" in cube.layout.reason and "layouts={'model.0'" in cube.warning
    assert not candidates["model.2"].ambiguous  # 4 x 8 x 8 reads only as C x H x W
    assert default_layer(list(candidates.values())).name == "model.2"
    assert default_layer(list(candidates.values()), preferred=("model.0", "model.2")).name == "model.2"
    x = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with pytest.raises(LayerError, match=r"does not guess it: pass layouts=\{'model.0'"):
        compute_cams(model, x, ["model.0"], class_idx=[0, 1])
    told = compute_cams(model, x, ["model.0"], class_idx=[0, 1], layouts={"model.0": "nchw"})
    np.testing.assert_allclose(told.maps["model.0"], _pgc_maps(model, x, "model.0", [0, 1], None), atol=ATOL)


def test_preferred_default_layers_win_when_they_are_candidates(resnet18):
    candidates = list_candidate_layers(resnet18, (224, 224))
    assert default_layer(candidates, preferred=("nope", "layer3")).name == "layer3"
    assert default_layer(candidates, preferred=("nope",)).name == "layer4"


# --- the probe leaves the model as it was --------------------------------------------------------------------------


def test_probe_leaves_hooks_modes_grads_and_stats_untouched(snapshot):
    model = mixed_state(seeded_resnet18(), grad=0.5)
    before = snapshot(model)
    grad_mode = torch.is_grad_enabled()
    list_candidate_layers(model, (64, 64))
    # Batch-norm running stats would move if the probe ran in train mode; the state dict proves it did not.
    before.assert_unchanged()
    assert torch.is_grad_enabled() == grad_mode


class _Exploding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        raise RuntimeError("boom mid-forward")


@pytest.mark.bad_input(40)
def test_probe_cleans_up_when_the_forward_raises(snapshot):
    model = seeded(_Exploding)
    model.train()
    before = snapshot(model)
    with pytest.raises(RuntimeError, match="boom mid-forward"):
        list_candidate_layers(model, (8, 8))
    before.assert_unchanged()
    assert model.training and model.bn.training


# --- window-folded outputs, token grids told apart by a second probe, overlapping patch embeddings (row 77) --------

ATOL = 1e-5  # on maps in [0, 1]


def _pgc_maps(
    model: nn.Module, x: torch.Tensor, layer: str, classes: list[int], reshape: Callable | None
) -> np.ndarray:
    """pytorch-grad-cam's Grad-CAM of one layer with its ``reshape_transform``; parameter gradients dropped after.

    A hook registered after pytorch-grad-cam's lets the network continue on a copy, so the activations it stored stay
    the layer's output as produced, as camlib reads them, also under later in-place ops (as tests/test_cam.py does).
    """
    module = dict(model.named_modules())[layer]
    with GradCAM(model=model, target_layers=[module], reshape_transform=reshape) as cam:
        handle = module.register_forward_hook(lambda _m, _i, out: out.clone())
        try:
            maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(k) for k in classes])
        finally:
            handle.remove()
    model.zero_grad(set_to_none=True)
    return maps


def _tokens_to_grid(prefix: int, height: int, width: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """pytorch-grad-cam's ViT reshape_transform (tutorials/vision_transformers.md), dropping ``prefix`` tokens."""

    def reshape(tensor: torch.Tensor) -> torch.Tensor:
        grid = tensor[:, prefix:, :].reshape(tensor.size(0), height, width, tensor.size(2))
        return grid.transpose(2, 3).transpose(1, 2)

    return reshape


def _folded_outputs(model: nn.Module, size: tuple[int, int]) -> set[str]:
    """The truth, found without camlib: modules whose 3-D/4-D output batch is not 1 for one image."""
    folded: set[str] = set()
    handles = [
        m.register_forward_hook(
            lambda _m, _i, out, name=name: (
                folded.add(name)
                if isinstance(out, torch.Tensor) and out.dim() in (3, 4) and out.shape[0] != 1
                else None
            )
        )
        for name, m in model.named_modules()
        if name
    ]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, *size))
    finally:
        for handle in handles:
            handle.remove()
    return folded


FOLDING = {
    "swin": (
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1), num_classes=10
        ),
        (224, 224),
        "layers.0.blocks.0.attn",  # (64 windows, 49, 24)
    ),
    "maxvit": (
        lambda: timm.create_model("test_maxvit", num_classes=10),
        (160, 160),
        "stages.0.blocks.0.attn_block.attn",
    ),
    "mobilevit": (lambda: timm.create_model("mobilevit_xxs", num_classes=10), (96, 96), "stages.2.1.transformer.0"),
    "davit": (
        lambda: timm.create_model(
            "davit_tiny", depths=(1, 1, 1, 1), embed_dims=(16, 32, 64, 128), num_heads=(1, 1, 1, 1), num_classes=10
        ),
        (96, 96),
        "stages.0.blocks.0.0.attn",
    ),
}


@pytest.mark.bad_input(77)
@pytest.mark.parametrize("name", list(FOLDING))
def test_layers_that_fold_windows_into_the_batch_are_not_candidates_and_are_refused(name):
    """Swin's window attention, MaxViT's window and grid attention, MobileViT's transformer blocks (patches folded
    into the batch) and DaViT's window attention: none is listed, and compute_cams refuses each with a LayerError that
    says why, also when told a layout, instead of returning a map per window."""
    build, size, layer = FOLDING[name]
    model = seeded(build)
    folded = _folded_outputs(model, size)
    assert layer in folded and len(folded) >= 6
    names = {c.name for c in list_candidate_layers(model, size)}
    assert names and not names & folded
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2))
    for layouts in (None, {layer: "tokens:0" if "attn" in layer or "transformer" in layer else "nhwc"}):
        with pytest.raises(LayerError, match=r"outputs a batch of \d+ for 2 input images: it folds windows"):
            compute_cams(model, x, [layer], class_idx=[1, 2], layouts=layouts)


def _pvt_grid(side: int) -> int:
    """PVT-v2's last grid from PyTorch's Conv2d output size: a 7/4/3 overlapping embedding, then three 3/2/1."""
    side = (side + 2 * 3 - 7) // 4 + 1
    for _ in range(3):
        side = (side + 2 * 1 - 3) // 2 + 1
    return side


def _overlapping_vit(size: tuple[int, int]) -> nn.Module:
    """A ViT (class token, 2 blocks, 32 channels) whose patch embedding overlaps: kernel 16, stride 8, no padding,
    so 224 px gives 27 x 27 patches, which no integer patch size gives."""
    model = timm.create_model("vit_tiny_patch16_224", img_size=size, embed_dim=32, depth=2, num_heads=2, num_classes=10)
    grid = ((size[0] - 16) // 8 + 1, (size[1] - 16) // 8 + 1)
    model.patch_embed.proj = nn.Conv2d(3, 32, 16, stride=8)
    model.patch_embed.grid_size, model.patch_embed.num_patches = grid, grid[0] * grid[1]
    model.pos_embed = nn.Parameter(0.02 * torch.randn(1, 1 + grid[0] * grid[1], 32))
    return model


# (id, builder, input size, layer, (leading tokens, h, w)): token layers whose shape alone fits several readings, or
# none that an integer patch size gives, at sizes that are and are not multiples of 32.
TOKEN_CASES = [
    *[
        (
            f"pvt_v2_b0_{side}",
            lambda: timm.create_model("pvt_v2_b0", num_classes=10),
            (side, side),
            "stages.3.blocks.0",
            (0, _pvt_grid(side), _pvt_grid(side)),
        )
        for side in (80, 100, 144)  # 3x3: 0 + 3x3 or 5 + 2x2; 4x4; 5x5: 0 + 5x5, 9 + 4x4 or 16 + 3x3
    ],
    *[
        (
            f"twins_svt_{side}",
            lambda: timm.create_model(
                "twins_svt_small",
                depths=(1, 1, 1, 1),
                embed_dims=(16, 32, 64, 128),
                num_heads=(1, 2, 4, 8),
                num_classes=10,
            ),
            (side, side),
            "blocks.3.0",
            (0, side // 4 // 8, side // 4 // 8),  # a 4 px patch embedding, then three of 2 px
        )
        for side in (96, 112)  # 3x3 both: 0 + 3x3 or 5 + 2x2
    ],
    *[
        (
            f"overlapping_vit_{h}x{w}",
            lambda h=h, w=w: _overlapping_vit((h, w)),
            (h, w),
            "blocks.0",
            (1, (h - 16) // 8 + 1, (w - 16) // 8 + 1),
        )
        for h, w in ((224, 224), (200, 200), (224, 160))  # 27x27 (the issue's), 24x24, 27x19
    ],
    (
        "vit_registers_112x160",  # 1 class token + 4 registers + 7 x 10: four readings; the patch embedding's grid
        lambda: timm.create_model(
            "vit_tiny_patch16_224",
            img_size=(112, 160),
            reg_tokens=4,
            embed_dim=32,
            depth=2,
            num_heads=2,
            num_classes=10,
        ),
        (112, 160),
        "blocks.0",
        (5, 7, 10),
    ),
    # models that refuse any other input size, at 50 or 49 tokens (1 + 7 x 7 or 14 + 6 x 6; 0 + 7 x 7 or 13 + 6 x 6):
    # the patch embedding's or downsampling convolution's grid tells them apart
    (
        "coat_lite_mini_112",
        lambda: timm.create_model("coat_lite_mini", img_size=112, num_classes=10),
        (112, 112),
        "serial_blocks3.0",
        (1, 7, 7),
    ),
    (
        "cait_112_class_attention",
        lambda: timm.create_model("cait_xxs24_224", depth=2, img_size=112, num_classes=10),
        (112, 112),
        "blocks_token_only.0.norm1",  # the class token joins the patches only in the class-attention blocks
        (1, 7, 7),
    ),
    (
        "beit_112",
        lambda: timm.create_model(
            "beit_base_patch16_224", depth=2, embed_dim=64, num_heads=2, img_size=112, num_classes=10
        ),
        (112, 112),
        "blocks.0",
        (1, 7, 7),
    ),
    (
        "efficientformer_l1_224",
        lambda: timm.create_model("efficientformer_l1", num_classes=10),
        (224, 224),
        "stages.3",  # its last stage flattens the 7 x 7 map into tokens
        (0, 7, 7),
    ),
    (
        "deit_distilled_80",  # 2 + 5 x 5, or 11 + 4 x 4, or 18 + ...: the model refuses 112 px; its patch embedding
        lambda: timm.create_model(
            "deit_tiny_distilled_patch16_224", img_size=80, embed_dim=32, depth=2, num_heads=2, num_classes=10
        ),
        (80, 80),
        "blocks.0",
        (2, 5, 5),
    ),
]


@pytest.mark.bad_input(77)
@pytest.mark.parametrize("case", TOKEN_CASES, ids=[case[0] for case in TOKEN_CASES])
def test_token_grids_are_read_as_pytorch_grad_cam_reads_them_with_the_right_reshape(case):
    """The issue's 3x3 grid at 80 px (PVT-v2, Twins), overlapping patch embeddings (27 x 27 from 224 px and more),
    registers on a non-square input, DeiT's distillation token, CoaT, CaiT, BEiT and EfficientFormer at sizes where
    the token count fits several grids: the layer list and compute_cams read each as the architecture lays it out,
    and the maps equal pytorch-grad-cam's with that reshape_transform."""
    _, build, size, layer, (prefix, h, w) = case
    model = seeded(build)
    info = _by_name(list_candidate_layers(model, size))[layer]
    assert info.layout == Layout("tokens", info.channels, h, w, prefix)
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(5))
    ours = compute_cams(model, x, [layer], class_idx=[1, 7])
    reference = _pgc_maps(model, x, layer, [1, 7], _tokens_to_grid(prefix, h, w))
    assert ours.raw[layer].shape == (2, h, w) and ours.maps[layer].max() == pytest.approx(1.0)
    np.testing.assert_allclose(ours.maps[layer], reference, atol=ATOL, rtol=0)


# (id, builder, input size, layer, explicit layout, (leading tokens, h, w)): the shape fits several readings, the
# model refuses any other input size and no convolution made the grid: refused until told.
REFUSED_CASES = [
    # 49 tokens: 0 + 7 x 7 or 13 + 6 x 6; LeViT's attention biases are sized for 224 px only
    (
        "levit_128s",
        lambda: Amplified(timm.create_model("levit_128s", num_classes=10), 1e6),
        (224, 224),
        "model.stages.1",
        (0, 7, 7),
    ),
    (
        "swin_last_stage",
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=24, num_heads=(1, 1, 1, 1), num_classes=10
        ),
        (224, 224),
        "layers.3.blocks.0.norm2",  # (1, 49, 192): 0 + 7 x 7 or 13 + 6 x 6
        (0, 7, 7),
    ),
]


@pytest.mark.bad_input(77)
@pytest.mark.parametrize("case", REFUSED_CASES, ids=[case[0] for case in REFUSED_CASES])
def test_token_grids_that_stay_ambiguous_are_refused_naming_layouts_and_read_when_told(case):
    _, build, size, layer, (prefix, h, w) = case
    model = seeded(build)
    info = _by_name(list_candidate_layers(model, size))[layer]
    assert info.ambiguous and f"{prefix} leading + {h}x{w}" in info.layout.reason and "refuses" in info.layout.reason
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(6))
    with pytest.raises(LayerError, match=r"does not guess it: pass layouts="):
        compute_cams(model, x, [layer], class_idx=[2, 4])
    told = compute_cams(model, x, [layer], class_idx=[2, 4], layouts={layer: f"tokens:{prefix}"})
    reference = _gradcam_raw(model, x, layer, [2, 4], _tokens_to_grid(prefix, h, w))
    assert np.abs(reference).max() > 1e-3  # not degenerate: the comparison has something to compare
    np.testing.assert_allclose(told.raw[layer], reference, atol=1e-6 * np.abs(reference).max(), rtol=0)


def _gradcam_raw(model: nn.Module, x: torch.Tensor, layer: str, classes: list[int], reshape: Callable) -> np.ndarray:
    """Grad-CAM's signed map by its definition (Selvaraju et al., ICCV 2017, eq. 1-2: channel weights are the
    spatial means of the class score's gradients), in float64 from torch's autograd on the layer's output read through
    ``reshape``. pytorch-grad-cam's LeViT maps differ from this definition by up to 1.3e-3 after its float32 finish,
    so the definition is the reference for these layers."""
    store: dict[str, torch.Tensor] = {}
    module = dict(model.named_modules())[layer]
    handle = module.register_forward_hook(lambda _m, _i, out: store.setdefault("out", out))
    try:
        logits = model.eval()(x)
    finally:
        handle.remove()
    score = sum(logits[i, k] for i, k in enumerate(classes))
    (grad,) = torch.autograd.grad(score, store["out"])
    acts, grads = reshape(store["out"].detach()).double(), reshape(grad).double()
    return (grads.mean(dim=(2, 3), keepdim=True) * acts).sum(dim=1).numpy()


class _ManyLeadingTokens(nn.Module):
    """An 8 px patch embedding (10 x 10 patches at 80 px) after 18 learned leading tokens, one more than camlib infers:
    118 tokens, and no count of 0 to 17 leading tokens leaves a square number."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 8, 8, stride=8)
        self.lead = nn.Parameter(torch.randn(1, 18, 8))
        self.tokens = nn.Identity()
        self.mix = nn.Linear(8, 8)
        self.head = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.embed(x).flatten(2).transpose(1, 2)
        tokens = self.tokens(torch.cat([self.lead.expand(len(x), -1, -1), patches], dim=1))
        return self.head(torch.tanh(self.mix(tokens)).mean(dim=1))


@pytest.mark.bad_input(77)
def test_a_layer_read_as_no_feature_map_is_refused_naming_layouts_and_read_when_told():
    model = seeded(_ManyLeadingTokens)
    assert "tokens" not in {c.name for c in list_candidate_layers(model, (80, 80))}
    x = torch.randn(2, 3, 80, 80, generator=torch.Generator().manual_seed(8))
    with pytest.raises(LayerError, match=r"reads as no spatial feature map.*pass layouts=\{'tokens'"):
        compute_cams(model, x, ["tokens"], class_idx=[1, 3])
    told = compute_cams(model, x, ["tokens"], class_idx=[1, 3], layouts={"tokens": "tokens:18"})
    assert told.maps["tokens"].max() == pytest.approx(1.0)
    reference = _pgc_maps(model, x, "tokens", [1, 3], _tokens_to_grid(18, 10, 10))
    np.testing.assert_allclose(told.maps["tokens"], reference, atol=ATOL, rtol=0)
