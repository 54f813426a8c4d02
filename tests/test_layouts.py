"""Tests of camlib.layouts: layout inference from shapes alone, across the family of grids, strides, prefixes and
input sizes (bad-inputs row 64), and the reshapes against pytorch-grad-cam's reshape_transform examples."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from camlib.errors import LayerError
from camlib.layouts import (
    MAX_PREFIX_TOKENS,
    Layout,
    confirm_layout,
    conv_grid_fits,
    grid_fits,
    infer_layout,
    layout_from_spec,
    require_batch,
    to_feature_map,
)

INPUTS = [(224, 224), (224, 160), (160, 224), (96, 96), (384, 384), (97, 131)]


def _conv_grid(size: tuple[int, int], stride: int) -> tuple[int, int]:
    """A padded convolution stack's grid: ceil(H / s) x ceil(W / s)."""
    return math.ceil(size[0] / stride), math.ceil(size[1] / stride)


@pytest.mark.parametrize("size", INPUTS)
@pytest.mark.parametrize("stride", [1, 2, 4, 8, 16, 32])
@pytest.mark.parametrize("channels", [3, 24, 96, 768, 2048])
def test_cnn_feature_maps_read_channels_first_and_their_permutation_channels_last(size, stride, channels):
    """Never a wrong reading: each is right or says ambiguous; on a square input only a channel count within 2 of
    the grid side can be ambiguous (the loose rounding of a non-square input allows more)."""
    h, w = _conv_grid(size, stride)
    first = infer_layout((2, channels, h, w), size)
    last = infer_layout((2, h, w, channels), size)
    assert first in (Layout("nchw", channels=channels, height=h, width=w), Layout("ambiguous", reason=first.reason))
    assert last in (Layout("nhwc", channels=channels, height=h, width=w), Layout("ambiguous", reason=last.reason))
    if size[0] == size[1] and abs(channels - h) > 2:
        assert first.kind == "nchw" and last.kind == "nhwc"


def test_ambiguity_is_rare_on_realistic_shapes():
    readings = [
        infer_layout(shape, size)
        for size in INPUTS
        for stride in (1, 2, 4, 8, 16, 32)
        for channels in (3, 24, 96, 768, 2048)
        for h, w in [_conv_grid(size, stride)]
        for shape in ((1, channels, h, w), (1, h, w, channels))
    ]
    assert sum(r.kind == "ambiguous" for r in readings) <= 0.05 * len(readings)  # 14 of 360, 8 of them cubes


@pytest.mark.parametrize(
    "size,patch",
    [
        (size, patch)
        for size in [(224, 224), (224, 160), (112, 112), (518, 518), (448, 448), (64, 96)]
        for patch in (8, 14, 16, 32)
        if size[0] % patch == 0 == size[1] % patch
    ],
)
@pytest.mark.parametrize("prefix", [0, 1, 2, 5, 17])
def test_token_grids_and_leading_tokens_are_inferred(size, patch, prefix):
    """Every patch size that tiles the input (torchvision's and timm's ViTs refuse other sizes) and every number of
    leading tokens (class, distillation, registers); where another reading also fits, the layout says ambiguous
    rather than guessing."""
    h, w = size[0] // patch, size[1] // patch
    layout = infer_layout((2, prefix + h * w, 384), size)
    if layout.kind == "ambiguous":
        assert "tokens read as" in layout.reason and f"{prefix} leading + {h}x{w}" in layout.reason
    else:
        assert layout == Layout("tokens", channels=384, height=h, width=w, prefix_tokens=prefix)


@pytest.mark.bad_input(64)
@pytest.mark.parametrize(
    "shape,size,expected",
    [
        ((1, 197, 768), (224, 224), Layout("tokens", 768, 14, 14, 1)),  # ViT-B/16
        ((1, 198, 192), (224, 224), Layout("tokens", 192, 14, 14, 2)),  # DeiT distilled
        ((1, 261, 768), (224, 224), Layout("tokens", 768, 16, 16, 5)),  # DINOv2-reg ViT-B/14: class + 4 registers
        ((1, 730, 64), (224, 224), Layout("tokens", 64, 27, 27, 1)),  # a 16/8 overlapping patch embedding + class
        ((1, 514, 64), (224, 160), Layout("tokens", 64, 27, 19, 1)),  # the same on a non-square input
        ((1, 2500, 32), (200, 200), Layout("tokens", 32, 50, 50, 0)),  # PVT-v2's 7/4/3 embedding at 200 px
        ((1, 24, 24, 96), (96, 96), Layout("nhwc", 96, 24, 24)),  # ConvNeXt block LayerNorm at 96 px
        ((1, 7, 7, 768), (224, 224), Layout("nhwc", 768, 7, 7)),  # Swin-T last stage
        ((1, 4, 3, 3), (6, 6), Layout("nchw", 4, 3, 3)),  # both read; on a square input the square grid wins
        ((1, 512, 7, 5), (224, 160), Layout("nchw", 512, 7, 5)),
    ],
)
def test_known_layouts(shape, size, expected):
    assert infer_layout(shape, size) == expected


