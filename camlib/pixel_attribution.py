"""Pixel attribution: Guided Backpropagation, Guided Grad-CAM and FullGrad, at the input's resolution.

Unlike the CAMs of ``camlib.cam`` (one coarse map per layer), these explain each input pixel; each is one entry of
``PIXEL_METHODS`` (label, paper, cost, what it returns) and one ``compute_*`` function. B = batch, C = input channels,
(H, W) = the input's size, g = d score / d x, where the score is each image's class logit, or with ``targets=`` its
target's score ``targets[b](output_b)`` (``camlib.targets``; summed over the batch; images never interact in eval
mode), as in ``camlib.cam`` and pytorch-grad-cam 1.5.7. With ``targets`` the model's output may be anything the
targets read (a tensor, a dict of batched tensors, a list of per-image outputs).

- **Guided Backpropagation** (Springenberg et al., ICLR-W 2015, arXiv:1412.6806, eq. for "guided backpropagation" in
  section 3.4): the input gradient computed with every rectifier's backward replaced by
  ``dL/dx_in = relu(dL/dx_out) * [x_in > 0]``: only positive gradients pass, and only where the unit was active.
  ``compute_guided_backprop`` -> ``(B, C, H, W)`` float32 signed attributions.
- **Guided Grad-CAM** (Selvaraju et al., ICCV 2017, arXiv:1610.02391, section 3.1): the guided attributions times the
  layer's Grad-CAM map (``camlib.cam.compute_cams(..., method="gradcam")``, ``(B, H, W)`` in [0, 1]) broadcast over the
  channels, one product per layer. ``compute_guided_gradcam`` -> per layer ``(B, C, H, W)`` float32.
- **FullGrad** (Srinivas & Fleuret, NeurIPS 2019, arXiv:1905.00780, eq. 5 and section 4):
  ``map = minmax(sum_c psi(|x_c g_c|) + sum_l sum_c resize(psi(|b_lc dS/dz_lc|)))`` over every 2-D convolution with a
  bias and every batch norm (eval-mode implicit bias ``b = beta - mu gamma / sqrt(var + eps)``), ``z_l`` that layer's
  output, ``psi`` the per-(image, channel) min-max ``(m - min) / (1e-7 + max(m - min))`` at the layer's resolution and
  ``resize`` bilinear with ``align_corners=False`` (pytorch-grad-cam's ``scale_accross_batch_and_channels``).
  ``compute_fullgrad`` -> ``(B, H, W)`` float32 in [0, 1]. Resizing is linear, so each layer's channels are summed at
  its own resolution and resized once (equal to resizing every channel, up to float rounding).

**Shared models stay clean; no module is replaced.** pytorch-grad-cam's ``GuidedBackpropReLUModel`` swaps the model's
``nn.ReLU`` modules (and puts fresh non-inplace ones back); camlib never changes, hooks or copies the model. Both
methods run their forward under a ``torch.overrides.TorchFunctionMode``, which PyTorch keeps per thread: it sees the
calling thread's torch calls only, so another session's forward of the same cached model runs untouched at the same
time. Guided backprop computes each rectifier call through ``_GuidedRectifier`` (same forward values, guided
backward); FullGrad registers gradient hooks on the call's own conv / batch-norm output tensors (never on the model).
Gradients come from one ``torch.autograd.grad`` with respect to a copy of the input: parameters' ``.grad`` stay
untouched, ``backward()`` is never called, ``training`` flags are restored (``camlib.guard.eval_mode``).

**Any model dtype.** The forward and backward run in the model's dtype (float16, bfloat16, float32 or float64); the
scores, the products ``x g`` and ``b g`` and FullGrad's sums run in at least float32 (``camlib.cam.working_dtype``:
in half precision they underflow) and FullGrad's normalisation in float64, so the results are finite and equal the
float32 model's within the dtype's precision.

**Which activations are guided.** Every rectifier call in the forward, whether a module or functional: ``nn.ReLU`` and
``F.relu`` / ``torch.relu`` / ``Tensor.relu`` (in place or not), ``nn.ReLU6`` / ``F.relu6`` and ``F.hardtanh`` with a
lower bound of 0 (EfficientNet-Lite, MobileNetV2), whose guided backward is ``relu(dL/dx_out) * [0 < x_in < max]``.
Other activations (SiLU, GELU, Hardswish, LeakyReLU, sigmoid and tanh gates, ...) keep their plain gradient and are
counted in ``GuidedBackpropResult.unguided`` (e.g. MobileNetV3: ReLU guided, Hardswish plain, as pytorch-grad-cam).
A model whose forward runs no rectifier at all (pure SiLU / GELU networks such as EfficientNet-B0 or ViT) is refused
with ``MethodError``: its "guided" gradient would be the plain gradient. Differences from pytorch-grad-cam 1.5.7, which
replaces ``nn.ReLU`` modules only: it leaves functional ReLUs (DenseNet's last ``F.relu``) and ReLU6 unguided, so on
EfficientNet-Lite0 it returns the plain input gradient; camlib follows the paper at every rectifier. On models whose
rectifiers are all ``nn.ReLU`` modules the two are equal. TorchScript modules (whose calls the mode cannot see) and
``nn.DataParallel`` (which runs its replicas in other threads) are refused with ``MethodError``. Rectifiers written as
``torch.clamp`` / ``torch.maximum`` are not recognised and keep their plain gradient.

**FullGrad's layers** are seen the same way, as calls of ``F.conv2d`` (with a bias) and ``F.batch_norm`` with 4-D
outputs, so subclasses such as timm's ``BatchNormAct2d`` (a batch norm followed by its activation, in one module) and
``Conv2dSame`` count, and the bias gradient is taken at the batch norm's own output, before any activation or in-place
op. pytorch-grad-cam selects modules whose type is exactly ``nn.Conv2d`` or ``nn.BatchNorm2d`` with a bias, so it
misses those subclasses (on timm's EfficientNet-Lite0 it keeps almost no layer), and batch norms without affine
parameters, whose implicit bias ``-mu / sqrt(var + eps)`` camlib includes. Linear, layer-norm and group-norm biases
are not part of FullGrad's map in either (as in the paper's code). A batch norm that normalises with batch statistics
in eval mode (``track_running_stats=False``) is refused: its bias would depend on the batch.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from camlib.cam import (
    CamResult,
    _upcast,
    compute_cams,
    minmax_normalize,
    upsample_maps,
)
from camlib.contracts import require_array, require_cam_input, require_finite, require_model, resolve_classes
from camlib.errors import GradientUnavailableError, InputError, MethodError
from camlib.guard import eval_mode
from camlib.targets import ClassIdx, Target, Targets, class_of, resolve_targets, target_scores

# --- results -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GuidedBackpropResult:
    """The guided gradients of one ``compute_guided_backprop`` call.

    Attributes:
        class_idx: the explained class of each image (with ``targets``: where every target is a class target,
            ``camlib.targets.class_of``, else None).
        logits: ``(B, num_classes)`` float32 raw model outputs (equal to a plain forward's: the guided rule changes
            only the backward); None when the output is not a 2-D tensor.
        attributions: ``(B, C, H, W)`` float32 signed guided gradients of each image's class logit (target score)
            with respect to the input, in the input's layout (pytorch-grad-cam returns the first image's as
            ``(H, W, C)``).
        rectifiers: calls that ran with the guided backward, by kind (``"relu"``, ``"relu6"``, ``"hardtanh"``).
        unguided: calls of other activations, whose plain gradient was used, by kind (``"silu"``, ``"sigmoid"``...).
        elapsed_s: wall time of the call.
        scores: ``(B,)`` float64, each image's explained score (the class logit, or the target's score).
    """

    class_idx: list[int] | None
    logits: np.ndarray | None
    attributions: np.ndarray
    rectifiers: dict[str, int]
    unguided: dict[str, int]
    elapsed_s: float = field(default=0.0, compare=False)
    scores: np.ndarray | None = None


@dataclass(frozen=True)
class GuidedGradCamResult:
    """Guided Grad-CAM for several layers: one guided backprop, one Grad-CAM call, one product per layer.

    Attributes:
        guided: the guided backprop result (``attributions`` ``(B, C, H, W)``).
        gradcam: the Grad-CAM result of the same classes (``maps[layer]`` ``(B, H, W)`` in [0, 1]).
        attributions: per layer, ``(B, C, H, W)`` float32: ``gradcam.maps[layer][:, None] * guided.attributions``.
        elapsed_s: wall time of the call.
    """

    guided: GuidedBackpropResult
    gradcam: CamResult
    attributions: dict[str, np.ndarray]
    elapsed_s: float = field(default=0.0, compare=False)

    @property
    def class_idx(self) -> list[int] | None:
        return self.guided.class_idx

    @property
    def layers(self) -> tuple[str, ...]:
        return self.gradcam.layers


@dataclass(frozen=True)
class FullGradResult:
    """The FullGrad saliency maps of one ``compute_fullgrad`` call.

    Attributes:
        class_idx: the explained class of each image (None as for ``GuidedBackpropResult``).
        logits: ``(B, num_classes)`` float32 raw model outputs (None when the output is not a 2-D tensor).
        maps: ``(B, H, W)`` float32 in [0, 1]: ``raw`` min-max normalised per image (pytorch-grad-cam's output).
        raw: ``(B, H, W)`` float32 non-negative sum of the normalised input and bias terms, before that normalisation.
        degenerate: ``(B,)`` bool; True where ``raw`` is constant (no evidence), and then ``maps`` is all zeros.
        bias_layers: the module (dotted name) of each conv / batch-norm call whose bias entered the map, in call
            order; a module that runs twice is listed twice; ``"<functional conv2d>"`` where the weights belong to no
            module.
        elapsed_s: wall time of the call.
        scores: ``(B,)`` float64, each image's explained score (the class logit, or the target's score).
    """

    class_idx: list[int] | None
    logits: np.ndarray | None
    maps: np.ndarray
    raw: np.ndarray
    degenerate: np.ndarray
    bias_layers: tuple[str, ...]
    elapsed_s: float = field(default=0.0, compare=False)
    scores: np.ndarray | None = None


# --- guided backpropagation ----------------------------------------------------------------------------------------


class _GuidedRectifier(torch.autograd.Function):
    """``clamp(x, 0, upper)`` forward (ReLU for ``upper=None``, ReLU6 for 6); guided backward
    ``relu(grad) * [0 < x < upper]`` (Springenberg et al. 2015; pytorch-grad-cam's ``GuidedBackpropReLU``).

    In place when the model asked for it (``ReLU(inplace=True)``, ``x.relu_()``): the tensor is marked dirty, so code
    that keeps using the modified tensor instead of the returned one is guided too. Only the boolean mask is saved.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, upper: float | None, inplace: bool) -> torch.Tensor:
        passes = x > 0 if upper is None else (x > 0) & (x < upper)
        ctx.save_for_backward(passes)
        if inplace:
            ctx.mark_dirty(x)
            return x.clamp_(min=0, max=upper)
        return x.clamp(min=0, max=upper)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (passes,) = ctx.saved_tensors
        return grad.clamp(min=0) * passes, None, None


