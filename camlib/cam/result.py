"""What ``compute_cams`` returns (``CamResult``) and how a raw map becomes a map.

Numerics follow pytorch-grad-cam 1.5.7 exactly (``docs/cam-reference.md`` in the shared docs): for each layer the
map is ``minmax(resize(minmax(relu(raw))))`` with ``minmax(m) = (m - min) / (1e-7 + max(m - min))`` per image and
bilinear resizing with ``align_corners=False``. Unlike pytorch-grad-cam, each layer keeps its own map (no averaging).
Whatever the model's dtype, a method's arithmetic runs on activations, gradients and scores upcast to at least float32
(``working_dtype``; the shared model is never cast), and the finish above runs in float64, so float16, bfloat16 and
float64 models give finite maps equal to the float32 model's within their own precision. A raw map that still holds
NaN or Inf raises ``NonFiniteError``: a map is never NaN.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from camlib.contracts import require_array, require_size, require_tensor
from camlib.errors import InputError

NORM_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image epsilon


# A ReLU'd map whose max-min is below this share of max|raw| carries no usable evidence: for a float32 raw map,
# 8.4 units of its rounding; a raw map of another precision is held to as many units of its own (``_finish``).
DEGENERATE_RATIO = 1e-6


@dataclass(frozen=True)
class CamResult:
    """The maps of one ``compute_cams`` call.

    Attributes:
        method: the method name (a key of ``METHODS``).
        layers: the layer names, in the order requested.
        class_idx: the explained class of each image where every target is a class target (``class_idx=``,
            ``ClassTarget``, ``SoftmaxTarget``, ``SigmoidTarget`` or pytorch-grad-cam's classifier targets;
            ``camlib.targets.class_of``), else None.
        logits: ``(B, K)`` float32 raw model outputs when the model returns a 2-D tensor (a classifier's logits, a
            one-logit binary head's ``(B, 1)``), else None (a dict, a list or a score map: ``scores`` holds what was
            explained).
        maps: per layer, ``(B, H, W)`` float32 in [0, 1] at the input's size (finished in float64 from ``raw``).
        raw: per layer, ``(B, h, w)`` signed map before ReLU and normalisation, at feature resolution (SESS: at the
            input's), in the method's working precision: float32, or float64 for a float64 model (``working_dtype``).
        degenerate: per layer, ``(B,)`` bool; True where the map carries no positive evidence (then it is all zeros).
        elapsed_s: wall time of the call.
        counterfactual: True when the maps explain ``-score`` (``compute_cams(counterfactual=True)``).
        scores: ``(B,)`` float64, each image's target score on the input (for ``class_idx``: the logits
            ``logits[b, k_b]``), before any counterfactual negation.
    """

    method: str
    layers: tuple[str, ...]
    class_idx: list[int] | None
    logits: np.ndarray | None
    maps: dict[str, np.ndarray]
    raw: dict[str, np.ndarray]
    degenerate: dict[str, np.ndarray]
    elapsed_s: float = field(default=0.0, compare=False)
    counterfactual: bool = False
    scores: np.ndarray | None = None

    @property
    def probabilities(self) -> np.ndarray:
        """Softmax of the logits, ``(B, num_classes)`` float32.

        Raises ``InputError`` when the model's output was not a 2-D tensor (``logits`` is None)."""
        if self.logits is None:
            raise InputError("this result's model output is not (B, num_classes) logits; it has no probabilities")
        return torch.softmax(torch.from_numpy(self.logits), dim=-1).numpy()

    @property
    def refined(self) -> np.ndarray:
        """RefineCAM's fusion of the layers' maps: ``minmax(prod_layer maps[layer])`` per image, ``(B, H, W)`` float32
        in [0, 1] (pytorch-grad-cam 1.5.7's ``RefineCAM`` with this result's method as ``base_method``: each layer's
        normalised map at the input size, multiplied, normalised again). Where any layer's map is zero the product is
        zero, so deep layers' coarse maps mask the noise of early layers' fine ones. The map of the ``refinecam``
        method; one layer gives that layer's map (up to rounding)."""
        product = np.prod(np.stack([self.maps[layer] for layer in self.layers]), axis=0)
        return minmax_normalize(torch.from_numpy(product)).numpy().astype(np.float32)


def minmax_normalize(maps: torch.Tensor) -> torch.Tensor:
    """pytorch-grad-cam's per-image normalisation of ``(B, h, w)`` maps: ``(m - min) / (1e-7 + max(m - min))``.

    Raises ``InputError`` unless ``maps`` is a non-empty float ``(B, h, w)`` tensor with data (not ``meta``)."""
    require_tensor(maps, "maps", ndim=3, floating=True)
    shifted = maps - maps.flatten(1).min(dim=1).values[:, None, None]
    return shifted / (NORM_EPS + shifted.flatten(1).max(dim=1).values[:, None, None])