@pytest.mark.bad_input(64)
@pytest.mark.parametrize(
    "shape,size",
    [
        ((1, 7, 7, 7), (224, 224)),
        ((1, 32, 32, 32), (32, 32)),
        ((1, 21, 16), (32, 32)),  # 5 + 4x4, 12 + 3x3 or 17 + 2x2
        ((1, 50, 768), (224, 224)),  # ViT-B/32's 1 + 7x7, or 14 + 6x6: told apart by a probe of the model
        ((1, 9, 64), (80, 80)),  # the 3x3 grid at 80 px, or 5 leading tokens + 2x2
        ((1, 3, 4, 5), (97, 131)),  # 3 channels at stride 32, or 5 channels on a 3x4 grid
    ],
)
def test_ambiguous_layouts_say_so(shape, size):
    layout = infer_layout(shape, size)
    assert layout.kind == "ambiguous" and layout.reason and "ambiguous" in layout.label
    with pytest.raises(LayerError, match="ambiguous"):
        to_feature_map(torch.zeros(shape), layout)


@pytest.mark.parametrize("shape", [(1, 1000), (1, 1, 768), (1, 3, 5, 7, 9), (1, 10, 3, 500)])
def test_non_spatial_outputs_have_no_layout(shape):
    """Logits, a lone class token, a 5-D tensor, and a 4-D tensor whose axes fit no grid of a 224x224 input."""
    assert infer_layout(shape, (224, 224)) is None


def test_grid_fits_allows_the_rounding_of_valid_and_padded_convolutions():
    assert grid_fits(147, 147, (299, 299))  # Inception's unpadded stem: 299 -> 149 -> 147
    assert grid_fits(8, 10, (256, 320)) and not grid_fits(10, 8, (256, 320))
    assert not grid_fits(0, 3, (8, 8))


def test_reshapes_equal_pytorch_grad_cams_reshape_transforms():
    """tutorials/vision_transformers.md: ``tensor[:, 1:, :].reshape(B, 14, 14, C)`` then channels first; Swin:
    ``permute(0, 3, 1, 2)``."""
    tokens = torch.randn(2, 197, 8)
    expected = tokens[:, 1:, :].reshape(2, 14, 14, 8).transpose(2, 3).transpose(1, 2)
    assert torch.equal(to_feature_map(tokens, infer_layout(tokens.shape, (224, 224))), expected)
    last = torch.randn(2, 7, 7, 8)
    assert torch.equal(to_feature_map(last, Layout("nhwc", 8, 7, 7)), last.permute(0, 3, 1, 2))
    first = torch.randn(2, 8, 7, 7)
    assert to_feature_map(first, Layout("nchw", 8, 7, 7)) is first


def test_explicit_layouts():
    assert layout_from_spec("NHWC", (1, 8, 8, 8), (8, 8)) == Layout("nhwc", 8, 8, 8)
    assert layout_from_spec("tokens:5", (1, 21, 16), (32, 32)) == Layout("tokens", 16, 4, 4, 5)
    assert layout_from_spec("tokens:1", (1, 141, 16), (224, 160)) == Layout("tokens", 16, 14, 10, 1)
    for spec, shape in [
        ("chw", (1, 8, 8, 8)),
        ("nchw", (1, 5, 8)),
        ("tokens:30", (1, 21, 16)),
        ("tokens:4", (1, 21, 16)),
        (3, (1, 8, 8, 8)),
    ]:
        with pytest.raises(LayerError):
            layout_from_spec(spec, shape, (32, 32))


def test_at_most_the_documented_number_of_leading_tokens():
    assert MAX_PREFIX_TOKENS == 17
    assert infer_layout((1, 17 + 196, 8), (224, 224)) == Layout("tokens", 8, 14, 14, 17)
    assert infer_layout((1, 18 + 196, 8), (224, 224)) is None


# (kernel, stride, padding) stacks: patch embeddings (ViT/16, /14, Swin /4), overlapping ones (PVT-v2's 7/4/3 then
# 3/2/1; a valid 16/8; CvT's 7/4/2), a "same"-padded stride-2 stem repeated (timm's padded convs), a ResNet stem with
# its pooling. Token grids come from these; Inception's unpadded stem (offset -9 at stride 4) reads only as a 4-D
# grid, whose rule (``grid_fits``) allows any offset under one cell.
CONV_STACKS = {
    "vit16": [(16, 16, 0)],
    "vit14": [(14, 14, 0)],
    "swin4_merge": [(4, 4, 0), (2, 2, 0), (2, 2, 0)],
    "pvt_v2": [(7, 4, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1)],
    "valid16_8": [(16, 8, 0)],
    "cvt": [(7, 4, 2), (3, 2, 1)],
    "same_stride2_x4": [(3, 2, 1)] * 4,
    "resnet_stem": [(7, 2, 3), (3, 2, 1), (3, 2, 1), (3, 2, 1)],
    "inception_valid": [(3, 2, 0), (3, 1, 0), (3, 2, 0)],
}
DEEP_VALID = {"inception_valid"}