_RELU_OUT_OF_PLACE = (torch.relu, torch.Tensor.relu)
_RELU_IN_PLACE = (torch.relu_, torch.Tensor.relu_)  # F.relu_ is torch.relu_
_SIGNATURES = {func: inspect.signature(func) for func in (F.relu, F.relu6, F.hardtanh)}
# Activations the guided rule does not cover: their plain gradient is used; counted for the result and the refusal.
_UNGUIDED = {
    F.silu: "silu",
    F.gelu: "gelu",
    F.hardswish: "hardswish",
    F.leaky_relu: "leaky_relu",
    F.elu: "elu",
    F.selu: "selu",
    F.celu: "celu",
    F.mish: "mish",
    F.softplus: "softplus",
    F.prelu: "prelu",
    F.hardsigmoid: "hardsigmoid",
    F.sigmoid: "sigmoid",
    torch.sigmoid: "sigmoid",
    torch.Tensor.sigmoid: "sigmoid",
    F.tanh: "tanh",
    torch.tanh: "tanh",
    torch.Tensor.tanh: "tanh",
}


def _rectifier(func: Callable, args: tuple, kwargs: dict) -> tuple[str, torch.Tensor, float | None, bool] | None:
    """``(kind, input, upper bound, in place)`` when the call is a rectifier the guided rule covers, else None."""
    if func in _RELU_OUT_OF_PLACE or func in _RELU_IN_PLACE:
        return "relu", args[0], None, func in _RELU_IN_PLACE
    signature = _SIGNATURES.get(func)
    if signature is None:
        return None
    bound = signature.bind(*args, **kwargs)
    bound.apply_defaults()
    call = bound.arguments
    if func is F.relu:
        return "relu", call["input"], None, bool(call["inplace"])
    if func is F.relu6:
        return "relu6", call["input"], 6.0, bool(call["inplace"])
    if call["min_val"] == 0 and call["max_val"] > 0:  # nn.ReLU6 is F.hardtanh(x, 0, 6)
        kind = "relu6" if call["max_val"] == 6 else "hardtanh"
        return kind, call["input"], float(call["max_val"]), bool(call["inplace"])
    return None


