"""CIFAR-10 architectures: the classic CIFAR ResNet-18 (for GPUs) and a small ResNet-20 (for CPUs).

Both keep the 32x32 input resolution in their first stage (3x3 stem, no max-pool), so their layers give CAM-able maps:
ResNet-20 has stages at 32x32, 16x16 and 8x8; ResNet-18 at 32, 16, 8 and 4.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from camlib.contracts import require_int, require_tensor
from camlib.errors import InputError, UnknownModelError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (a 1x1 projection when the shape changes)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """A CIFAR-style ResNet: 3x3 stem at full resolution, stages of BasicBlocks, global average pool, linear head.

    Args:
        widths: channels of each stage (the first stage keeps 32x32, each later one halves the resolution).
        blocks: BasicBlocks per stage.
        num_classes: output classes.
    """

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU())
        stages = []
        in_channels = widths[0]
        for index, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if index == 0 else 2
            layers = []
            for block in range(count):
                layers.append(BasicBlock(in_channels, width, stride if block == 0 else 1))
                in_channels = width
            stages.append(nn.Sequential(*layers))
        self.layer1, self.layer2, self.layer3 = stages[0], stages[1], stages[2]
        self.layer4 = stages[3] if len(stages) > 3 else None
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        if self.layer4 is not None:
            x = self.layer4(x)
        return self.fc(torch.flatten(self.pool(x), 1))


@dataclass(frozen=True)
class CifarArch:
    """A CIFAR architecture: its builder and a one-line description."""

    name: str
    build: Callable[[int], nn.Module]
    description: str


CIFAR_ARCHS: dict[str, CifarArch] = {
    arch.name: arch
    for arch in (
        CifarArch(
            "resnet20",
            lambda n: CifarResNet((16, 32, 64), (3, 3, 3), n),
            "ResNet-20 (He et al. 2016, CIFAR variant), 0.27 M parameters, maps 32/16/8: fits a CPU",
        ),
        CifarArch(
            "resnet18_cifar",
            lambda n: CifarResNet((64, 128, 256, 512), (2, 2, 2, 2), n),
            "ResNet-18, CIFAR variant (3x3 stem, no max-pool), 11.2 M parameters, maps 32/16/8/4: for a GPU",
        ),
    )
}


def build_cifar_model(arch: str, num_classes: int = 10) -> nn.Module:
    """A freshly initialised CIFAR architecture with ``num_classes >= 1`` outputs.

    Raises ``UnknownModelError`` for an unknown ``arch``, ``InputError`` for a bad ``num_classes``."""
    num_classes = require_int(num_classes, "num_classes", minimum=1)
    if not isinstance(arch, str) or arch not in CIFAR_ARCHS:
        raise UnknownModelError(f"unknown CIFAR architecture {arch!r}; choose one of: {', '.join(CIFAR_ARCHS)}")
    return CIFAR_ARCHS[arch].build(num_classes)


def normalize_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 32, 32, 3)`` (NHWC) to the normalised float ``(N, 3, 32, 32)`` the CIFAR models take.

    Raises ``InputError`` unless ``images`` is a non-empty uint8 ``(N, H, W, 3)`` tensor with data (not ``meta``)."""
    require_tensor(images, "images", ndim=4, expected="uint8 tensor (N, H, W, 3)")
    if images.dtype != torch.uint8 or images.shape[-1] != 3:
        raise InputError(f"images must be a uint8 tensor (N, H, W, 3), got {images.dtype} {tuple(images.shape)}")
    # contiguous(): the permuted NHWC batch would otherwise run as channels_last, ~10x slower on CPUs here.
    x = images.permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    mean = torch.tensor(CIFAR10_MEAN, device=x.device)[None, :, None, None]
    std = torch.tensor(CIFAR10_STD, device=x.device)[None, :, None, None]
    return (x - mean) / std
