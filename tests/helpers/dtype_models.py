"""Small seeded-ready models for the dtype tests of camlib.cam and camlib.pixel_attribution (tests/test_cam_methods.py,
tests/test_pixel_attribution.py): a CNN whose float16 channel sums overflow, a token model without a class token, a
tiny torchvision ViT; and the tolerance a half- or double-precision model's maps are held to.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import VisionTransformer

HOT_GAIN = 2000.0


class HotNet(nn.Module):
    """conv -> ReLU -> ``features`` -> conv -> ReLU -> ``deep`` -> spatial mean -> ``head``, the first conv's
    weights times ``HOT_GAIN``: ``deep``'s activations average ~400, so a channel's sum over a 16 x 16 map is ~1e5, past
    float16's largest value (65,504), while the explained logit's gradient there is ~1e-5, whose cube underflows
    float16 to 0 (the two meet in Grad-CAM++'s ``sum(A) g^3``: inf * 0). Pretrained networks' wide early layers hold
    such sums too. Eval-mode, seeded, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.features = nn.Identity()
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.deep = nn.Identity()
        self.head = nn.Linear(8, 10)
        with torch.no_grad():
            self.conv1.weight.mul_(HOT_GAIN)
            self.conv1.bias.mul_(HOT_GAIN)
            self.head.weight.mul_(0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.features(torch.relu(self.conv1(x)))
        return self.head(self.deep(torch.relu(self.conv2(a))).mean(dim=(2, 3)))


class TokenNet(nn.Module):
    """A token model without a class token: 4 px patches embedded by a conv, read as ``(B, N, C)`` tokens, a
    LayerNorm, a GELU MLP (``mixed``), the mean over tokens, ``head``. Its layout is ``tokens:0``."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, stride=4)
        self.norm = nn.LayerNorm(16)
        self.mlp = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
        self.mixed = nn.Identity()
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.norm(self.patch(x).flatten(2).transpose(1, 2))
        return self.head(self.mixed(tokens + self.mlp(tokens)).mean(dim=1))


def tiny_vit() -> nn.Module:
    """torchvision's VisionTransformer, 2 blocks on a 4x4 grid, with a random head (torchvision's is zeros)."""
    model = VisionTransformer(32, 8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32, num_classes=10)
    nn.init.normal_(model.heads.head.weight, std=0.1)
    return model


# (model, input size, layer, layouts): a CNN's last feature map (the gradient reaches it through no ReLU gate, so
# its maps depend smoothly on the model's rounding), a token model's last token layer, and LeGrad's ViT block.
DTYPE_MODELS = {
    "cnn": (HotNet, 16, "deep", None),
    "tokens": (TokenNet, 16, "mixed", {"mixed": "tokens:0"}),
    "vit": (tiny_vit, 32, "encoder.layers.encoder_layer_1", {"encoder.layers.encoder_layer_1": "tokens:1"}),
}
DTYPES = (torch.float16, torch.bfloat16, torch.float64)


def dtype_tolerance(dtype: torch.dtype, ulps: int = 32) -> tuple[float, float]:
    """(max, mean) absolute difference allowed between a ``dtype`` model's maps in [0, 1] and the float32 model's:
    ``ulps`` and 4 units of the coarser dtype's rounding (its machine epsilon; float32's for float64, whose reference
    is the float32 model). 32: a map runs through a few rounded layers, a min-max scaling and a resize (measured: at
    most 8 units for every method but KPCA-CAM, see ``KPCA_ULPS``)."""
    eps = max(torch.finfo(dtype).eps, torch.finfo(torch.float32).eps)
    return ulps * eps, 4 * eps


# KPCA-CAM's sigmoid kernel tanh(a . b / C + 1) saturates on HotNet's activations (a . b / C ~ 1e5), so its top
# eigenvector amplifies the float32 reference's own rounding: measured 76 units of float32 against the float64
# model, 22 of float16 against the float16 model.
KPCA_ULPS = 128