class _GuidedRectifiers(TorchFunctionMode):
    """While entered (in the calling thread only), every rectifier call runs as ``_GuidedRectifier``."""

    def __init__(self) -> None:
        super().__init__()
        self.rectifiers: dict[str, int] = {}
        self.unguided: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        rule = _rectifier(func, args, kwargs)
        if rule is not None:
            kind, tensor, upper, inplace = rule
            self.rectifiers[kind] = self.rectifiers.get(kind, 0) + 1
            return _GuidedRectifier.apply(tensor, upper, inplace)
        if func is F.hardtanh:
            self.unguided["hardtanh"] = self.unguided.get("hardtanh", 0) + 1
        elif func in _UNGUIDED:
            self.unguided[_UNGUIDED[func]] = self.unguided.get(_UNGUIDED[func], 0) + 1
        return func(*args, **kwargs)


def compute_guided_backprop(
    model: nn.Module, x: torch.Tensor, *, targets: Targets = None, class_idx: ClassIdx = None
) -> GuidedBackpropResult:
    """Guided Backpropagation (Springenberg et al., ICLR-W 2015, arXiv:1412.6806).

    ``attributions = d logit_k / d x`` with every rectifier's backward replaced by
    ``dL/dx_in = relu(dL/dx_out) * [0 < x_in < upper]`` (``upper`` = inf for ReLU, 6 for ReLU6). Equal to
    pytorch-grad-cam 1.5.7's ``GuidedBackpropReLUModel`` on models whose rectifiers are ``nn.ReLU`` modules (it
    returns ``attributions[0].transpose(1, 2, 0)``); see the module docstring for ReLU6 and functional ReLUs.

    Args:
        model: a classifier returning ``(B, num_classes)`` logits (with ``targets``, any output they read); it may
            be shared (never changed or hooked; other threads' forwards are not guided).
        x: float tensor ``(B, C, H, W)``, already preprocessed for the model.
        targets: one callable per image, ``targets[b](output_b) -> scalar`` (``camlib.targets``; pytorch-grad-cam's
            target objects work unchanged): the gradient is that of their sum. ``ClassTarget(k)`` is ``class_idx=k``.
        class_idx: ``None`` for each image's argmax, one int for all, or one per image (not with ``targets``).

    Returns:
        A ``GuidedBackpropResult``; ``attributions`` is ``(B, C, H, W)`` float32.

    Raises:
        InputError: ``model`` or ``x`` violate the contract (e.g. channels-last ``x``), or both ``targets`` and
            ``class_idx`` are given.
        TargetError: not one target per image, or a target failing on the model's output.
        MethodError: the model runs no rectifier (guided backprop would be the plain gradient), is or contains a
            TorchScript module or ``nn.DataParallel``, or its output does not depend on ``x`` through autograd.
        ClassIndexError, NonFiniteError, GradientUnavailableError (all ``ValueError``).
    """
    started = time.perf_counter()
    _check_call(model, x, "Guided backpropagation")
    explained = resolve_targets(targets, class_idx, len(x))
    mode = _GuidedRectifiers()
    with eval_mode(model):
        leaf, output = _forward(model, x, mode, explained)
        if not mode.rectifiers:
            used = ", ".join(f"{kind} x {n}" for kind, n in sorted(mode.unguided.items())) or "none found"
            raise MethodError(
                "guided backpropagation changes the backward pass of ReLU-like activations (ReLU, ReLU6), and this "
                f"model's forward runs none (its activations: {used}), so it would equal the plain gradient; use "
                "FullGrad or a CAM method instead"
            )
        explained = _Explained.of(output, explained, class_idx)
        (grad,) = _input_gradient(explained.score, [leaf])
    return GuidedBackpropResult(
        class_idx=explained.classes,
        logits=explained.logits,
        attributions=grad.float().cpu().numpy(),
        rectifiers=dict(mode.rectifiers),
        unguided=dict(mode.unguided),
        elapsed_s=time.perf_counter() - started,
        scores=explained.scores,
    )