def upsample_maps(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``(B, h, w)`` maps to ``size`` with ``align_corners=False`` (cv2.INTER_LINEAR's grid).

    Raises ``InputError`` unless ``maps`` is a non-empty float ``(B, h, w)`` tensor with data and ``size`` an
    ``(H, W)`` pair of positive integers."""
    require_tensor(maps, "maps", ndim=3, floating=True)
    size = require_size(size, "size")
    return F.interpolate(maps[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]


def working_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a method's arithmetic runs in for a model that computes in ``dtype``: float32 for float16, bfloat16
    and float32 models, float64 for float64 ones (``torch.promote_types(dtype, float32)``).

    Half precision cannot hold the methods' intermediates: Grad-CAM++'s ``g^3`` underflows to 0 for ``|g| < 4e-3``
    while a channel's spatial sum overflows float16's 65,504 on a 56 x 56 layer, and ``inf * 0`` is NaN; Score-CAM's
    softmax and the principal components round away. The model itself is never cast (it may be shared): its forward
    and backward run in its own dtype, and what they produce (activations, gradients, logits) is upcast."""
    return torch.promote_types(dtype, torch.float32)


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` in ``working_dtype`` of its dtype (the same tensor when it already is)."""
    return tensor.to(working_dtype(tensor.dtype))


def _finish(
    raw: torch.Tensor, size: tuple[int, int], precision: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """ReLU, normalise, resize, normalise again, in ``raw``'s dtype; degenerate images become exact zeros.

    ``compute_cams`` and ``finish_maps`` pass float64: a near-flat map (its span a small share of its values) loses
    the span's digits when rounded to float32 before its minimum is subtracted. ``precision`` is the dtype the raw map
    was computed in (default: ``raw``'s): a span within its rounding (``DEGENERATE_RATIO`` scaled by its machine
    epsilon over float32's) is no evidence."""
    ratio = DEGENERATE_RATIO * torch.finfo(precision or raw.dtype).eps / torch.finfo(torch.float32).eps
    positive = torch.relu(raw)
    span = positive.flatten(1).max(dim=1).values - positive.flatten(1).min(dim=1).values
    # Relative test: random-init or badly scaled models can have legitimately tiny maps (1e-11) that still carry a
    # pattern; all-negative and constant maps have span 0 (up to rounding).
    degenerate = span <= ratio * raw.abs().flatten(1).max(dim=1).values
    degenerate |= span == 0
    maps = minmax_normalize(upsample_maps(minmax_normalize(positive), size))
    maps[degenerate] = 0.0
    return maps, degenerate


def finish_maps(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The maps ``compute_cams`` returns, rebuilt from its ``raw`` maps: ``(B, h, w)`` float signed raw maps ->
    ``(B, H, W)`` float32 in [0, 1] at ``size`` ``(H, W)`` px, ``minmax(resize(minmax(relu(raw))))`` with degenerate
    images as zeros (pytorch-grad-cam 1.5.7's ``scale_cam_image`` numerics, as in ``compute_cams``), computed in
    float64. Equal to ``CamResult.maps[layer]`` for ``CamResult.raw[layer]``, so a cache can keep the small raw maps
    only.

    Raises:
        InputError: ``raw`` is not a finite float ``(B, h, w)`` array, or ``size`` not a pair of positive ints.
    """
    raw = require_array(raw, "raw", dtypes=(np.float16, np.float32, np.float64), ndim=3, expected="(B, h, w) float")
    if not np.isfinite(raw).all():
        raise InputError("raw must be finite (no NaN or Inf)")
    height, width = require_size(size, "size")
    precision = torch.from_numpy(raw[:0]).dtype
    maps, _ = _finish(torch.from_numpy(np.ascontiguousarray(raw, dtype=np.float64)), (height, width), precision)
    return maps.numpy().astype(np.float32)


def shared_scale_maps(result: CamResult) -> dict[str, np.ndarray]:
    """Maps on one scale across layers: ReLU'd raw maps resized to the input size, divided by each image's largest
    value over all layers, so layers with weak evidence look weak. Values in [0, 1]; all zeros if no layer has any.

    Raises ``InputError`` when ``result`` is not a ``CamResult``."""
    _require_result(result)
    first = next(iter(result.maps.values()))
    size = first.shape[-2:]
    resized = {name: upsample_maps(torch.relu(torch.from_numpy(result.raw[name])), size) for name in result.layers}
    peak = torch.stack([m.flatten(1).max(dim=1).values for m in resized.values()]).max(dim=0).values
    scale = torch.where(peak > 0, peak, torch.ones_like(peak))[:, None, None]
    return {name: (m / scale).clamp(0, 1).numpy().astype(np.float32) for name, m in resized.items()}


def layer_magnitudes(result: CamResult) -> dict[str, np.ndarray]:
    """Each layer's peak positive raw CAM value per image, ``(B,)``: the evidence scale the per-layer maps hide.

    Raises ``InputError`` when ``result`` is not a ``CamResult``."""
    _require_result(result)
    return {
        name: np.maximum(result.raw[name], 0).reshape(len(result.raw[name]), -1).max(axis=1) for name in result.layers
    }


def _require_result(result: object) -> None:
    if not isinstance(result, CamResult):
        raise InputError(f"result must be the CamResult that compute_cams returned, got {type(result).__name__}")