@pytest.mark.bad_input(77)
@pytest.mark.parametrize("stack", list(CONV_STACKS))
@pytest.mark.parametrize("size", [(224, 224), (80, 80), (100, 100), (200, 200), (224, 160), (97, 131), (299, 299)])
def test_conv_grid_fits_every_grid_that_pytorchs_convolutions_produce(stack, size):
    """The reference is torch.nn.Conv2d's own output shape, at sizes that are and are not multiples of 32; the
    same geometry also explains the grid at a second size (what ``confirm_layout`` asks of a second probe)."""
    convs = nn.Sequential(*[nn.Conv2d(1, 1, k, stride=s, padding=p) for k, s, p in CONV_STACKS[stack]])
    with torch.no_grad():
        h, w = convs(torch.zeros(1, 1, *size)).shape[-2:]
        h2, w2 = convs(torch.zeros(1, 1, size[0] + 32, size[1] + 32)).shape[-2:]
    assert grid_fits(h, w, size) and grid_fits(h2, w2, (size[0] + 32, size[1] + 32))
    if stack not in DEEP_VALID:
        assert conv_grid_fits(((h, size[0]), (w, size[1])))
        assert conv_grid_fits(((h, size[0]), (w, size[1]), (h2, size[0] + 32), (w2, size[1] + 32)))


def test_conv_grid_fits_refuses_grids_no_convolution_gives():
    assert not conv_grid_fits(((13, 224), (14, 224)))  # a square input gives a square grid
    assert not conv_grid_fits(((6, 112), (12, 160)))
    assert not conv_grid_fits(((7, 96), (7, 128)))  # the same 7 x 7 at 96 and 128 px: a padded window, not a grid
    assert not conv_grid_fits(((0, 8),))


@pytest.mark.bad_input(77)
@pytest.mark.parametrize(
    "shape,size,second,expected",
    [
        # the example: 3x3 at 80 px grows to 4x4 at 112 px; 5 + 2x2 would need 5 + 3x3 = 14 tokens there
        ((1, 9, 64), (80, 80), ((1, 16, 64), (112, 112)), Layout("tokens", 64, 3, 3, 0)),
        ((1, 25, 64), (144, 144), ((1, 36, 64), (176, 176)), Layout("tokens", 64, 5, 5, 0)),  # 0/9/16 + 5x5/4x4/3x3
        ((1, 50, 768), (224, 224), ((1, 82, 768), (256, 256)), Layout("tokens", 768, 7, 7, 1)),  # ViT-B/32
        ((1, 21, 16), (32, 32), ((1, 69, 16), (64, 64)), Layout("tokens", 16, 4, 4, 5)),
        ((1, 7, 7, 7), (224, 224), ((1, 8, 8, 7), (256, 256)), Layout("nhwc", 7, 7, 7)),
        ((1, 7, 7, 7), (224, 224), ((1, 7, 8, 8), (256, 256)), Layout("nchw", 7, 7, 7)),
        ((1, 3, 4, 5), (97, 131), ((1, 3, 5, 6), (129, 163)), Layout("nchw", 3, 4, 5)),
    ],
)
def test_a_second_probe_resolves_what_the_shape_alone_cannot(shape, size, second, expected):
    assert infer_layout(shape, size).kind == "ambiguous"
    assert confirm_layout(shape, size, second=second) == expected


def test_what_a_second_probe_cannot_resolve_stays_ambiguous_and_says_why():
    why = "the model refuses a 112x112 input (AssertionError)"
    layout = confirm_layout((1, 9, 64), (80, 80), why=why)
    assert layout.kind == "ambiguous" and "0 leading + 3x3, 5 leading + 2x2" in layout.reason and why in layout.reason
    # the same 7 x 7 token count at 96 and 128 px (DaViT's padded window): no reading is a grid
    assert confirm_layout((1, 49, 64), (96, 96), second=((1, 49, 64), (128, 128))) is None
    # one window here, four windows folded into the batch at the second size: not a grid
    assert confirm_layout((1, 49, 64), (96, 96), second=((4, 49, 64), (128, 128))) is None
    # a convolution's grid decides between readings only when exactly one reading has it
    assert confirm_layout((1, 50, 8), (112, 112), anchors=frozenset({(7, 7)})) == Layout("tokens", 8, 7, 7, 1)
    assert confirm_layout((1, 50, 8), (112, 112), anchors=frozenset({(7, 7), (6, 6)})).kind == "ambiguous"


@pytest.mark.bad_input(77)
def test_outputs_whose_batch_is_not_the_inputs_are_refused_saying_why():
    require_batch("ok", (2, 49, 96), 2)
    for shape in [(128, 49, 96), (8, 7, 7, 96), (1, 49, 96)]:
        with pytest.raises(LayerError, match=r"layer 'attn' outputs a batch of \d+ for 2 input images: it folds"):
            require_batch("attn", shape, 2)