def compute_guided_gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    *,
    targets: Targets = None,
    class_idx: ClassIdx = None,
    layouts: Mapping[str, str] | None = None,
) -> GuidedGradCamResult:
    """Guided Grad-CAM (Selvaraju et al., ICCV 2017, arXiv:1610.02391, section 3.1): per layer,
    ``gradcam.maps[layer][:, None] * guided.attributions``, as pytorch-grad-cam's example (``cam_mask * gb``, before
    its ``deprocess_image``; see ``attribution_images`` for that display step).

    The Grad-CAM maps come from ``camlib.cam.compute_cams(..., method="gradcam")`` (one pass for all layers), the
    guided gradients from ``compute_guided_backprop`` for the same classes (the same targets): 2 forwards and 2
    backwards in all.

    Args:
        model, x, targets, class_idx: as for ``compute_guided_backprop``.
        layers, layouts: as for ``camlib.cam.compute_cams``.

    Returns:
        A ``GuidedGradCamResult``: ``attributions[layer]`` ``(B, C, H, W)`` float32, with both parts.

    Raises:
        The errors of ``camlib.cam.compute_cams`` (``LayerError`` for a bad layer, checked first) and of
        ``compute_guided_backprop`` (all ``ValueError``).
    """
    started = time.perf_counter()
    gradcam = compute_cams(model, x, layers, method="gradcam", targets=targets, class_idx=class_idx, layouts=layouts)
    if targets is None:  # the classes Grad-CAM picked (an argmax is read once)
        guided = compute_guided_backprop(model, x, class_idx=gradcam.class_idx)
    else:
        guided = compute_guided_backprop(model, x, targets=targets)
    attributions = {
        layer: (gradcam.maps[layer][:, None] * guided.attributions).astype(np.float32) for layer in gradcam.layers
    }
    return GuidedGradCamResult(guided, gradcam, attributions, elapsed_s=time.perf_counter() - started)


