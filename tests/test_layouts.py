"""Tests of camlib.layouts: layout inference from shapes alone, across the family of grids, strides, prefixes and
input sizes (bad-inputs row 64), and the reshapes against pytorch-grad-cam's reshape_transform examples."""

from __future__ import annotations

import math

import pytest
import torch

from camlib.errors import LayerError
from camlib.layouts import MAX_PREFIX_TOKENS, Layout, grid_fits, infer_layout, layout_from_spec, to_feature_map

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
        ((1, 50, 768), (224, 224), Layout("tokens", 768, 7, 7, 1)),  # ViT-B/32
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
        ((1, 21, 16), (32, 32)),  # 5 + 4x4 or 17 + 2x2
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
