"""Grad-CAM-family class activation maps for several layers from one pass.

Methods live in one registry, ``METHODS``: each is a function decorated with ``register_method(name, label=...,
paper=..., family=..., cost=...)`` that turns a layer's ``LayerEvidence`` (activations, and gradients for the
"gradient" family) into a signed raw map. Adding a method is one decorated function (plus its test).
``compute_cams`` reads as: forward with hooks, gradients if the family needs them, each layer's raw map, finish.

``compute_cams(model, x, layers, method=..., class_idx=...)`` runs one forward pass with temporary forward hooks on
the requested layers and, for gradient methods, one ``torch.autograd.grad`` call with respect to those layers'
outputs. Parameters' ``.grad`` are never touched, ``backward()`` is never called, hooks are removed in ``finally``,
module ``training`` flags are restored, and the hooks act only for the calling thread, so sessions sharing a model
run concurrently without seeing each other's hooks (``camlib.guard.eval_mode``; a model with modules in training mode
is switched to eval under its lock instead, held for the whole call).

Numerics follow pytorch-grad-cam 1.5.7 exactly (``docs/cam-reference.md`` in the shared docs): for each layer the
map is ``minmax(resize(minmax(relu(raw))))`` with ``minmax(m) = (m - min) / (1e-7 + max(m - min))`` per image and
bilinear resizing with ``align_corners=False``. Unlike pytorch-grad-cam, each layer keeps its own map (no averaging).
Whatever the model's dtype, a method's arithmetic runs on activations, gradients and scores upcast to at least float32
(``working_dtype``; the shared model is never cast), and the finish above runs in float64, so float16, bfloat16 and
float64 models give finite maps equal to the float32 model's within their own precision. A raw map that still holds
NaN or Inf raises ``NonFiniteError``: a map is never NaN.

The activations are each layer's output **as the layer produced it**, and the gradient is taken with respect to that
same output (torch-cam's semantics): a map never depends on in-place operations that run later (``ReLU(inplace=True)``,
a residual ``+=``) or on which other layers are requested in the same call. pytorch-grad-cam instead reads the stored
output tensor after the forward pass, so later in-place ops change its activations but not its gradients; on models
without later in-place ops the two agree exactly.

Layers whose output is channels-last ``(B, H, W, C)`` or tokens ``(B, N, C)`` are read as ``(B, C, h, w)`` feature
maps (``camlib.layers.layer_layout``: the layout is read from the shapes and the input size; a shape that fits
several readings is probed again at a larger input, and what stays ambiguous is refused unless given explicitly), as
pytorch-grad-cam does with a matching ``reshape_transform``. A layer whose output batch is not the input's (windows
folded into the batch) is refused.

Methods that pytorch-grad-cam lacks follow torch-cam 0.5.0 (SS-CAM, IS-CAM, LeGrad; Smooth Grad-CAM++ follows the
paper where torch-cam departs from it, see its docstring). Sampling methods draw from a ``torch.Generator`` seeded
with ``compute_cams(seed=...)``, never from a global generator. ``MethodSpec.refusal`` says from a model's structure
why a method cannot explain a layer (CAM, LeGrad, KPCA-CAM's memory cap), before any computation.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camlib.contracts import (
    require_array,
    require_cam_input,
    require_finite,
    require_int,
    require_model,
    require_size,
    require_tensor,
    resolve_classes,
)
from camlib.errors import (
    GradientUnavailableError,
    InputError,
    LayerError,
    MethodError,
    NonFiniteError,
    TargetError,
)
from camlib.guard import eval_mode, owned_by_this_thread
from camlib.layers import layer_layout
from camlib.layouts import Layout, layout_from_spec, to_feature_map
from camlib.targets import Target, class_of, class_targets, is_logit_target, resolve_targets, target_scores

NORM_EPS = 1e-7  # pytorch-grad-cam's scale_cam_image epsilon
# A ReLU'd map whose max-min is below this share of max|raw| carries no usable evidence: for a float32 raw map,
# 8.4 units of its rounding; a raw map of another precision is held to as many units of its own (``_finish``).
DEGENERATE_RATIO = 1e-6


FAMILIES = ("gradient", "activation", "perturbation")


@dataclass(frozen=True)
class LayerEvidence:
    """Everything a method may use to build one layer's raw map.

    Attributes:
        activations: ``(B, C, h, w)`` the layer's output as produced (after any layout reshaping), upcast to
            ``working_dtype`` (float32 for a float16 or bfloat16 model): a method computes in that dtype.
        gradients: ``(B, C, h, w)`` d(each image's target score) / d(activations) for "gradient" methods, else None;
            upcast as the activations.
        model: the model, locked and in eval mode; "perturbation" methods run further forwards with it (no hooks).
        x: ``(B, C_in, H, W)`` the model input as the model saw it (the model's dtype: cast what you feed it to
            ``x.dtype``, and upcast what it returns).
        targets: what each image's map explains: one callable per image, ``targets[b](output_b) -> scalar``
            (``camlib.targets``; ``ClassTarget(k)`` for ``class_idx=k``). A method scores a perturbed copy of image
            ``b`` with ``target_scores([targets[b]] * N, model(copies))``; only the methods that need class logits
            read ``class_of(targets[b])``.
        scores: ``(B,)`` the targets' scores on ``x``, upcast as the activations, detached.
        batch_size: inputs per extra forward for "perturbation" methods.
        progress: call ``progress.step()`` after each extra forward batch (reports progress; may raise to cancel).
        logits: the model's output for ``x`` when it is a tensor (``(B, num_classes)`` for a classifier), upcast as
            the activations; None for a dict or list output. Only the methods that need class logits read it (CAM,
            Finer-CAM, SESS's softmax).
        output: the layer's output as produced, in its own layout (``(B, C, h, w)``, ``(B, h, w, C)`` or tokens
            ``(B, N, C)``); ``channel_dim`` is its channel axis.
        forward_with_output: ``forward_with_output(inputs, output) -> logits`` runs the model on ``inputs`` with this
            layer's output replaced by ``output`` (same layout; a hook acting for this thread only, removed after).
        hessian_products: ``(B, C, h, w)`` ``H A``, the Hessian of the summed scores with respect to the activations
            times the activations, for "gradient" methods registered with ``second_order=True``, else None.
        seed: the seed of a sampling method's ``torch.Generator`` (one generator per image and layer, seeded alike).
        n_samples: how many noisy or integration samples a sampling method draws (its ``MethodSpec.samples`` unless
            the caller chose another count).
        gradients_at: ``gradients_at(inputs, targets) -> (activations, gradients)``, both ``(N, C, h, w)``: this
            layer's activations on ``inputs`` ``(N, C_in, H, W)`` (model dtype) and the gradients of the summed scores
            of ``targets`` (one callable per input) with respect to them, both upcast (one more forward and backward;
            hooks act for this thread only and are removed after).
        eigen_smooth: project the method's per-channel terms on their first principal component instead of summing
            them (``_channel_sum``; pytorch-grad-cam's ``eigen_smooth``).
        module: the layer's module (methods that hook inside it, LeGrad). layout: how its output was read.
    """

    activations: torch.Tensor
    gradients: torch.Tensor | None
    model: nn.Module
    x: torch.Tensor
    targets: list[Target]
    batch_size: int
    progress: Progress = field(default_factory=lambda: Progress(None, 0))
    logits: torch.Tensor | None = None
    output: torch.Tensor | None = None
    channel_dim: int = 1
    forward_with_output: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    hessian_products: torch.Tensor | None = None
    seed: int = 0
    n_samples: int = 1
    gradients_at: Callable[[torch.Tensor, list[int]], tuple[torch.Tensor, torch.Tensor]] | None = None
    eigen_smooth: bool = False
    module: nn.Module | None = None
    layout: Layout | None = None
    scores: torch.Tensor | None = None


ProgressCallback = Callable[[int, int], None]


class Progress:
    """Counts the extra forward batches of a call and reports ``(done, total)`` to an optional callback.

    The callback runs between batches; an exception it raises (e.g. the page's "this run is superseded") stops the
    computation there and propagates, after camlib has removed its hooks, restored modes and released the lock.
    """

    def __init__(self, callback: ProgressCallback | None, total: int) -> None:
        self.callback, self.total, self.done = callback, total, 0

    def step(self) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(self.done, self.total)


RawMap = Callable[[LayerEvidence], torch.Tensor]
Refusal = Callable[[nn.Module, nn.Module, "Layout | None"], "str | None"]
Score = Callable[[object, list[Target]], torch.Tensor]


def _target_scores(output: object, targets: list[Target]) -> torch.Tensor:
    """Each image's score ``targets[b](output_b)``, ``(B,)`` (``camlib.targets.target_scores``; for logit targets
    ``logits[b, k_b]``, pytorch-grad-cam's ``ClassifierOutputTarget``). What "gradient" methods differentiate unless
    their spec says otherwise."""
    return target_scores(targets, output)


def _logit_classes(method: str, output: object, targets: list[Target]) -> list[int]:
    """The class of each image for a method that explains one class's logit of a ``(B, num_classes)`` output.

    Raises ``MethodError`` for another output or a target that is not a class's raw logit."""
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise MethodError(
            f"{method} needs a model that returns (B, num_classes) class logits; this one returns "
            f"{_describe_output(output)}: use Grad-CAM or another gradient method with targets="
        )
    if not all(is_logit_target(t) for t in targets):
        raise MethodError(
            f"{method} explains the logit of one class (class_idx=k, ClassTarget or ClassifierOutputTarget); "
            "use Grad-CAM or another gradient method for other targets"
        )
    return [class_of(t) for t in targets]


def _describe_output(output: object) -> str:
    if isinstance(output, torch.Tensor):
        return f"a tensor of shape {tuple(output.shape)}"
    return f"a {type(output).__name__}"


@dataclass(frozen=True)
class MethodSpec:
    """A CAM method: display label, paper, family, cost, and the function that builds its signed raw map.

    ``family`` says what ``compute_cams`` prepares: "gradient" methods get the gradients of the explained score (one
    backward for all layers), "activation" methods only the activations, "perturbation" methods also run forwards of
    perturbed inputs. ``raw_map(evidence) -> (B, h, w)`` is the signed map before ReLU and normalisation.
    ``score(output, targets) -> (B,)`` is what a "gradient" method differentiates (``_target_scores`` by default);
    ``second_order`` methods also get Hessian-vector products (one more backward per layer). ``samples`` is the
    default number of noisy or integration samples of a sampling method (1 otherwise); a "perturbation" method runs
    ``samples`` extra forwards per channel, or ``samples * forwards_per_sample`` in all when ``per_channel`` is False
    (``extra_forwards``); those run in batches of ``batch_size`` samples, or one progress step per sample when not
    ``batched`` (``batches``).
    A ``fuses_layers`` method's map is ``CamResult.refined``, the fusion of its per-layer maps (RefineCAM).
    """

    name: str
    label: str
    paper: str
    family: str
    cost: str
    raw_map: RawMap = field(compare=False, repr=False)
    score: Score = field(default=_target_scores, compare=False, repr=False)
    second_order: bool = False
    samples: int = 1
    per_channel: bool = True
    fuses_layers: bool = False
    refuse: Refusal | None = field(default=None, compare=False, repr=False)
    forwards_per_sample: int = 1
    batched: bool = True
    stochastic: bool = False

    @property
    def uses_gradients(self) -> bool:
        return self.family == "gradient"

    def refusal(self, model: nn.Module, layer: str, layout: Layout | None = None) -> str | None:
        """Why this method cannot explain ``layer`` of ``model``, from the model's structure alone (no forward), or
        None where it may: the reason a picker shows next to a greyed-out method. ``layout`` (the layer inspector's
        ``LayerInfo.layout``) makes the check sharper. None is not a promise: ``compute_cams`` still checks on the
        numbers and raises ``MethodError`` (e.g. CAM on a layer whose output is changed after the layer that feeds
        the pooling).

        Raises ``LayerError`` when ``layer`` is not a module of ``model``."""
        module = dict(model.named_modules()).get(layer) if isinstance(layer, str) and layer else None
        if module is None:
            raise LayerError(f"layer {layer!r} is not a module of this model")
        return None if self.refuse is None else self.refuse(model, module, layout)

    def extra_forwards(self, channels: int, n_samples: int | None = None) -> int:
        """Extra forwards for one image and one layer of ``channels`` channels (0 unless "perturbation")."""
        if self.family != "perturbation":
            return 0
        return (channels if self.per_channel else self.forwards_per_sample) * (n_samples or self.samples)

    def batches(self, channels: int, batch_size: int, n_samples: int | None = None) -> int:
        """How many progress steps (batched forwards) those take for one image and layer: per sample,
        ``ceil(channels / batch_size)`` for per-channel methods; else ``ceil(samples / batch_size)`` when ``batched``,
        one per sample when not (SESS: one per scale)."""
        if self.family != "perturbation":
            return 0
        samples = n_samples or self.samples
        if self.per_channel:
            return samples * -(-channels // batch_size)
        return -(-samples // batch_size) if self.batched else samples


METHODS: dict[str, MethodSpec] = {}


def register_method(  # noqa: PLR0913 (keyword-only declarations of a method)
    name: str,
    *,
    label: str,
    paper: str,
    family: str,
    cost: str,
    score: Score = _target_scores,
    second_order: bool = False,
    samples: int = 1,
    per_channel: bool = True,
    fuses_layers: bool = False,
    refuse: Refusal | None = None,
    forwards_per_sample: int = 1,
    batched: bool = True,
    stochastic: bool = False,
) -> Callable[[RawMap], RawMap]:
    """Decorator adding a raw-map function to ``METHODS`` under ``name``: the one place a method is declared.

    ``score`` is what a "gradient" method differentiates (default: the targets' scores); ``second_order``
    gives it Hessian-vector products as well (``LayerEvidence.hessian_products``); ``samples`` and ``per_channel``
    describe a sampling "perturbation" method's extra forwards (``MethodSpec.extra_forwards``); ``fuses_layers``
    says that the method's map is ``CamResult.refined`` (its per-layer maps fused); ``refuse(model, module, layout)``
    says statically why the method does not apply to a layer (``MethodSpec.refusal``); ``forwards_per_sample`` and
    ``batched`` refine the cost of a method that is not per channel (``MethodSpec.extra_forwards``, ``batches``);
    ``stochastic`` says that its maps depend on ``compute_cams(seed=...)`` (a picker offers the seed)."""
    if not isinstance(family, str) or family not in FAMILIES:
        raise MethodError(f"unknown method family {family!r}; one of {FAMILIES}")

    def add(raw_map: RawMap) -> RawMap:
        if name in METHODS:
            raise MethodError(f"CAM method {name!r} is registered twice")
        METHODS[name] = MethodSpec(
            name,
            label,
            paper,
            family,
            cost,
            raw_map,
            score,
            second_order,
            samples,
            per_channel,
            fuses_layers,
            refuse,
            forwards_per_sample,
            batched,
            stochastic,
        )
        return raw_map

    return add


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


# --- methods -------------------------------------------------------------------------------------------------------
# One registered function per method: A = activations, g = gradients, both (B, C, h, w); sums run over channels c and
# positions (i, j). Constants follow pytorch-grad-cam 1.5.7 (shared docs: cam-reference.md) so the numbers match.


def _weighted_sum(weights: torch.Tensor, acts: torch.Tensor, e: LayerEvidence | None = None) -> torch.Tensor:
    """``sum_c w_c A_c`` for ``(B, C)`` weights; with ``e.eigen_smooth`` the first principal component instead."""
    return _channel_sum(weights[:, :, None, None] * acts, e)


def _channel_sum(terms: torch.Tensor, e: LayerEvidence | None = None) -> torch.Tensor:
    """A method's per-channel terms ``(B, C, h, w)`` summed over channels, or, with ``e.eigen_smooth``, projected on
    their first principal component (pytorch-grad-cam's ``eigen_smooth``: ``get_2d_projection`` of the terms; camlib
    fixes the component's sign so it correlates positively with the channel sum, as ``eigen_projection``)."""
    if e is not None and e.eigen_smooth:
        return eigen_projection(terms).to(terms.dtype)
    return terms.sum(dim=1)


@register_method(
    "gradcam",
    label="Grad-CAM",
    paper="Selvaraju et al., ICCV 2017, arXiv:1610.02391",
    family="gradient",
    cost="1 forward + 1 backward",
)
def _gradcam(e: LayerEvidence) -> torch.Tensor:
    """Grad-CAM: ``sum_c w_c A_c`` with ``w_c = mean_ij g_cij`` (Selvaraju et al. 2017, eq. 1-2, before the ReLU)."""
    return _weighted_sum(e.gradients.mean(dim=(2, 3)), e.activations, e)


@register_method(
    "gradcam++",
    label="Grad-CAM++",
    paper="Chattopadhyay et al., WACV 2018, arXiv:1710.11063",
    family="gradient",
    cost="1 forward + 1 backward",
)
def _gradcam_plus_plus(e: LayerEvidence) -> torch.Tensor:
    """Grad-CAM++: ``w_c = sum_ij alpha_cij relu(g_cij)`` with ``alpha = g^2 / (2 g^2 + sum_ij(A) g^3)`` (eq. 19 of
    Chattopadhyay et al. 2018 with exp(S) replaced by its gradients, as pytorch-grad-cam does; 1e-6 in the
    denominator, alpha = 0 where g = 0)."""
    acts, grads = e.activations, e.gradients
    grads_2 = grads**2
    grads_3 = grads_2 * grads
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    alpha = grads_2 / (2 * grads_2 + sum_acts * grads_3 + 1e-6)
    alpha = torch.where(grads != 0, alpha, torch.zeros_like(alpha))
    return _weighted_sum((torch.relu(grads) * alpha).sum(dim=(2, 3)), acts, e)


@register_method(
    "refinecam",
    label="RefineCAM (Grad-CAM++ over the layers)",
    paper="How to Evaluate and Refine your CAM, arXiv:2605.14641",
    family="gradient",
    cost="1 forward + 1 backward (as Grad-CAM++); pick 2+ layers",
    fuses_layers=True,
)
def _refinecam(e: LayerEvidence) -> torch.Tensor:
    """RefineCAM: the element-wise product of the normalised Grad-CAM++ maps of every requested layer, normalised
    (``CamResult.refined``), as pytorch-grad-cam's ``RefineCAM`` with its default base method: deep layers' coarse
    maps denoise early layers' detailed ones. Each layer's own map and raw map are Grad-CAM++'s
    (``_gradcam_plus_plus``); the fusion needs the layers of one call, so it is ``CamResult.refined``. (torch-cam
    0.5.0's ``RefineCAM`` fuses at the largest feature resolution instead of the input size.)"""
    return _gradcam_plus_plus(e)


@register_method(
    "xgradcam",
    label="XGrad-CAM",
    paper="Fu et al., BMVC 2020, arXiv:2008.02312",
    family="gradient",
    cost="1 forward + 1 backward",
)
def _xgradcam(e: LayerEvidence) -> torch.Tensor:
    """XGrad-CAM: ``w_c = sum_ij (A_cij / (sum_ij A_cij + 1e-7)) g_cij`` (Fu et al. 2020, eq. 12)."""
    acts = e.activations
    sum_acts = acts.sum(dim=(2, 3), keepdim=True)
    return _weighted_sum((e.gradients * acts / (sum_acts + 1e-7)).sum(dim=(2, 3)), acts, e)


@register_method(
    "hirescam",
    label="HiResCAM",
    paper="Draelos & Carin, 2020, arXiv:2011.08891",
    family="gradient",
    cost="1 forward + 1 backward",
)
def _hirescam(e: LayerEvidence) -> torch.Tensor:
    """HiResCAM: ``sum_c g_c * A_c`` element-wise, no spatial averaging of the gradients (Draelos & Carin 2020)."""
    return _channel_sum(e.gradients * e.activations, e)


@register_method(
    "shapleycam",
    label="ShapleyCAM",
    paper="Cai, 2025, arXiv:2501.06261",
    family="gradient",
    cost="1 forward + 1 backward + 1 Hessian-vector product per layer",
    second_order=True,
)
def _shapleycam(e: LayerEvidence) -> torch.Tensor:
    """ShapleyCAM: ``sum_c w_c A_c`` with ``w_c = mean_ij (g - H A / 2)_cij``, ``H`` the Hessian of the score with
    respect to the activations: a second-order estimate of each channel's Shapley value (Cai 2025), as
    pytorch-grad-cam's ShapleyCAM. Where the network above the layer is piecewise linear (ReLU, max pooling, eval-mode
    batch norm) ``H A = 0`` and it equals Grad-CAM."""
    return _weighted_sum((e.gradients - 0.5 * e.hessian_products).mean(dim=(2, 3)), e.activations, e)


@register_method(
    "layercam", label="LayerCAM", paper="Jiang et al., IEEE TIP 2021", family="gradient", cost="1 forward + 1 backward"
)
def _layercam(e: LayerEvidence) -> torch.Tensor:
    """LayerCAM: ``sum_c relu(g_c) * A_c`` element-wise (Jiang et al. 2021, eq. 5)."""
    return _channel_sum(torch.relu(e.gradients) * e.activations, e)


FINER_COMPARISONS = 3  # pytorch-grad-cam's default comparison_categories (1, 2, 3): the three most similar classes
FINER_ALPHA = 1.0  # pytorch-grad-cam's default comparison strength


def _finer_scores(logits: torch.Tensor, targets: list[Target]) -> torch.Tensor:
    """Finer-CAM's score: ``sum_j p_j (y_k - alpha y_j) / (sum_j p_j + 1e-9)`` over the ``FINER_COMPARISONS`` classes
    ``j`` whose logits are closest to the explained class ``k``'s, ``p = softmax(logits)`` (pytorch-grad-cam's
    ``FinerWeightedTarget``; gradients flow through ``p`` too), ``alpha = FINER_ALPHA``.

    Raises ``MethodError`` unless ``logits`` is ``(B, num_classes)`` and every target a class's raw logit (Finer-CAM
    builds its own contrast from the class; any other target has no class to contrast)."""
    targets = _logit_classes("Finer-CAM", logits, targets)
    main = target_scores(class_targets(targets), logits)
    rows, comparisons = torch.arange(len(targets)), min(FINER_COMPARISONS, logits.shape[1] - 1)
    distance = (logits - main[:, None]).detach().abs()
    distance[rows, torch.tensor(targets)] = -1.0  # the explained class comes first, then the most similar ones
    similar = distance.argsort(dim=1, stable=True)[:, 1 : 1 + comparisons]
    weights = torch.softmax(logits, dim=1).gather(1, similar)
    contrast = main[:, None] - FINER_ALPHA * logits.gather(1, similar)
    return (weights * contrast).sum(dim=1) / (weights.sum(dim=1) + 1e-9)


@register_method(
    "finercam",
    label="Finer-CAM",
    paper="Zhang et al., CVPR 2025, arXiv:2501.11309",
    family="gradient",
    cost="1 forward + 1 backward",
    score=_finer_scores,
)
def _finercam(e: LayerEvidence) -> torch.Tensor:
    """Finer-CAM: Grad-CAM of the explained class's logit against its most similar classes (``_finer_scores``), so
    the map shows what tells class k apart from the classes it is most easily confused with (Zhang et al. 2025), as
    pytorch-grad-cam's ``FinerCAM`` with its defaults (base method Grad-CAM, three comparisons, alpha 1)."""
    return _gradcam(e)


@register_method(
    "eigencam",
    label="Eigen-CAM",
    paper="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299",
    family="activation",
    cost="1 forward + an SVD per image",
)
def _eigencam(e: LayerEvidence) -> torch.Tensor:
    """Eigen-CAM: the activations projected on their first principal component (``eigen_projection``)."""
    return eigen_projection(e.activations)


def eigen_projection(acts: torch.Tensor) -> torch.Tensor:
    """First principal component of each image's activations, ``(B, C, h, w) -> (B, h, w)``.

    The activations are centred per channel (as pytorch-grad-cam does) and projected on the first right singular
    vector. An SVD's sign is arbitrary; we fix it so the projection correlates positively with the channel-mean
    activation, so strongly activated regions come out positive. pytorch-grad-cam leaves the sign as LAPACK returns it.

    Raises ``InputError`` unless ``acts`` is a non-empty float ``(B, C, h, w)`` tensor with data (not ``meta``).
    """
    require_tensor(acts, "acts", ndim=4, floating=True)
    dtype = working_dtype(acts.dtype)
    acts = torch.nan_to_num(acts.double(), nan=0.0)
    out = []
    for image_acts in acts:
        flat = image_acts.flatten(1).T  # (h*w, C)
        centred = flat - flat.mean(dim=0)
        _, _, vh = torch.linalg.svd(centred, full_matrices=False)
        out.append(_oriented(centred @ vh[0], flat).reshape(image_acts.shape[1:]))
    return torch.stack(out).to(dtype)


def _oriented(projection: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    """``projection`` (h*w,) or its negative, whichever correlates non-negatively with the channel-mean activation of
    ``flat`` (h*w, C): a principal component's sign is arbitrary; strongly activated regions should be positive."""
    mean_act = flat.mean(dim=1)
    return -projection if torch.dot(projection - projection.mean(), mean_act - mean_act.mean()) < 0 else projection


KPCA_DENSE_MAX = 200  # positions; above this, one eigenpair by ARPACK instead of a full eigh (as sklearn's KernelPCA)
# KPCA-CAM's (h w) x (h w) float64 kernel may take at most this many bytes (the computation holds about three such
# matrices at once): 512 MiB allows 8,192 positions (e.g. 90 x 90); a 112 x 112 layer (12,544 positions, 1.26 GB per
# matrix) is refused before any kernel is built.
KPCA_MAX_KERNEL_BYTES = 512 * 2**20


def _kpca_refusal(positions: int) -> str | None:
    """Why KPCA-CAM refuses a layer of ``positions = h * w`` positions (its kernel over the memory cap), or None."""
    size = 8 * positions**2
    if size <= KPCA_MAX_KERNEL_BYTES:
        return None
    cap = int((KPCA_MAX_KERNEL_BYTES / 8) ** 0.5)
    return (
        f"KPCA-CAM builds a {positions:,} x {positions:,} kernel matrix for this layer ({size / 2**30:.1f} GiB in "
        f"float64, about three times that while it works), over its {KPCA_MAX_KERNEL_BYTES // 2**20} MiB cap "
        f"(camlib.cam.KPCA_MAX_KERNEL_BYTES): pick a deeper layer with at most {cap:,} positions, or use Eigen-CAM"
    )


@register_method(
    "kpcacam",
    label="KPCA-CAM",
    paper="Karmani et al., 2024, arXiv:2410.00267",
    family="activation",
    cost="1 forward + a kernel eigenproblem per image, (h w) x (h w)",
    refuse=lambda _model, _module, layout: (
        None if layout is None or not layout.height else _kpca_refusal(layout.height * layout.width)
    ),
)
def _kpcacam(e: LayerEvidence) -> torch.Tensor:
    """KPCA-CAM: the activations projected on their first kernel principal component (Karmani et al. 2024), with
    pytorch-grad-cam's default sigmoid kernel ``k(a, b) = tanh(a . b / C + 1)`` on the channel-centred activations
    of each position (``_kernel_projection``).

    Raises ``MethodError`` before building the kernel when its ``(h w)^2`` float64 entries exceed
    ``KPCA_MAX_KERNEL_BYTES`` (``MethodSpec.refusal`` says so from the layer's layout, before any forward)."""
    reason = _kpca_refusal(e.activations.shape[2] * e.activations.shape[3])
    if reason is not None:
        raise MethodError(reason)
    return _kernel_projection(e.activations)


def _kernel_projection(acts: torch.Tensor) -> torch.Tensor:
    """First kernel principal component of each image's activations, ``(B, C, h, w) -> (B, h, w)``, in float64.

    As sklearn's ``KernelPCA(n_components=1, kernel="sigmoid")`` that pytorch-grad-cam calls: the ``(hw, hw)`` kernel
    of the channel-centred positions, centred in feature space, its top eigenpair ``(lambda, v)`` (largest algebraic
    eigenvalue), the projection ``v * sqrt(lambda)``. Eigenvalues at rounding level (no variation) give zeros. The
    sign is fixed as Eigen-CAM's (``_oriented``); sklearn makes the eigenvector's largest entry positive instead.
    """
    dtype = working_dtype(acts.dtype)
    acts = torch.nan_to_num(acts.double(), nan=0.0)
    out = []
    for image_acts in acts:
        flat = image_acts.flatten(1).T  # (h*w, C)
        centred = flat - flat.mean(dim=0)
        kernel = torch.tanh(centred @ centred.T / flat.shape[1] + 1.0)
        noise = 100 * len(kernel) * torch.finfo(kernel.dtype).eps * float(kernel.abs().max())
        kernel = kernel - kernel.mean(dim=0, keepdim=True) - kernel.mean(dim=1, keepdim=True) + kernel.mean()
        value, vector = _top_eigenpair(kernel)
        projection = vector * value.sqrt() if float(value) > noise else torch.zeros_like(vector)
        out.append(_oriented(projection, flat).reshape(image_acts.shape[1:]))
    return torch.stack(out).to(dtype)


def _top_eigenpair(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The largest eigenvalue of a symmetric float64 matrix and a unit eigenvector: a full ``eigh`` up to
    ``KPCA_DENSE_MAX`` rows, else ARPACK (Lanczos, ``tol=0``: to machine precision) from a fixed start vector."""
    if len(matrix) <= KPCA_DENSE_MAX:
        values, vectors = torch.linalg.eigh(matrix)
        return values[-1], vectors[:, -1]
    start = 2 * torch.rand(len(matrix), generator=torch.Generator().manual_seed(0), dtype=torch.float64) - 1
    from scipy.sparse.linalg import eigsh  # imported here: 0.25 s, and only KPCA-CAM's large kernels need it

    values, vectors = eigsh(matrix.cpu().numpy(), k=1, which="LA", tol=0, v0=start.numpy())
    return torch.from_numpy(values)[0].to(matrix.device), torch.from_numpy(vectors[:, 0]).to(matrix.device)


FEM_K = 2.0  # pytorch-grad-cam 1.5.7's FEM default: a position is salient above mean + k std of its channel


@register_method(
    "fem",
    label="FEM",
    paper="Fuad et al., IPTA 2020, doi:10.1109/IPTA50016.2020.9286629",
    family="activation",
    cost="1 forward",
)
def _fem(e: LayerEvidence) -> torch.Tensor:
    """FEM (Feature Explanation Method): ``sum_c w_c A_c`` with ``w_c`` the share of channel ``c``'s positions whose
    activation exceeds ``mean_ij(A_c) + k std_ij(A_c)`` (population std, ``k = FEM_K``): channels with a few strongly
    activated positions weigh most (Fuad et al. 2020's k-sigma rule), as pytorch-grad-cam's ``FEM``. No gradients, no
    class: the map is the same for every class. Like pytorch-grad-cam's, it ignores ``eigen_smooth``."""
    acts = e.activations
    threshold = acts.mean(dim=(2, 3), keepdim=True) + FEM_K * acts.std(dim=(2, 3), correction=0, keepdim=True)
    return _weighted_sum((acts > threshold).to(acts.dtype).mean(dim=(2, 3)), acts)


@register_method(
    "gradcam_elementwise",
    label="Grad-CAM element-wise",
    paper="Gildenblat et al., pytorch-grad-cam (2021), after Draelos & Carin, arXiv:2011.08891",
    family="gradient",
    cost="1 forward + 1 backward",
)
def _gradcam_elementwise(e: LayerEvidence) -> torch.Tensor:
    """Grad-CAM element-wise: ``sum_c relu(g_c * A_c)``, HiResCAM with the ReLU on each channel's product before the
    channel sum (pytorch-grad-cam's GradCAMElementWise), so negative products never cancel positive ones."""
    return _channel_sum(torch.relu(e.gradients * e.activations), e)


@register_method(
    "eigengradcam",
    label="Eigen-Grad-CAM",
    paper="Muhammad & Yeasin, IJCNN 2020, arXiv:2008.00299 (on gradients x activations)",
    family="gradient",
    cost="1 forward + 1 backward + an SVD per image",
)
def _eigengradcam(e: LayerEvidence) -> torch.Tensor:
    """Eigen-Grad-CAM: the first principal component of ``g * A`` (``eigen_projection``), i.e. Eigen-CAM (Muhammad &
    Yeasin 2020) on the gradient-weighted activations, as pytorch-grad-cam's EigenGradCAM. The sign is fixed as for
    Eigen-CAM: the map correlates positively with ``mean_c g_c * A_c`` (HiResCAM's map up to scale)."""
    return eigen_projection(e.gradients * e.activations)


@register_method(
    "scorecam",
    label="Score-CAM",
    paper="Wang et al., CVPR-W 2020, arXiv:1910.01279",
    family="perturbation",
    cost="1 forward + one forward per channel (slow)",
)
def _scorecam(e: LayerEvidence) -> torch.Tensor:
    """Score-CAM: ``sum_c w_c A_c`` with ``w = softmax_c(score(x * norm(up(A_c))))`` (Wang et al. 2020, eq. 4-6),
    numerically as pytorch-grad-cam: masks upsampled with ``align_corners=True``, min-max normalised with 1e-8."""
    acts, x = e.activations, e.x
    size = x.shape[-2:]
    raws = []
    for b, target in enumerate(e.targets):
        scores = []
        for start in range(0, acts.shape[1], e.batch_size):
            chunk = acts[b : b + 1, start : start + e.batch_size]
            up = F.interpolate(chunk, size=size, mode="bilinear", align_corners=True)[0]  # (c, H, W)
            flat = up.flatten(1)
            mins = flat.min(dim=1).values[:, None, None]
            maxs = flat.max(dim=1).values[:, None, None]
            masks = (up - mins) / (maxs - mins + 1e-8)
            scores.append(target_scores([target] * len(masks), e.model((x[b][None] * masks[:, None]).to(x.dtype))))
            e.progress.step()
        raws.append(torch.softmax(torch.cat(scores).to(acts.dtype), dim=-1))
    return _weighted_sum(torch.stack(raws), acts, e)


@register_method(
    "ablationcam",
    label="Ablation-CAM",
    paper="Desai & Ramaswamy, WACV 2020, doi:10.1109/WACV45572.2020.9093360",
    family="perturbation",
    cost="1 forward + one forward per channel (slow)",
)
def _ablationcam(e: LayerEvidence) -> torch.Tensor:
    """Ablation-CAM: ``sum_c w_c A_c`` with ``w_c = (y - y_c) / y``, ``y`` the explained score and ``y_c`` the score
    with channel ``c`` of the layer's output set to zero (Desai & Ramaswamy 2020, eq. 3-4). ``batch_size`` ablated
    copies of an image per forward, as pytorch-grad-cam (its default batch is 32, like ``compute_cams``).

    pytorch-grad-cam 1.5.7 zeroes a channel only when the layer's minimum is exactly 0 (after a ReLU); otherwise it
    sets it to ``min - 1e7``, and since it re-reads the minimum after each ablation in a batch, the k-th channel of a
    batch to ``min - k * 1e7`` (a value that depends on the batch). camlib zeroes, as the paper; the two agree
    wherever the layer's minimum is 0. A score of exactly 0 leaves the ratio undefined: then ``w_c = y - y_c``."""
    out, dim = e.output, e.channel_dim
    channels = out.shape[dim]
    repeat = [1] * (out.dim() - 1)
    weights = []
    for b, target in enumerate(e.targets):
        ablated = []
        for start in range(0, channels, e.batch_size):
            index = torch.arange(start, min(start + e.batch_size, channels), device=out.device)
            batch = out[b : b + 1].repeat(len(index), *repeat)
            batch.movedim(dim, 1)[torch.arange(len(index), device=out.device), index] = 0  # copy k drops channel k
            inputs = e.x[b : b + 1].repeat(len(index), 1, 1, 1)
            outputs = e.forward_with_output(inputs, batch)
            ablated.append(target_scores([target] * len(index), outputs).to(e.activations.dtype))
            e.progress.step()
        score = e.scores[b]
        drop = score - torch.cat(ablated)
        weights.append(drop / score if bool(score != 0) else drop)
    return _weighted_sum(torch.stack(weights), e.activations, e)


SSCAM_SAMPLES = 35  # torch-cam 0.5.0's SSCAM defaults: noisy copies of each mask
SSCAM_STD = 2.0  # and the standard deviation of the Gaussian noise added to masks in [0, 1]
ISCAM_SAMPLES = 10  # torch-cam 0.5.0's ISCAM default: integration steps


def _score_masks(acts: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """torch-cam's Score-CAM masks of one image: each channel of ``acts`` ``(C, h, w)`` min-max normalised at feature
    resolution, ``(a - min) / (max(a - min) + 1e-8)``, then bilinearly upsampled to ``size`` (``align_corners=False``):
    ``(C, H, W)``. (pytorch-grad-cam's Score-CAM upsamples first, with ``align_corners=True``.)"""
    shifted = acts - acts.flatten(1).min(dim=1).values[:, None, None]
    masks = shifted / (shifted.flatten(1).max(dim=1).values[:, None, None] + 1e-8)
    return F.interpolate(masks[None], size=size, mode="bilinear", align_corners=False)[0]


def _masked_score_gains(e: LayerEvidence, b: int, masks: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """``score(scale * (x_b * mask_c)) - score(x_b)`` for every mask ``c`` of ``masks`` ``(C, H, W)``, ``batch_size``
    masked copies per forward, ``progress.step()`` after each (it may raise to cancel)."""
    target, x = e.targets[b], e.x[b]
    gains = []
    for start in range(0, len(masks), e.batch_size):
        inputs = x[None] * masks[start : start + e.batch_size, None]
        inputs = (inputs if scale == 1.0 else scale * inputs).to(x.dtype)  # the model's dtype; masks are upcast
        gains.append(target_scores([target] * len(inputs), e.model(inputs)).to(masks.dtype) - e.scores[b])
        e.progress.step()
    return torch.cat(gains)


@register_method(
    "sscam",
    label="SS-CAM",
    paper="Wang et al., 2020, arXiv:2006.14255",
    family="perturbation",
    cost=f"1 forward + {SSCAM_SAMPLES} forwards per channel (very slow)",
    samples=SSCAM_SAMPLES,
    stochastic=True,
)
def _sscam(e: LayerEvidence) -> torch.Tensor:
    """SS-CAM (Smoothed Score-CAM): ``sum_c w_c A_c`` with ``w = softmax_c(mean_i score(x * (M_c + d_i)) - score(x))``,
    ``M_c`` channel ``c``'s Score-CAM mask (``_score_masks``) and ``d_i ~ N(0, SSCAM_STD^2)`` per pixel, ``n_samples``
    noisy copies (Wang et al. 2020, smoothing the masks; torch-cam 0.5.0's ``SSCAM`` with its defaults, 35 samples,
    std 2). The score is the explained class's logit; subtracting ``score(x)`` leaves the softmax unchanged.

    Noise: for each image (and layer) a ``torch.Generator`` seeded with ``seed``; sample ``i`` is
    ``SSCAM_STD * randn(C, H, W)`` from it, drawn in float32, so every image of a batch gets the same draws and the
    batch size does not change them. Equal to torch-cam's ``SSCAM`` given those draws (tests/test_cam_methods.py).
    Cost: ``n_samples * C`` extra forwards per image, in batches of ``batch_size``."""
    acts, size = e.activations, (int(e.x.shape[-2]), int(e.x.shape[-1]))
    raws = []
    for b in range(len(e.targets)):
        masks = _score_masks(acts[b], size)
        generator = torch.Generator().manual_seed(e.seed)
        total = torch.zeros(len(masks), dtype=e.scores.dtype, device=masks.device)
        for _ in range(e.n_samples):
            noise = SSCAM_STD * torch.randn(masks.shape, generator=generator, dtype=torch.float32)
            total += _masked_score_gains(e, b, masks + noise.to(masks))
        raws.append(torch.softmax(total / e.n_samples, dim=0).to(acts.dtype))
    return _weighted_sum(torch.stack(raws), acts, e)


@register_method(
    "iscam",
    label="IS-CAM",
    paper="Naidu et al., 2020, arXiv:2010.03023",
    family="perturbation",
    cost=f"1 forward + {ISCAM_SAMPLES} forwards per channel (very slow)",
    samples=ISCAM_SAMPLES,
)
def _iscam(e: LayerEvidence) -> torch.Tensor:
    """IS-CAM (Integrated Score-CAM): ``sum_c w_c A_c`` with
    ``w = softmax_c(mean_i score(s_i * (x * M_c)) - score(x))``, ``s_i = sum_{j<=i} j / N`` for ``i = 1..N``
    (``N = n_samples``) and ``M_c`` channel ``c``'s Score-CAM mask (``_score_masks``): Score-CAM's scores integrated
    along a path of scaled masks (Naidu et al. 2020), as torch-cam 0.5.0's ``ISCAM`` (10 steps by default), whose
    scale accumulates ``j / N`` and so exceeds 1 after the first steps. Deterministic: no random draws, ``seed`` is
    not used. Cost: ``n_samples * C`` extra forwards per image, in batches of ``batch_size``."""
    acts, size = e.activations, (int(e.x.shape[-2]), int(e.x.shape[-1]))
    raws = []
    for b in range(len(e.targets)):
        masks = _score_masks(acts[b], size)
        total = torch.zeros(len(masks), dtype=e.scores.dtype, device=masks.device)
        scale = 0.0
        for step in range(e.n_samples):
            scale += (step + 1) / e.n_samples
            total += _masked_score_gains(e, b, masks, scale)
        raws.append(torch.softmax(total / e.n_samples, dim=0).to(acts.dtype))
    return _weighted_sum(torch.stack(raws), acts, e)


SMOOTH_GRADCAMPP_SAMPLES = 4  # torch-cam 0.5.0's SmoothGradCAMpp defaults: noisy copies of the input
SMOOTH_GRADCAMPP_STD = 0.3  # and the standard deviation of the Gaussian noise added to the (preprocessed) input


@register_method(
    "smoothgradcam++",
    label="Smooth Grad-CAM++",
    paper="Omeiza et al., 2019, arXiv:1908.01224",
    family="perturbation",
    cost=f"1 forward + {SMOOTH_GRADCAMPP_SAMPLES} forwards and backwards of noisy inputs per layer",
    samples=SMOOTH_GRADCAMPP_SAMPLES,
    per_channel=False,
    stochastic=True,
)
def _smooth_gradcam_plus_plus(e: LayerEvidence) -> torch.Tensor:
    """Smooth Grad-CAM++: Grad-CAM++ with its derivatives averaged over noisy copies of the input (SmoothGrad;
    Omeiza et al. 2019): ``sum_c w_c A_c`` with ``w_c = sum_ij alpha_cij relu(G1_cij)``,
    ``alpha = G2 / (2 G2 + sum_ij(A_c) G3)`` (1e-6 in the denominator, 0 where ``G2 = 0``) and
    ``Gp = mean_i g(x + d_i)^p``, ``g`` the gradient of the explained logit with respect to the layer's output,
    ``d_i ~ N(0, SMOOTH_GRADCAMPP_STD^2)`` per input value, ``n_samples`` copies; ``A`` are the activations of the
    clean input. With one sample and no noise it is camlib's (pytorch-grad-cam's) Grad-CAM++.

    torch-cam 0.5.0's ``SmoothGradCAMpp`` differs in three ways, so camlib does not equal it (tests/test_cam_methods.py
    shows both): it takes ``relu`` of the last noisy copy's gradients instead of their mean, its map multiplies the
    last noisy copy's activations instead of the clean input's, and its denominator is ``sum_ij(A G3)`` instead of
    ``sum_ij(A) G3`` (Grad-CAM++'s eq. 19).

    Noise: for each image (and layer) a ``torch.Generator`` seeded with ``seed``; sample ``i`` is
    ``SMOOTH_GRADCAMPP_STD * randn(C_in, H, W)`` from it, in float32 (the same draws for every image).
    Cost: ``n_samples`` forwards and backwards per image and layer, ``batch_size`` noisy copies per pass."""
    acts = e.activations
    raws = []
    for b, target in enumerate(e.targets):
        generator = torch.Generator().manual_seed(e.seed)
        noise = [
            SMOOTH_GRADCAMPP_STD * torch.randn(e.x.shape[1:], generator=generator, dtype=torch.float32)
            for _ in range(e.n_samples)
        ]
        moments = torch.zeros((3, *acts.shape[1:]), dtype=acts.dtype, device=acts.device)
        for start in range(0, e.n_samples, e.batch_size):
            draws = torch.stack(noise[start : start + e.batch_size]).to(e.x)
            _, grads = e.gradients_at(e.x[b] + draws, [target] * len(draws))
            moments += torch.stack([grads.sum(dim=0), (grads**2).sum(dim=0), (grads**3).sum(dim=0)]).to(acts)
            e.progress.step()
        mean_grad, grads_2, grads_3 = moments / e.n_samples
        sum_acts = acts[b].sum(dim=(1, 2), keepdim=True)
        alpha = grads_2 / (2 * grads_2 + sum_acts * grads_3 + 1e-6)
        alpha = torch.where(grads_2 != 0, alpha, torch.zeros_like(alpha))
        raws.append((alpha * torch.relu(mean_grad)).sum(dim=(1, 2)))
    return _weighted_sum(torch.stack(raws), acts, e)


SESS_SCALES = 12  # pytorch-grad-cam 1.5.7's SESS defaults: 12 scales, from the window size up in steps of
SESS_SCALE_STEP = 2 / 7  # 2/7 of the window (224, 288, ..., 928 px for a 224 px input)
SESS_BLUR_SIZE, SESS_BLUR_SIGMA = 11, 5.0  # and its final Gaussian blur (cv2.GaussianBlur((11, 11), 5))


@register_method(
    "sess",
    label="SESS (Grad-CAM, multi-scale)",
    paper="Tursun et al., ECCV 2022, arXiv:2207.01769",
    family="perturbation",
    cost=f"1 forward + {SESS_SCALES} scales x their patches x (1 forward + 1 forward and backward): ~122 patches "
    "at 224 px (very slow)",
    samples=SESS_SCALES,
    per_channel=False,
    forwards_per_sample=20,
    batched=False,
)
def _sess(e: LayerEvidence) -> torch.Tensor:
    """SESS (Saliency Enhancing with Scaling and Sliding): the image resized so its shorter side is each of
    ``n_samples`` scales (``window * (1 + i * SESS_SCALE_STEP)``, ``window = min(H, W)``), cut into ``window``-sized
    patches by a sliding window (stride ``window``, border windows shifted back inside), each patch's Grad-CAM map
    (camlib's, at the patch size) weighted by the patch's softmax score of the class over the best patch's, pasted back
    at its place and resized to the input, the positive values averaged per pixel over the patches that cover them,
    then a Gaussian blur (11 px, sigma 5) (Tursun et al. 2022), as pytorch-grad-cam 1.5.7's ``SESS`` with its
    defaults (base Grad-CAM, no pre-filtering, theta 0, mean fusion). Returns ``(B, H, W)``: the raw map is at the
    input size.

    Progress steps once per scale and image. Raises ``MethodError`` for token layers on a non-square input (the
    square patches change the patch grid's shape)."""
    height, width = int(e.x.shape[-2]), int(e.x.shape[-1])
    if e.layout is not None and e.layout.kind == "tokens" and height != width:
        raise MethodError("SESS cuts square patches; on a token layer it needs a square input")
    from torchvision.transforms.functional import resize  # imported here: torchvision's import costs 1.3 s

    if e.logits is None or e.logits.dim() != 2:
        raise MethodError(
            "SESS weighs each patch by the softmax of the model's class scores (as pytorch-grad-cam's default), so it "
            "needs a model that returns (B, num_classes) logits; use Grad-CAM with targets= for other outputs"
        )
    window = min(height, width)
    step = int(round(window * SESS_SCALE_STEP))
    scales = [window + step * i for i in range(e.n_samples)]
    raws = []
    for b, target in enumerate(e.targets):
        patches: list[list[tuple[torch.Tensor, tuple[int, int, int, int]]]] = []
        for scale in scales:
            scaled = resize(_upcast(e.x[b : b + 1]), scale).to(e.x.dtype)
            sh, sw = int(scaled.shape[-2]), int(scaled.shape[-1])
            patches.append(
                [
                    (scaled[0, :, y : y + window, x : x + window], (x, y, sw, sh))
                    for y in _window_starts(sh, window)
                    for x in _window_starts(sw, window)
                ]
            )
        every = torch.stack([patch for scale in patches for patch, _ in scale])
        scores = torch.cat(
            [
                target_scores(
                    [target] * len(every[start : start + e.batch_size]),
                    torch.softmax(_upcast(e.model(every[start : start + e.batch_size])), dim=-1),
                )
                for start in range(0, len(every), e.batch_size)
            ]
        ).clamp(min=0)
        best = scores.max()
        weights = scores / best if bool(best > 0) else torch.ones_like(scores)
        total = torch.zeros((height, width), dtype=torch.float32, device=e.x.device)
        counts = torch.zeros_like(total)
        first = 0
        for scale in patches:
            for start in range(0, len(scale), e.batch_size):
                chunk = scale[start : start + e.batch_size]
                acts, grads = e.gradients_at(torch.stack([patch for patch, _ in chunk]), [target] * len(chunk))
                maps, _ = _finish(_weighted_sum(grads.mean(dim=(2, 3)), acts, e).float(), (window, window))
                for k, (cam, (x, y, sw, sh)) in enumerate(zip(maps, (c for _, c in chunk), strict=True)):
                    canvas = torch.zeros((sh, sw), dtype=torch.float32, device=cam.device)
                    canvas[y : y + window, x : x + window] = cam * weights[first + start + k].float()
                    # cv2's resize, as pytorch-grad-cam: the fusion averages each pixel over the patches whose
                    # resized map is > 0 there, so the resize's rounding next to exact zeros decides the counts
                    # (torch's bilinear differs from cv2's by ~1e-5 there, which changed 19% of a DeiT map).
                    pasted = torch.from_numpy(cv2.resize(canvas.cpu().numpy(), (width, height))).to(total.device)
                    positive = pasted > 0
                    total += torch.where(positive, pasted, 0.0)
                    counts += positive
            first += len(scale)
            e.progress.step()
        fused = torch.where(counts > 0, total / counts.clamp(min=1), 0.0)
        raws.append(_gaussian_blur(fused, SESS_BLUR_SIZE, SESS_BLUR_SIGMA))
    return torch.stack(raws)


def _window_starts(length: int, window: int) -> list[int]:
    """The starts of ``window``-sized windows with stride ``window`` along ``length``, the last shifted back inside
    (pytorch-grad-cam's ``window_starts``)."""
    starts = []
    for start in range(0, length, window):
        if start + window >= length:
            starts.append(max(length - window, 0))
            break
        starts.append(start)
    return starts


def _gaussian_blur(image: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """``cv2.GaussianBlur(image, (size, size), sigma)`` of an ``(H, W)`` map: a separable, normalised Gaussian kernel
    and reflected borders without repeating the edge (``BORDER_REFLECT_101``, torch's "reflect")."""
    offsets = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    kernel = torch.exp(-(offsets**2) / (2 * sigma**2))
    kernel = (kernel / kernel.sum()).to(image)
    padded = F.pad(image[None, None], (size // 2,) * 4, mode="reflect")
    rows = F.conv2d(padded, kernel.view(1, 1, 1, size))
    return F.conv2d(rows, kernel.view(1, 1, size, 1))[0, 0]


def _forward_with_output(
    model: nn.Module, module: nn.Module, inputs: torch.Tensor, output: torch.Tensor
) -> torch.Tensor:
    """``model(inputs)`` with ``module``'s output replaced by ``output``; the hook acts for this thread only."""
    mine = owned_by_this_thread()
    handle = module.register_forward_hook(lambda _m, _i, _o: output if mine() else None)
    try:
        return model(inputs)
    finally:
        handle.remove()


RANDOM_CAM_SEED = 0  # compute_cams' default seed: Random-CAM's weights are the same for every image, layer and call


@register_method(
    "randomcam",
    label="Random-CAM (baseline)",
    paper="a sanity-check baseline (pytorch-grad-cam's RandomCAM); cf. Adebayo et al., NeurIPS 2018, arXiv:1810.03292",
    family="activation",
    cost="1 forward",
    stochastic=True,
)
def _randomcam(e: LayerEvidence) -> torch.Tensor:
    """Random-CAM: ``sum_c w_c A_c`` with ``w_c ~ U(-1, 1)``, weights that know nothing of the class or the model: a
    map that looks as convincing as a method's says little about that method (Adebayo et al. 2018's sanity checks).

    pytorch-grad-cam draws fresh weights per image from numpy's global generator; camlib draws them from a
    ``torch.Generator`` seeded with ``compute_cams(seed=...)`` (default ``RANDOM_CAM_SEED``; library code never seeds or
    reads global generators), the same ``C`` draws for every image, so a map depends only on its own image, layer and
    seed."""
    generator = torch.Generator().manual_seed(e.seed)
    acts = e.activations
    weights = 2 * torch.rand(acts.shape[1], generator=generator, dtype=torch.float64) - 1
    return _weighted_sum(weights.to(device=acts.device, dtype=acts.dtype).expand(len(acts), -1), acts, e)


@register_method(
    "legrad",
    label="LeGrad (ViT)",
    paper="Bousselham et al., 2024, arXiv:2404.03214",
    family="activation",
    cost="1 forward + 1 forward and backward per layer (its own pass, with attention hooks)",
    refuse=lambda model, module, layout: _legrad_refusal(model, module, layout),
)
def _legrad(e: LayerEvidence) -> torch.Tensor:
    """LeGrad: ``mean_{heads, queries} relu(d s_k / d P)`` over the patch keys, ``P`` the block's post-softmax
    attention probabilities ``(B, heads, N, N)`` and ``s_k`` the target's score of the class scores read from the
    block's own output, ``heads(ln(mean_tokens(block output)))`` (Bousselham et al. 2024), as torch-cam 0.5.0's
    ``LeGrad`` on a torchvision ``VisionTransformer``: leading (class) keys dropped, the rest on the patch grid.
    Attention values are not multiplied in. camlib returns each block's map (torch-cam averages the blocks of one call).

    The layer must be a transformer block that outputs tokens and has an ``nn.MultiheadAttention`` child (torchvision
    ViT's ``encoder.layers.encoder_layer_K``); the model must have ``encoder.ln`` and ``heads`` (the score
    projection). Its own forward runs with this thread's hooks that ask the attention for per-head weights and
    recompute its output from them, so the gradient reaches them; then one ``torch.autograd.grad``.

    Raises ``MethodError`` for any other layer or model (a CNN feature map, timm's fused attention)."""
    reason = _legrad_refusal(e.model, e.module, e.layout)
    if reason is not None:
        raise MethodError(reason)
    attention = _block_attention(e.module)
    mine, store = owned_by_this_thread(), {}

    def ask_weights(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        return (args, {**kwargs, "need_weights": True, "average_attn_weights": False}) if mine() else None

    def replay(module: nn.MultiheadAttention, args: tuple, _kwargs: dict, output: tuple) -> tuple | None:
        if not mine():
            return None
        probs, value = output[1], args[2]
        batch, length, dim = value.shape
        bias = None if module.in_proj_bias is None else module.in_proj_bias[2 * dim :]
        value = F.linear(value, module.in_proj_weight[2 * dim :], bias)
        value = value.reshape(batch, length, module.num_heads, dim // module.num_heads).transpose(1, 2)
        merged = torch.matmul(probs, value).transpose(1, 2).reshape(batch, probs.shape[-2], dim)
        store["probs"] = probs
        return module.out_proj(merged), None

    def score(_m: nn.Module, _i: object, output: torch.Tensor) -> None:
        if mine():
            store["logits"] = e.model.heads(e.model.encoder.ln(output.mean(dim=1)))

    handles = [
        attention.register_forward_pre_hook(ask_weights, with_kwargs=True),
        attention.register_forward_hook(replay, with_kwargs=True),
        e.module.register_forward_hook(score),
    ]
    try:
        with torch.inference_mode(False), torch.enable_grad():
            e.model(e.x.detach().clone().requires_grad_(True))
            logits = store["logits"]
            selected = target_scores(e.targets, logits)
            (grad,) = torch.autograd.grad(selected.sum(), store["probs"])
    finally:
        for handle in handles:
            handle.remove()
    relevance = torch.relu(_upcast(grad)).mean(dim=(1, 2))[:, e.layout.prefix_tokens :]
    return relevance.reshape(len(relevance), e.layout.height, e.layout.width).detach()


def _block_attention(module: nn.Module | None) -> nn.MultiheadAttention | None:
    """A transformer block's self-attention: its ``self_attention`` child, else its only ``nn.MultiheadAttention``
    child."""
    if module is None:
        return None
    named = getattr(module, "self_attention", None)
    if isinstance(named, nn.MultiheadAttention):
        return named
    children = [child for child in module.children() if isinstance(child, nn.MultiheadAttention)]
    return children[0] if len(children) == 1 else None


def _legrad_refusal(model: nn.Module, module: nn.Module | None, layout: Layout | None) -> str | None:
    """Why LeGrad cannot explain this layer of this model, or None where it can."""
    if layout is not None and layout.kind != "tokens":
        return (
            "LeGrad explains vision-transformer blocks, whose output is tokens; this layer outputs a "
            f"{layout.label} feature map: use Grad-CAM or another CAM on it"
        )
    attention = _block_attention(module)
    if attention is None:
        return (
            "LeGrad needs a transformer block with an nn.MultiheadAttention child (torchvision ViT's "
            "encoder.layers.encoder_layer_K); pick such a block"
        )
    if not attention.batch_first or attention.in_proj_weight is None or attention.bias_k is not None:
        return "LeGrad needs batch-first self-attention with packed Q/K/V projections and no added key/value tokens"
    encoder = getattr(model, "encoder", None)
    if not isinstance(getattr(encoder, "ln", None), nn.Module) or not isinstance(
        getattr(model, "heads", None), nn.Module
    ):
        return "LeGrad reads each block's class scores through the model's encoder.ln and heads (a torchvision ViT)"
    return None


def _cam_refusal(model: nn.Module, _module: nn.Module, layout: Layout | None) -> str | None:
    """Why CAM cannot explain a layer, from the structure: no ``nn.Linear`` taking the layer's channels, or tokens
    with a class token (such models classify from that token, not from the average of the patches)."""
    use = "use Grad-CAM, which equals CAM where CAM is defined"
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        return f"CAM needs a classifier that is one Linear layer on the global average of a feature map; {use}"
    if layout is not None and layout.kind == "tokens" and layout.prefix_tokens > 0:
        return f"CAM needs the global average of the layer; this model classifies from its class token: {use}"
    if layout is not None and layout.channels and all(m.in_features != layout.channels for m in linears):
        return (
            f"CAM needs the layer whose global average feeds the classifier; this layer has {layout.channels} "
            "channels and no Linear layer of the model takes that many: pick the last feature layer before the "
            f"global pooling, or {use}"
        )
    return None


@register_method(
    "cam",
    label="CAM",
    paper="Zhou et al., CVPR 2016, arXiv:1512.04150",
    family="activation",
    cost="1 forward",
    refuse=_cam_refusal,
)
def _cam(e: LayerEvidence) -> torch.Tensor:
    """CAM: ``sum_c W_kc A_c`` with ``W_k`` the explained class's row of the classifier (Zhou et al. 2016, eq. 1-2).

    Defined only where the logits are one ``nn.Linear`` applied to the global average of this layer's output
    (ResNet's ``layer4``, EfficientNet's last conv, Swin's final norm). That is checked on the numbers: the Linear
    layer used is the one that maps this layer's channel means to the model's logits (torch-cam instead takes the
    first ``nn.Linear`` in ``named_modules()`` without a check). On such models Grad-CAM's weights are ``W_k / (h w)``
    and the two maps are equal.

    Raises ``MethodError`` when no Linear layer of the model does that (another layer, or a model that ends with an
    MLP, a norm after the pooling, or a class token)."""
    classes = _logit_classes("CAM", e.logits, e.targets)
    return _weighted_sum(_gap_classifier(e)[classes], e.activations, e)


def _gap_classifier(e: LayerEvidence) -> torch.Tensor:
    """The ``(num_classes, C)`` weight of the ``nn.Linear`` whose output on this layer's channel means is the logits."""
    pooled = e.activations.mean(dim=(2, 3))
    logits = e.logits.detach()
    # The model's own rounding (its dtype's, not the upcast logits') bounds how far its logits may be from ours.
    precision = e.output.dtype if e.output is not None else logits.dtype
    tolerance = torch.finfo(precision).eps ** 0.5 * max(float(logits.abs().max()), 1.0)
    for module in e.model.modules():
        if not isinstance(module, nn.Linear) or tuple(module.weight.shape) != (logits.shape[1], pooled.shape[1]):
            continue
        bias = None if module.bias is None else module.bias.to(pooled.dtype)
        predicted = F.linear(pooled, module.weight.to(pooled.dtype), bias)
        if float((predicted - logits).abs().max()) <= tolerance:
            return module.weight.detach().to(e.activations.dtype)
    raise MethodError(
        f"CAM needs a model whose logits are a Linear layer applied to the global average of the chosen layer "
        f"({pooled.shape[1]} channels), and this model has none: pick the last feature layer before the global "
        "pooling (e.g. ResNet's layer4), or use Grad-CAM, which equals CAM where CAM is defined"
    )


# --- validation ----------------------------------------------------------------------------------------------------
# --- validation ----------------------------------------------------------------------------------------------------


def _resolve_method(method: str) -> MethodSpec:
    spec = METHODS.get(method) if isinstance(method, str) else None
    if spec is None:
        raise MethodError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
    return spec


def _resolve_layers(model: nn.Module, layers: Sequence[str]) -> list[str]:
    if isinstance(layers, str):
        layers = [layers]
    if not isinstance(layers, Sequence) or isinstance(layers, bytes):
        raise LayerError(f"layers must be a list of dotted module names such as ['layer4'], got {layers!r}")
    names = list(dict.fromkeys(layers))
    if not names:
        raise LayerError("no target layer given; pick at least one layer")
    modules = dict(model.named_modules())
    for name in names:
        if not isinstance(name, str):
            raise LayerError(f"layers are dotted module names such as 'layer4', got a {type(name).__name__}")
        if not name or name not in modules:
            close = [n for n in modules if n and name.split(".")[-1] in n][:5]
            hint = f" Similar names: {', '.join(close)}." if close else ""
            raise LayerError(f"layer {name!r} is not a module of this model.{hint}")
    return names


def _resolve_layouts(layouts: Mapping[str, str] | None, names: list[str]) -> dict[str, str]:
    if layouts is None:
        return {}
    if not isinstance(layouts, Mapping):
        raise LayerError(f"layouts must map layer names to 'nchw', 'nhwc' or 'tokens:K', got {type(layouts).__name__}")
    unknown = [name for name in layouts if name not in names]
    if unknown:
        raise LayerError(f"layouts names layers that were not requested: {', '.join(map(str, unknown))}")
    return dict(layouts)


class _Capture:
    """Forward hooks that keep each layer's output as produced (values and graph node) and pass a copy on.

    The layer's output tensor is the node the gradient is taken with respect to; a snapshot of its values is kept; the
    rest of the network receives a copy, so later in-place ops (``ReLU(inplace=True)``, residual ``+=``, a parent's
    in-place op) change neither the values nor the gradient's target.

    With ``start_graph=True`` the forward pass starts with autograd off and the first requested layer to finish
    switches it on, returning a fresh leaf: the part of the network below the earliest layer runs as a plain no-grad
    forward and the backward pass covers only the part above it (the cost floor for these maps).
    """

    def __init__(self, *, start_graph: bool) -> None:
        self.start_graph = start_graph
        self.mine = owned_by_this_thread()  # other sessions' forwards pass through these hooks untouched
        self.outputs: dict[str, torch.Tensor] = {}
        self.values: dict[str, torch.Tensor] = {}
        self.calls: dict[str, int] = {}

    def hook(self, name: str) -> Callable[[nn.Module, object, object], torch.Tensor | None]:
        def save(_module: nn.Module, _inputs: object, output: object) -> torch.Tensor | None:
            if not self.mine():
                return None
            self.calls[name] = self.calls.get(name, 0) + 1
            if self.calls[name] > 1:
                return None
            if not isinstance(output, torch.Tensor) or output.dim() not in (3, 4) or not output.is_floating_point():
                shape = tuple(output.shape) if isinstance(output, torch.Tensor) else type(output).__name__
                raise LayerError(
                    f"layer {name!r} outputs {shape}; a CAM needs a spatial feature map: (B, C, H, W), "
                    "(B, H, W, C) or (B, N, C) tokens. Pick another layer (the layer list shows only those)."
                )
            if self.start_graph and not torch.is_grad_enabled():
                torch.set_grad_enabled(True)  # restored by the caller's set_grad_enabled context on exit
            if self.start_graph and not output.requires_grad:
                output = output.detach().requires_grad_(True)
            self.outputs[name] = output
            self.values[name] = output.detach().clone()
            return output.clone()

        return save


def _forward(
    model: nn.Module, x: torch.Tensor, names: list[str], *, start_graph: bool
) -> tuple[torch.Tensor, object, _Capture]:
    """One forward with temporary hooks on ``names`` (removed in ``finally``); the caller holds the model guard.

    Returns the input as the model saw it (its device and dtype; a copy, as a model may modify its input in place),
    the model's output as it returned it (a tensor, a dict, a list: the targets read it), and the capture of every
    layer's output. A tensor output must be finite; the targets' scores of any output are checked where they are
    taken (``camlib.targets.target_scores``).
    """
    first = next(model.parameters(), None)
    device = first.device if first is not None else x.device
    dtype = first.dtype if first is not None and first.is_floating_point() else x.dtype
    modules = dict(model.named_modules())
    capture = _Capture(start_graph=start_graph)
    handles = [modules[name].register_forward_hook(capture.hook(name)) for name in names]
    try:
        # inference_mode(False): works when the caller is inside inference_mode. Autograd starts off; for gradient
        # methods the first hooked layer switches it on (see _Capture), which also works with frozen parameters.
        with torch.inference_mode(False), torch.set_grad_enabled(False):
            xin = x.detach().to(device=device, dtype=dtype).clone()
            output = model(xin)
    finally:
        for handle in handles:
            handle.remove()
    if isinstance(output, torch.Tensor):
        require_finite("the logits" if output.dim() == 2 else "the model's output", output)
    for name in names:
        if name not in capture.outputs:
            raise LayerError(f"layer {name!r} was not run in the forward pass, so it has no map")
        if capture.calls[name] > 1:
            raise LayerError(
                f"layer {name!r} runs {capture.calls[name]} times per forward pass (a shared module); "
                "pick a layer that runs once"
            )
    return xin, output, capture


def _upcast_output(output: object) -> object:
    """The model's output with its floating tensors in ``working_dtype`` (dicts and lists walked; integer tensors,
    such as a detector's labels, and other values kept)."""
    if isinstance(output, torch.Tensor):
        return _upcast(output) if output.is_floating_point() else output
    if isinstance(output, Mapping):
        return {key: _upcast_output(value) for key, value in output.items()}
    if isinstance(output, (list, tuple)):
        return [_upcast_output(value) for value in output]
    return output


def _explained(targets: list[Target] | None, class_idx: int | Sequence[int] | None, output: object) -> list[Target]:
    """The targets of a call: those given, else ``ClassTarget`` of each image's class from ``class_idx`` and the
    ``(B, num_classes)`` logits (``camlib.contracts.resolve_classes``).

    Raises ``TargetError`` when no targets were given and the output is not ``(B, num_classes)`` logits."""
    if targets is not None:
        return targets
    if not isinstance(output, torch.Tensor) or output.dim() != 2:
        raise TargetError(
            f"the model returns {_describe_output(output)}, not (B, num_classes) logits, so there is no class to "
            "explain: pass targets=[...], one callable per image that turns its output into the explained score "
            "(camlib.targets)"
        )
    return class_targets(resolve_classes(class_idx, output))


def _gradients(
    logits: object,
    targets: list[Target],
    capture: _Capture,
    names: list[str],
    layouts: dict[str, Layout],
    *,
    scores: Score,
    second_order: bool = False,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """One ``torch.autograd.grad`` of the summed explained scores (``scores(output, targets)``) with respect to every
    layer's output as produced, each read as ``(B, C, h, w)``. Never ``backward()``: parameters' ``.grad`` stay
    untouched. With ``second_order``, also each layer's Hessian-vector product ``H A`` (the gradient of ``g . A``
    with ``A`` held fixed; zeros where the network above the layer is piecewise linear), else no products."""
    outputs = [capture.outputs[n] for n in names]
    products = {}
    with torch.inference_mode(False), torch.enable_grad():
        score = scores(_upcast_output(logits), targets).sum()  # softmax targets in float32 for a half-precision model
        if not score.requires_grad:
            raise LayerError(f"the layers {', '.join(names)} were not used to compute the selected class")
        grads = torch.autograd.grad(score, outputs, allow_unused=True, create_graph=second_order)
        for name, output, grad in zip(names, outputs, grads):
            if not second_order:
                break
            product = None
            if grad is not None and grad.requires_grad:
                try:
                    (product,) = torch.autograd.grad(
                        grad, output, grad_outputs=capture.values[name], retain_graph=True, allow_unused=True
                    )
                except RuntimeError as error:
                    if "not implemented" not in str(error):
                        raise
                    raise MethodError(
                        f"this method needs second derivatives of the score with respect to layer {name!r}, and "
                        f"PyTorch has none for an operation above it ({str(error).splitlines()[0]}); use Grad-CAM"
                    ) from error
            product = torch.zeros_like(output) if product is None else product.detach()
            require_finite(f"the Hessian-vector product of layer {name!r}", product)
            products[name] = _upcast(to_feature_map(product, layouts[name]))
    out = {}
    for name, grad in zip(names, grads):
        if grad is None:
            raise LayerError(f"layer {name!r} was not used to compute the selected class")
        require_finite(f"the gradients of layer {name!r}", grad)
        out[name] = _upcast(to_feature_map(grad.detach(), layouts[name]))
    return out, products


def _gradients_at(
    model: nn.Module, name: str, layout: Layout, inputs: torch.Tensor, targets: list[Target]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``name``'s activations on ``inputs`` and the gradients of the ``targets``' summed scores (one callable
    per input) with respect to them,
    both read as ``(N, C, h, w)``: one more forward with this thread's hook and one ``torch.autograd.grad``. Inputs of
    another size than the call's (SESS's patches) are read in the same layout kind (and number of leading tokens)."""
    _, logits, capture = _forward(model, inputs, [name], start_graph=True)
    shape = tuple(capture.values[name].shape)
    expected = {
        "nchw": (layout.channels, layout.height, layout.width),
        "nhwc": (layout.height, layout.width, layout.channels),
        "tokens": (layout.prefix_tokens + layout.height * layout.width, layout.channels),
    }[layout.kind]
    if shape[1:] != expected:
        spec = f"tokens:{layout.prefix_tokens}" if layout.kind == "tokens" else layout.kind
        layout = layout_from_spec(spec, shape, (int(inputs.shape[-2]), int(inputs.shape[-1])))
    grads, _ = _gradients(logits, targets, capture, [name], {name: layout}, scores=_target_scores)
    return _upcast(to_feature_map(capture.values[name], layout)), grads[name]


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


def compute_cams(  # noqa: PLR0913 (keyword-only options of the public entry point)
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    *,
    method: str = "gradcam",
    targets: Sequence[Target] | None = None,
    class_idx: int | Sequence[int] | None = None,
    scorecam_batch_size: int = 32,
    layouts: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    seed: int = RANDOM_CAM_SEED,
    n_samples: int | None = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    counterfactual: bool = False,
) -> CamResult:
    """Compute one CAM per requested layer from a single forward (and, for gradient methods, a single backward).

    Args:
        model: a classifier returning ``(B, num_classes)`` logits, or with ``targets`` any model (its output a
            tensor, a dict of batched tensors or a list of per-image outputs: ``camlib.targets``). It may be shared:
            its hooks act only for this thread (an eval-mode model is not locked; one with training-mode modules is
            locked for the call), its modules' ``training`` flags are restored, and its parameters' ``.grad`` and
            ``requires_grad`` untouched.
        x: float tensor ``(B, 3, H, W)``, already preprocessed for the model.
        layers: dotted module names (from ``model.named_modules()``), each run once per forward, whose output is a
            spatial feature map: ``(B, C, h, w)``, channels-last ``(B, h, w, C)`` or tokens ``(B, N, C)``.
        method: a key of ``METHODS``.
        targets: what to explain, one callable per image, ``targets[b](output_b) -> scalar tensor`` on image ``b``'s
            share of the model's output (pytorch-grad-cam 1.5.7's convention: its target objects work unchanged;
            camlib's own are in ``camlib.targets``); gradient methods differentiate the sum over the images. CAM and
            Finer-CAM need ``(B, num_classes)`` logits and class-logit targets, SESS needs class logits for its
            softmax (``MethodError`` otherwise). Not together with ``class_idx``.
        class_idx: the class to explain: ``None`` for each image's argmax, one int for all, or one per image; the
            shortcut for ``targets=[ClassTarget(k) for k in ...]`` (the same numbers).
        scorecam_batch_size: perturbed images per forward for the "perturbation" methods (Score-CAM's masked
            images, Ablation-CAM's ablated copies); it does not change the numbers.
        layouts: optional per-layer layout ("nchw", "nhwc" or "tokens:K"), needed only where the layout is ambiguous
            from the shapes and a second probe (``camlib.layers.layer_layout``); by default every layout is inferred.
        progress: optional ``callback(done, total)`` called after each extra forward batch of a "perturbation"
            method (Score-CAM, Ablation-CAM: ``total = B * ceil(C / scorecam_batch_size)`` summed over the layers).
            It may raise to cancel: the exception propagates with hooks removed, modes restored and the model's lock
            released.
        seed: seeds the ``torch.Generator`` of the methods that draw random numbers (SS-CAM's and Smooth
            Grad-CAM++'s noise, Random-CAM's weights): the same seed gives the same maps; global generators are never
            used or seeded.
        n_samples: noisy or integration samples of the sampling methods (SS-CAM, IS-CAM, Smooth Grad-CAM++), >= 1;
            None for each method's default (``METHODS[m].samples``). Other methods ignore it.
        aug_smooth: pytorch-grad-cam's test-time augmentation: the maps of the image and of its mirror image, each
            times 0.9, 1 and 1.1, mirrored back and averaged (``AUG_SMOOTH_VIEWS``; 6x the work). The class is the
            original image's unless given (pytorch-grad-cam re-picks each view's argmax). ``.maps`` is then that mean
            (in [0, 1], not re-normalised), ``.raw`` the mean of the views' raw maps mirrored back, ``.degenerate``
            True where every view's map is; ``finish_maps(raw)`` no longer gives ``.maps``.
        eigen_smooth: pytorch-grad-cam's ``eigen_smooth``: each method's per-channel terms (``w_c A_c``, or the
            element-wise products of HiResCAM, LayerCAM, Grad-CAM element-wise) are projected on their first
            principal component instead of summed, sign fixed as Eigen-CAM's. FEM, KPCA-CAM, LeGrad and the
            principal-component methods ignore it, as in pytorch-grad-cam.
        counterfactual: the counterfactual explanation of Selvaraju et al. 2017 (sec. 5, "Counterfactual
            Explanations"): the gradients are negated, i.e. the method explains ``-score``, so the map shows the
            regions whose evidence would make the model *less* sure of the class. "gradient" methods only
            (``MethodError`` otherwise); equal to pytorch-grad-cam given a target ``lambda out: -out[k]``.

    Returns:
        A ``CamResult``; ``raw`` is at the feature map's ``(h, w)`` after any layout reshaping.

    Raises:
        InputError (both ``targets`` and ``class_idx``), TargetError (a wrong count of targets, a target that fails
        or returns no float scalar, no targets for a model without class logits), MethodError, LayerError,
        ClassIndexError, NonFiniteError (also a target's NaN or Inf score), GradientUnavailableError (all
        ``ValueError``).
    """
    _resolve_method(method)  # an unknown method is reported before any other argument
    return compute_cam_grid(
        model,
        x,
        layers,
        [method],
        targets=targets,
        class_idx=class_idx,
        scorecam_batch_size=scorecam_batch_size,
        layouts=layouts,
        progress=progress,
        seed=seed,
        n_samples=n_samples,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        counterfactual=counterfactual,
    )[method]


def compute_cam_grid(  # noqa: PLR0913 (keyword-only options of the public entry point)
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str],
    *,
    targets: Sequence[Target] | None = None,
    class_idx: int | Sequence[int] | None = None,
    scorecam_batch_size: int = 32,
    layouts: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    seed: int = RANDOM_CAM_SEED,
    n_samples: int | None = None,
    aug_smooth: bool = False,
    eigen_smooth: bool = False,
    counterfactual: bool = False,
) -> dict[str, CamResult]:
    """Every method x layer map from shared passes: the methods x layers grid the Compare view shows.

    All "gradient" methods that differentiate the same score (every method but Finer-CAM, whose score contrasts
    classes) share one forward and one ``torch.autograd.grad`` call; "activation" and "perturbation" methods share
    that forward; a method with its own score, or with second-order terms (ShapleyCAM), gets its own pass. Each cell
    equals ``compute_cams(model, x, [layer], method=m)`` (tests/test_cam.py checks it on the reference models).

    Args:
        methods: keys of ``METHODS``, at least one; repeats are computed once.
        model, x, layers, targets, class_idx, scorecam_batch_size, layouts, seed, n_samples, aug_smooth,
            eigen_smooth, counterfactual: as for ``compute_cams``.
        progress: ``callback(done, total)`` after each extra forward batch of the perturbation methods, counted over
            all of them; it may raise to cancel (hooks removed, modes restored, lock released).

    Returns:
        ``{method: CamResult}`` in the order of ``methods``; each result's ``elapsed_s`` is the wall time of the whole
        call (the passes are shared).

    Raises:
        InputError, TargetError, MethodError, LayerError, ClassIndexError, NonFiniteError, GradientUnavailableError
        (all ``ValueError``), as for ``compute_cams``.
    """
    started = time.perf_counter()
    if not all(isinstance(flag, bool) for flag in (aug_smooth, eigen_smooth, counterfactual)):
        raise InputError(
            "aug_smooth, eigen_smooth and counterfactual must be True or False, got "
            f"{aug_smooth!r}, {eigen_smooth!r}, {counterfactual!r}"
        )
    if aug_smooth:
        run = partial(
            compute_cam_grid,
            model,
            layers=layers,
            methods=methods,
            scorecam_batch_size=scorecam_batch_size,
            layouts=layouts,
            seed=seed,
            n_samples=n_samples,
            eigen_smooth=eigen_smooth,
            counterfactual=counterfactual,
        )
        return _augmentation_smoothed(run, x, targets=targets, class_idx=class_idx, progress=progress, started=started)
    specs = _resolve_methods(methods)
    if counterfactual and (other := next((s for s in specs if not s.uses_gradients), None)):
        raise MethodError(
            f"a counterfactual map negates the gradients of the score, and {other.label} uses none: "
            "pick a gradient method (Grad-CAM, Grad-CAM++, ...)"
        )
    require_model(model)
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be a callable (done, total) or None, got {type(progress).__name__}")
    names = _resolve_layers(model, layers)
    require_cam_input(x)
    require_int(scorecam_batch_size, "scorecam_batch_size", minimum=1)
    given = resolve_targets(targets, class_idx, int(x.shape[0]))
    seed = require_int(seed, "seed", minimum=0)
    n_samples = None if n_samples is None else require_int(n_samples, "n_samples", minimum=1)
    explicit_layouts = _resolve_layouts(layouts, names)
    size = (int(x.shape[-2]), int(x.shape[-1]))
    if any(s.uses_gradients for s in specs) and any(t.is_inference() for t in (*model.parameters(), *model.buffers())):
        raise GradientUnavailableError(
            "CAM needs gradients, and this model's weights were created in inference_mode; "
            "load the model outside torch.inference_mode()"
        )

    raws: dict[str, dict[str, torch.Tensor]] = {}
    counter: Progress | None = None
    modules = dict(model.named_modules())
    with eval_mode(model):
        for group in _pass_groups(specs):
            gradient = next((s for s in group if s.uses_gradients), None)
            xin, output, capture = _forward(model, x, names, start_graph=gradient is not None)
            explained = _explained(given, class_idx, output)
            with torch.no_grad():
                scores = target_scores(explained, _upcast_output(output)).detach()
            feature_layouts = {
                name: layer_layout(
                    model,
                    name,
                    tuple(capture.values[name].shape),
                    size,
                    explicit_layouts.get(name),
                    batch=int(x.shape[0]),
                    channels=int(x.shape[1]),
                )
                for name in names
            }
            # The methods' arithmetic runs on upcast copies (working_dtype); the model keeps its own dtype.
            values = {name: _upcast(to_feature_map(capture.values[name], feature_layouts[name])) for name in names}
            for name in names:
                require_finite(f"the activations of layer {name!r}", values[name])
            grads, products = (
                _gradients(
                    output,
                    explained,
                    capture,
                    names,
                    feature_layouts,
                    scores=_negated(gradient.score) if counterfactual else gradient.score,
                    second_order=gradient.second_order,
                )
                if gradient
                else ({}, {})
            )
            if counter is None:
                total = sum(
                    len(explained) * s.batches(values[name].shape[1], scorecam_batch_size, n_samples)
                    for s in specs
                    for name in names
                )
                counter = Progress(progress, total)
            logits = _upcast(output.detach()) if isinstance(output, torch.Tensor) else None
            pass_ = _Pass(
                model,
                xin.detach(),
                logits,
                explained,
                capture,
                feature_layouts,
                values,
                grads,
                products,
                modules,
                scores,
            )
            for spec in group:
                raws[spec.name] = _raw_maps(
                    spec,
                    pass_,
                    names,
                    scorecam_batch_size,
                    counter,
                    seed=seed,
                    n_samples=n_samples,
                    eigen_smooth=eigen_smooth,
                )

    finished = _finish_all(raws, names, size, working_dtype(pass_.x.dtype))
    elapsed = time.perf_counter() - started
    results = {spec.name: _result(spec, raws[spec.name], finished[spec.name], pass_, elapsed) for spec in specs}
    return {n: dataclasses.replace(r, counterfactual=True) for n, r in results.items()} if counterfactual else results


def _negated(score: Score) -> Score:
    """``-score``: what a counterfactual map differentiates (Selvaraju et al. 2017's negated gradients)."""
    return lambda output, targets: -score(output, targets)


# pytorch-grad-cam's aug_smooth views, in ttach's order: Compose([HorizontalFlip(), Multiply([0.9, 1, 1.1])]).
AUG_SMOOTH_VIEWS = tuple((mirror, factor) for mirror in (False, True) for factor in (0.9, 1.0, 1.1))


def _augmentation_smoothed(
    run: Callable[..., dict[str, CamResult]],
    x: torch.Tensor,
    *,
    targets: Sequence[Target] | None,
    class_idx: int | Sequence[int] | None,
    progress: ProgressCallback | None,
    started: float,
) -> dict[str, CamResult]:
    """``run`` (``compute_cam_grid`` without aug_smooth) on every view of ``AUG_SMOOTH_VIEWS``, the original first
    (it fixes the classes, unless ``targets`` are given: those explain every view), each view's maps mirrored back;
    per method the mean of the views' maps and raw maps, in ttach's order (pytorch-grad-cam's
    ``forward_augmentation_smoothing``). Progress counts the views' batches."""
    require_cam_input(x)
    order = [(False, 1.0), *(view for view in AUG_SMOOTH_VIEWS if view != (False, 1.0))]
    views: dict[tuple[bool, float], dict[str, CamResult]] = {}
    for k, (mirror, factor) in enumerate(order):
        image = x.flip(3) if mirror else x
        report = None
        if progress is not None:

            def report(done: int, total: int, k: int = k) -> None:
                progress(k * total + done, len(order) * total)

        views[mirror, factor] = run(
            image * factor if factor != 1.0 else image, targets=targets, class_idx=class_idx, progress=report
        )
        if targets is None:
            class_idx = next(iter(views[False, 1.0].values())).class_idx

    def back(array: np.ndarray, mirror: bool) -> np.ndarray:
        return np.ascontiguousarray(array[..., ::-1]) if mirror else array

    out = {}
    elapsed = time.perf_counter() - started
    for method, original in views[False, 1.0].items():
        results = [(views[view][method], view[0]) for view in AUG_SMOOTH_VIEWS]
        out[method] = dataclasses.replace(
            original,
            maps={
                n: np.mean([back(r.maps[n], m) for r, m in results], axis=0, dtype=np.float32) for n in original.layers
            },
            raw={
                n: np.mean([back(r.raw[n], m) for r, m in results], axis=0, dtype=original.raw[n].dtype)
                for n in original.layers
            },
            degenerate={n: np.all([r.degenerate[n] for r, _ in results], axis=0) for n in original.layers},
            elapsed_s=elapsed,
        )
    return out


@dataclass(frozen=True)
class _Pass:
    """One forward (and gradient) pass shared by several methods."""

    model: nn.Module
    x: torch.Tensor
    logits: torch.Tensor | None  # the model's output when it is a tensor, upcast; None for a dict or list
    targets: list[Target]
    capture: _Capture
    layouts: dict[str, Layout]
    values: dict[str, torch.Tensor]
    grads: dict[str, torch.Tensor]
    products: dict[str, torch.Tensor]
    modules: dict[str, nn.Module]  # the model's modules by name, looked up once per call
    scores: torch.Tensor  # (B,) the targets' scores, upcast, detached


def _resolve_methods(methods: Sequence[str]) -> list[MethodSpec]:
    if isinstance(methods, (str, bytes)) or not isinstance(methods, Sequence) or not methods:
        raise MethodError(f"methods must be a non-empty sequence of method names, got {methods!r}")
    try:
        return [_resolve_method(m) for m in dict.fromkeys(methods)]
    except (MethodError, TypeError) as error:
        raise MethodError(f"methods: {error}") from error


def _pass_groups(specs: list[MethodSpec]) -> list[list[MethodSpec]]:
    """Methods grouped by the pass they need: one per distinct (gradient score, second order); the methods without
    gradients join the first group (its forward serves them) or form their own."""
    groups: dict[object, list[MethodSpec]] = {}
    for spec in specs:
        if spec.uses_gradients:
            groups.setdefault((spec.score, spec.second_order), []).append(spec)
    others = [s for s in specs if not s.uses_gradients]
    if not groups:
        return [others]
    first = next(iter(groups.values()))
    first.extend(others)
    return list(groups.values())


def _raw_maps(
    spec: MethodSpec,
    pass_: _Pass,
    names: list[str],
    batch_size: int,
    counter: Progress,
    *,
    seed: int,
    n_samples: int | None,
    eigen_smooth: bool,
) -> dict[str, torch.Tensor]:
    """One method's signed raw map of every layer from a shared pass. Perturbation methods run more forwards: they
    stay inside the caller's guard (eval mode, no other session's hooks)."""
    raws = {}
    with torch.inference_mode(False), torch.no_grad():
        for name in names:
            evidence = LayerEvidence(
                pass_.values[name],
                pass_.grads.get(name) if spec.uses_gradients else None,
                pass_.model,
                pass_.x,
                pass_.targets,
                batch_size,
                counter,
                logits=pass_.logits,
                output=pass_.capture.values[name],
                channel_dim=1 if pass_.layouts[name].kind == "nchw" else -1,
                forward_with_output=partial(_forward_with_output, pass_.model, pass_.modules[name]),
                hessian_products=pass_.products.get(name) if spec.second_order else None,
                seed=seed,
                n_samples=n_samples or spec.samples,
                eigen_smooth=eigen_smooth,
                gradients_at=partial(_gradients_at, pass_.model, name, pass_.layouts[name]),
                module=pass_.modules[name],
                layout=pass_.layouts[name],
                scores=pass_.scores,
            )
            try:
                raws[name] = spec.raw_map(evidence)
            except MethodError as error:
                raise MethodError(f"{spec.label} cannot explain layer {name!r}: {error}") from error
            if not bool(torch.isfinite(raws[name]).all()):  # a NaN map would pass for a map (NaN > x is False)
                raise NonFiniteError(
                    f"{spec.label}'s map of layer {name!r} holds NaN or Inf (the model's scores of the method's "
                    "extra inputs, or its arithmetic, overflowed); the CAM cannot be drawn: try another method"
                )
    return raws


def _finish_all(
    raws: dict[str, dict[str, torch.Tensor]], names: list[str], size: tuple[int, int], precision: torch.dtype
) -> dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """Every method's maps and degenerate flags, finished in float64 (``_finish``; ``precision``: the dtype the raw
    maps were computed in, ``working_dtype`` of the model's). A layer's methods whose raw maps have one resolution
    are finished in one batch (``_finish`` works per image, so stacking them along the batch changes no number);
    SESS's raw map is at the input size, the others' at the layer's, so they are batched apart."""
    out: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {method: {} for method in raws}
    with torch.no_grad():
        for name in names:
            by_shape: dict[tuple[int, ...], list[str]] = {}
            for method in raws:
                by_shape.setdefault(tuple(raws[method][name].shape), []).append(method)
            for methods in by_shape.values():
                stacked = torch.cat([_finishing_copy(raws[method][name]) for method in methods])
                maps, degenerate = _finish(stacked, size, precision)
                maps, degenerate = maps.cpu().numpy().astype(np.float32), degenerate.cpu().numpy()
                batch = len(maps) // len(methods)
                for k, method in enumerate(methods):
                    out[method][name] = (maps[k * batch : (k + 1) * batch], degenerate[k * batch : (k + 1) * batch])
    return out


def _finishing_copy(raw: torch.Tensor) -> torch.Tensor:
    """``raw`` in float64, where ``_finish`` runs: on its device, or the CPU for Apple's MPS (it has no float64)."""
    raw = raw.detach()
    return (raw.cpu() if raw.device.type == "mps" else raw).double()


def _result(
    spec: MethodSpec,
    raws: dict[str, torch.Tensor],
    finished: dict[str, tuple[np.ndarray, np.ndarray]],
    pass_: _Pass,
    elapsed: float,
) -> CamResult:
    """A method's ``CamResult`` from its raw maps (in layer order) and their finished maps."""
    names = list(raws)
    classes = [class_of(target) for target in pass_.targets]
    logits = pass_.logits
    return CamResult(
        method=spec.name,
        layers=tuple(names),
        class_idx=None if None in classes else classes,
        logits=logits.float().cpu().numpy() if logits is not None and logits.dim() == 2 else None,
        scores=pass_.scores.double().cpu().numpy(),
        maps={name: finished[name][0] for name in names},
        raw={name: raws[name].detach().to(working_dtype(pass_.x.dtype)).cpu().numpy() for name in names},
        degenerate={name: finished[name][1] for name in names},
        elapsed_s=elapsed,
    )


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