def attribution_images(attributions: np.ndarray) -> np.ndarray:
    """Signed ``(B, C, H, W)`` attributions as ``(B, H, W, C)`` uint8 images for display, per image:
    ``uint8(255 * clip(0.5 + 0.1 (a - mean a) / (std a + 1e-5), 0, 1))`` (pytorch-grad-cam's ``deprocess_image``,
    equal to it on ``attributions[b].transpose(1, 2, 0)``).

    Raises:
        InputError: ``attributions`` is not a finite, non-empty float ``(B, C, H, W)`` array.
    """
    if not isinstance(attributions, np.ndarray) or attributions.ndim != 4 or attributions.dtype.kind != "f":
        shape = getattr(attributions, "shape", type(attributions).__name__)
        raise InputError(f"attributions must be a float (B, C, H, W) array, got {shape}")
    require_array(attributions, "attributions", ndim=4)  # no side of 0 (np.stack of no images, mean of no pixels)
    if not np.isfinite(attributions).all():
        raise InputError("attributions must be finite (no NaN or Inf)")
    images = []
    for image in attributions:
        image = image.transpose(1, 2, 0)
        image = (image - np.mean(image)) / (np.std(image) + 1e-5) * 0.1 + 0.5
        images.append(np.uint8(np.clip(image, 0, 1) * 255))
    return np.stack(images)


# --- FullGrad ------------------------------------------------------------------------------------------------------


@dataclass
class _BiasTerm:
    """One conv / batch-norm call: its module, its (implicit) bias ``(C,)`` and, after the backward, the gradient of
    the score with respect to its output as produced ``(B, C, h, w)``."""

    layer: str
    bias: torch.Tensor
    grad: torch.Tensor | None = None

    def store(self, grad: torch.Tensor) -> None:
        self.grad = grad.detach()


_BATCH_NORM = inspect.signature(F.batch_norm)


class _BiasCapture(TorchFunctionMode):
    """While entered (in the calling thread only), records every ``F.conv2d`` with a bias and every ``F.batch_norm``
    on 4-D tensors, with a gradient hook on the call's output tensor (not on the model)."""

    def __init__(self, owners: dict[int, str]) -> None:
        super().__init__()
        self.owners = owners
        self.terms: list[_BiasTerm] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.conv2d:  # F.conv2d is torch.conv2d
            weight = args[1] if len(args) > 1 else kwargs["weight"]
            bias = args[2] if len(args) > 2 else kwargs.get("bias")
            layer = self.owners.get(id(weight), "<functional conv2d>")
        elif func is F.batch_norm:
            layer, bias = self._batch_norm_bias(args, kwargs)
        else:
            return out
        if bias is not None and isinstance(out, torch.Tensor) and out.dim() == 4 and out.requires_grad:
            term = _BiasTerm(layer, bias.detach())
            out.register_hook(term.store)  # fires with the gradient of the output as produced (before in-place ops)
            self.terms.append(term)
        return out

    def _batch_norm_bias(self, args: tuple, kwargs: dict) -> tuple[str, torch.Tensor]:
        """The eval-mode batch norm's implicit bias ``beta - mu gamma / sqrt(var + eps)`` (pytorch-grad-cam's and the
        paper's code's formula; ``gamma = 1``, ``beta = 0`` without affine parameters)."""
        call = _BATCH_NORM.bind(*args, **kwargs)
        call.apply_defaults()
        mean, var, weight, bias = (call.arguments[k] for k in ("running_mean", "running_var", "weight", "bias"))
        layer = self.owners.get(id(mean if mean is not None else weight), "<functional batch_norm>")
        if call.arguments["training"] or mean is None or var is None:
            raise MethodError(
                f"FullGrad needs batch norms with running statistics, and {layer} normalises with the batch's own "
                "statistics (track_running_stats=False), so its bias depends on the batch; use another method"
            )
        weight = torch.ones_like(mean) if weight is None else weight
        bias = torch.zeros_like(mean) if bias is None else bias
        return layer, -(mean * weight / torch.sqrt(var + call.arguments["eps"])) + bias


def compute_fullgrad(
    model: nn.Module, x: torch.Tensor, *, targets: Targets = None, class_idx: ClassIdx = None
) -> FullGradResult:
    """FullGrad saliency (Srinivas & Fleuret, NeurIPS 2019, arXiv:1905.00780) as pytorch-grad-cam 1.5.7 computes it.

    ``raw = sum_c psi(|x_c g_c|) + sum_l resize(sum_c psi(|b_lc dS/dz_lc|))`` and ``maps = minmax(raw)`` per image,
    with ``g = dS/dx``, ``l`` every conv2d-with-bias / batch-norm call, ``z_l`` its output, ``b_l`` its (implicit)
    bias, ``psi`` the per-(image, channel) min-max ``(m - min) / (1e-7 + max(m - min))`` at the layer's ``(h, w)``
    (a ``1 x 1`` map gives 0) and ``resize`` bilinear to ``(H, W)`` with ``align_corners=False``. One forward and
    one ``torch.autograd.grad``; no layer choice (every bias layer counts). See the module docstring for which layers
    are seen and how that differs from pytorch-grad-cam on timm models.

    Args:
        model, x, targets, class_idx: as for ``compute_guided_backprop``.

    Returns:
        A ``FullGradResult``: ``maps`` ``(B, H, W)`` float32 in [0, 1], ``raw`` ``(B, H, W)`` float32.

    Raises:
        InputError: ``model`` or ``x`` violate the contract.
        MethodError: the forward runs no conv with a bias and no batch norm, a batch norm uses batch statistics, the
            model is or contains a TorchScript module or ``nn.DataParallel``, or its output does not depend on ``x``.
        InputError, TargetError: as for ``compute_guided_backprop``.
        ClassIndexError, NonFiniteError, GradientUnavailableError (all ``ValueError``).
    """
    started = time.perf_counter()
    _check_call(model, x, "FullGrad")
    explained = resolve_targets(targets, class_idx, len(x))
    owners = {
        id(tensor): name
        for name, module in model.named_modules()
        for tensor in (*module.parameters(recurse=False), *module.buffers(recurse=False))
    }
    mode = _BiasCapture(owners)
    with eval_mode(model):
        leaf, output = _forward(model, x, mode, explained)
        if not mode.terms:
            raise MethodError(
                "FullGrad sums the bias-gradients of convolutions and batch norms, and this model's forward runs "
                "neither a convolution with a bias nor a batch norm on a feature map; use another method"
            )
        explained = _Explained.of(output, explained, class_idx)
        (grad,) = _input_gradient(explained.score, [leaf])
    size = (int(leaf.shape[-2]), int(leaf.shape[-1]))
    # Products in at least float32 (camlib.cam.working_dtype): in half precision |x g| and |b g| underflow to 0.
    raw = _channel_sum(_upcast(leaf.detach()) * _upcast(grad), size)
    for term in mode.terms:
        if term.grad is not None:  # None: the layer does not lie between the input and the score
            require_finite(f"the gradients of {term.layer}", term.grad)
            grad_z = _upcast(term.grad)
            raw = raw + _channel_sum(term.bias.to(grad_z.dtype)[None, :, None, None] * grad_z, size)
    flat = raw.flatten(1)  # float64 (_channel_sum): normalised before any rounding to float32
    degenerate = flat.max(dim=1).values == flat.min(dim=1).values
    maps = minmax_normalize(raw).float()
    maps[degenerate] = 0.0
    raw = raw.float()
    return FullGradResult(
        class_idx=explained.classes,
        logits=explained.logits,
        maps=maps.cpu().numpy(),
        raw=raw.cpu().numpy(),
        degenerate=degenerate.cpu().numpy(),
        bias_layers=tuple(term.layer for term in mode.terms),
        elapsed_s=time.perf_counter() - started,
        scores=explained.scores,
    )


def _channel_sum(products: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``resize(sum_c psi(|products_c|))``: ``(B, C, h, w)`` -> ``(B, H, W)``, each channel min-max normalised at its
    own resolution (pytorch-grad-cam's ``scale_accross_batch_and_channels``), summed, resized once (resizing is
    linear)."""
    batch, channels, height, width = products.shape
    normalised = minmax_normalize(products.abs().reshape(batch * channels, height, width).double())
    summed = normalised.reshape(batch, channels, height, width).sum(dim=1)
    return summed if (height, width) == size else upsample_maps(summed, size)


# --- shared steps --------------------------------------------------------------------------------------------------


def _check_call(model: nn.Module, x: torch.Tensor, method: str) -> None:
    """The argument checks both methods share, before any work."""
    require_model(model)
    require_cam_input(x)  # as compute_cams checks x (there are no perturbation batches here)
    for name, module in model.named_modules():
        if isinstance(module, (torch.jit.ScriptModule, nn.DataParallel)):
            kind = "a TorchScript module" if isinstance(module, torch.jit.ScriptModule) else "nn.DataParallel"
            raise MethodError(
                f"{method} follows the model's torch calls in this thread, and {name or 'the model'} is {kind}, whose "
                "calls it cannot see; pass the plain Python model (e.g. model.module)"
            )
    if any(t.is_inference() for t in (*model.parameters(), *model.buffers())):
        raise GradientUnavailableError(
            f"{method} needs gradients, and this model's weights were created in inference_mode; "
            "load the model outside torch.inference_mode()"
        )


def _forward(
    model: nn.Module, x: torch.Tensor, mode: TorchFunctionMode, targets: list[Target] | None
) -> tuple[torch.Tensor, object]:
    """One forward under ``mode`` (entered and left in this thread, also on error); the caller holds ``eval_mode``.

    Returns the input leaf (model device and dtype, requiring grad) and the model's output: ``(B, num_classes)``
    finite logits without ``targets``, whatever the model returns with them (the targets' scores are checked)."""
    first = next(model.parameters(), None)
    device = first.device if first is not None else x.device
    dtype = first.dtype if first is not None and first.is_floating_point() else x.dtype
    # inference_mode(False): works when the caller is inside inference_mode or no_grad.
    with torch.inference_mode(False), torch.enable_grad():
        leaf = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
        model_input = leaf.clone()  # a model may change its input in place; the leaf keeps x
        with mode:
            output = model(model_input)
    if targets is None:
        if not isinstance(output, torch.Tensor) or output.dim() != 2:
            raise InputError("the model must return (B, num_classes) logits")
        require_finite("the logits", output)
    return leaf, output


@dataclass(frozen=True)
class _Explained:
    """What a pixel attribution explains on one forward's output: ``score`` ``(B,)`` (graph kept, at least float32),
    the classes (None unless every target is a class target), the logits and the scores as results hold them."""

    score: torch.Tensor
    classes: list[int] | None
    logits: np.ndarray | None
    scores: np.ndarray

    @classmethod
    def of(cls, output: object, targets: list[Target] | None, class_idx: object) -> _Explained:
        """The class logits of ``class_idx`` (``resolve_classes``: an argmax for None) or ``targets``' scores
        (``target_scores`` on the upcast output when it is a tensor)."""
        with torch.inference_mode(False), torch.enable_grad():
            if targets is None:
                classes = resolve_classes(class_idx, output)
                score = _upcast(output)[torch.arange(len(classes)), torch.tensor(classes)]
            else:
                score = _upcast(target_scores(targets, _upcast(output) if isinstance(output, torch.Tensor) else output))
                found = [class_of(target) for target in targets]
                classes = None if None in found else found
        is_logits = isinstance(output, torch.Tensor) and output.dim() == 2
        logits = output.detach().float().cpu().numpy() if is_logits else None
        return cls(score, classes, logits, score.detach().double().cpu().numpy())


def _input_gradient(score: torch.Tensor, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, ...]:
    """``torch.autograd.grad`` of the summed scores ``(B,)`` with respect to ``inputs``: never ``backward()``, so
    parameters' ``.grad`` stay untouched."""
    with torch.inference_mode(False), torch.enable_grad():
        score = score.sum()
        if not score.requires_grad:
            raise MethodError("the model's output does not depend on its input through autograd, so it has no gradient")
        grads = torch.autograd.grad(score, inputs, allow_unused=True)
    if any(grad is None for grad in grads):
        raise MethodError("the model's output does not depend on its input through autograd, so it has no gradient")
    for grad in grads:
        require_finite("the input gradients", grad)
    return tuple(grad.detach() for grad in grads)


# --- registry ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelMethodSpec:
    """A pixel-attribution method: display label, paper, cost, and what it computes.

    ``needs_layers``: ``compute(model, x, layers, *, targets=..., class_idx=...)`` (Guided Grad-CAM) instead of
    ``compute(model, x, *, targets=..., class_idx=...)``. ``output``: ``"attributions"`` (signed ``(B, C, H, W)``,
    shown with ``attribution_images``) or ``"map"`` (``(B, H, W)`` in [0, 1], overlaid like a CAM).
    """

    name: str
    label: str
    paper: str
    cost: str
    needs_layers: bool
    output: str
    compute: Callable = field(compare=False, repr=False)


PIXEL_METHODS: dict[str, PixelMethodSpec] = {
    spec.name: spec
    for spec in (
        PixelMethodSpec(
            "guided_backprop",
            label="Guided Backpropagation",
            paper="Springenberg et al., ICLR-W 2015, arXiv:1412.6806",
            cost="1 forward + 1 backward to the input",
            needs_layers=False,
            output="attributions",
            compute=compute_guided_backprop,
        ),
        PixelMethodSpec(
            "guided_gradcam",
            label="Guided Grad-CAM",
            paper="Selvaraju et al., ICCV 2017, arXiv:1610.02391",
            cost="2 forwards + 2 backwards (Grad-CAM and guided backprop)",
            needs_layers=True,
            output="attributions",
            compute=compute_guided_gradcam,
        ),
        PixelMethodSpec(
            "fullgrad",
            label="FullGrad",
            paper="Srinivas & Fleuret, NeurIPS 2019, arXiv:1905.00780",
            cost="1 forward + 1 backward to the input and every conv / batch-norm output",
            needs_layers=False,
            output="map",
            compute=compute_fullgrad,
        ),
    )
}
