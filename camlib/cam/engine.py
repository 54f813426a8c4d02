"""The CAM engine: ``compute_cams`` and ``compute_cam_grid`` run the model with hooks, take the gradients the methods
need and hand each method its ``LayerEvidence``.

``compute_cams(model, x, layers, method=..., targets=...)`` runs one forward pass with temporary forward hooks on the
requested layers and, for gradient methods, one ``torch.autograd.grad`` call of the targets' summed scores with
respect to those layers' outputs. Parameters' ``.grad`` are never touched, ``backward()`` is never called, hooks are
removed in ``finally``, module ``training`` flags are restored, and the hooks act only for the calling thread, so
sessions sharing a model run concurrently without seeing each other's hooks (``camlib.guard.eval_mode``; a model with
modules in training mode is switched to eval under its lock instead, held for the whole call).

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
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from camlib.cam.registry import (
    RANDOM_CAM_SEED,
    LayerEvidence,
    MethodSpec,
    Progress,
    ProgressCallback,
    Score,
    _describe_output,
    _resolve_method,
    _target_scores,
)
from camlib.cam.result import CamResult, _finish, _upcast, working_dtype
from camlib.contracts import require_cam_input, require_finite, require_int, require_model, resolve_classes
from camlib.errors import GradientUnavailableError, InputError, LayerError, MethodError, NonFiniteError, TargetError
from camlib.guard import eval_mode, owned_by_this_thread
from camlib.layers import layer_layout
from camlib.layouts import Layout, layout_from_spec, to_feature_map
from camlib.targets import Target, class_of, class_targets, resolve_targets, target_scores, upcast_output


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
        score = scores(upcast_output(logits), targets).sum()  # softmax targets in float32 for a half-precision model
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


@dataclass(frozen=True)
class CamOptions:
    """What a CAM computation is asked for besides the model, the input and the layers: one frozen, hashable value
    (a cache key) that ``compute_cams`` builds from its keywords and ``compute_cam_grid`` takes as ``options=``.

    Attributes:
        method: a key of ``METHODS`` (``compute_cams``; ``compute_cam_grid`` computes its own ``methods``).
        targets: one callable per image (``camlib.targets``), or None for ``class_idx``; a list is kept as a tuple.
            camlib's targets are frozen dataclasses, so options holding them hash; a lambda hashes by identity.
        counterfactual, aug_smooth, eigen_smooth, seed, n_samples: as ``compute_cams``' keywords.
        batch_size: perturbed inputs per extra forward (``compute_cams``' ``scorecam_batch_size``).

    The values are checked where they are used (``compute_cams`` raises ``InputError``, ``TargetError``...).
    """

    method: str = "gradcam"
    targets: tuple[Target, ...] | None = None
    counterfactual: bool = False
    aug_smooth: bool = False
    eigen_smooth: bool = False
    seed: int = RANDOM_CAM_SEED
    n_samples: int | None = None
    batch_size: int = 32

    def __post_init__(self) -> None:
        if isinstance(self.targets, list):
            object.__setattr__(self, "targets", tuple(self.targets))

    @classmethod
    def from_keywords(cls, **keywords: Any) -> CamOptions:
        """The options named by ``compute_cams``' keywords (``scorecam_batch_size`` is ``batch_size``).

        Raises ``InputError`` for a keyword that is not one of them."""
        names = {f.name for f in dataclasses.fields(cls)} - {"batch_size", "method"} | {"scorecam_batch_size"}
        unknown = sorted(set(keywords) - names)
        if unknown:
            raise InputError(f"unknown CAM options {unknown}; the options are {sorted(names)}")
        if "scorecam_batch_size" in keywords:
            keywords["batch_size"] = keywords.pop("scorecam_batch_size")
        return cls(**keywords)


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
            Finer-CAM need ``(B, num_classes)`` logits and class-logit targets; SESS applies the targets to the
            softmax of ``(B, num_classes)`` logits of 2 classes or more (pytorch-grad-cam's default); ``aug_smooth``
            takes class targets only, as it mirrors the image (``MethodError`` otherwise). Not with ``class_idx``.
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
    options = CamOptions(
        method=method,
        targets=targets,
        counterfactual=counterfactual,
        aug_smooth=aug_smooth,
        eigen_smooth=eigen_smooth,
        seed=seed,
        n_samples=n_samples,
        batch_size=scorecam_batch_size,
    )
    return _compute(model, x, layers, [method], options, class_idx=class_idx, layouts=layouts, progress=progress)[
        method
    ]


def compute_cam_grid(  # noqa: PLR0913 (keyword-only options of the public entry point)
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str],
    *,
    class_idx: int | Sequence[int] | None = None,
    layouts: Mapping[str, str] | None = None,
    progress: ProgressCallback | None = None,
    options: CamOptions | None = None,
    **keywords: Any,
) -> dict[str, CamResult]:
    """Every method x layer map from shared passes: the methods x layers grid the Compare view shows.

    All "gradient" methods that differentiate the same score (every method but Finer-CAM, whose score contrasts
    classes) share one forward and one ``torch.autograd.grad`` call; "activation" and "perturbation" methods share
    that forward; a method with its own score, or with second-order terms (ShapleyCAM), gets its own pass. Each cell
    equals ``compute_cams(model, x, [layer], method=m)`` (tests/test_cam.py checks it on the reference models).

    Args:
        methods: keys of ``METHODS``, at least one; repeats are computed once.
        model, x, layers, class_idx, layouts: as for ``compute_cams``.
        options: the ``CamOptions`` of the call (its ``method`` is not used: ``methods`` are computed), or None to
            build them from ``keywords``.
        keywords: ``compute_cams``' option keywords instead of ``options``: ``targets``, ``scorecam_batch_size``,
            ``seed``, ``n_samples``, ``aug_smooth``, ``eigen_smooth``, ``counterfactual``.
        progress: ``callback(done, total)`` after each extra forward batch of the perturbation methods, counted over
            all of them; it may raise to cancel (hooks removed, modes restored, lock released).

    Returns:
        ``{method: CamResult}`` in the order of ``methods``; each result's ``elapsed_s`` is the wall time of the whole
        call (the passes are shared).

    Raises:
        InputError, TargetError, MethodError, LayerError, ClassIndexError, NonFiniteError, GradientUnavailableError
        (all ``ValueError``), as for ``compute_cams``; ``InputError`` also for ``options`` that are not a
        ``CamOptions``, for both ``options`` and option keywords, and for an unknown keyword.
    """
    if options is None:
        options = CamOptions.from_keywords(**keywords)
    elif keywords:
        raise InputError(f"give either options or option keywords, not both (got {', '.join(sorted(keywords))})")
    elif not isinstance(options, CamOptions):
        raise InputError(f"options must be a CamOptions, got {type(options).__name__}")
    return _compute(model, x, layers, methods, options, class_idx=class_idx, layouts=layouts, progress=progress)


def _compute(  # noqa: PLR0913, PLR0914 (the options of both entry points, and the passes of the grid)
    model: nn.Module,
    x: torch.Tensor,
    layers: Sequence[str],
    methods: Sequence[str],
    options: CamOptions,
    *,
    class_idx: int | Sequence[int] | None,
    layouts: Mapping[str, str] | None,
    progress: ProgressCallback | None,
) -> dict[str, CamResult]:
    """``compute_cam_grid``'s work for checked ``options``."""
    started = time.perf_counter()
    flags = (options.aug_smooth, options.eigen_smooth, options.counterfactual)
    if not all(isinstance(flag, bool) for flag in flags):
        raise InputError(
            "aug_smooth, eigen_smooth and counterfactual must be True or False, got "
            f"{flags[0]!r}, {flags[1]!r}, {flags[2]!r}"
        )
    if options.aug_smooth:
        if options.targets is not None and any(class_of(t) is None for t in options.targets):
            # The views are mirrored and the maps mirrored back; a mask or a box is not, so each mirrored view would
            # explain the mirror image of the region asked for.
            raise MethodError(
                "aug_smooth averages the maps of mirrored views, which only class targets explain alike; a target "
                "that reads a region (a mask, a box) would be explained on the mirrored image: turn aug_smooth off"
            )
        run = partial(
            _compute, model, layers=layers, methods=methods, options=replace(options, aug_smooth=False), layouts=layouts
        )
        return _augmentation_smoothed(
            run, x, fixed_targets=options.targets is not None, class_idx=class_idx, progress=progress, started=started
        )
    counterfactual, eigen_smooth = options.counterfactual, options.eigen_smooth
    scorecam_batch_size, n_samples = options.batch_size, options.n_samples
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
    given = resolve_targets(options.targets, class_idx, int(x.shape[0]))
    seed = require_int(options.seed, "seed", minimum=0)
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
                scores = target_scores(explained, upcast_output(output)).detach()
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
    fixed_targets: bool,
    class_idx: int | Sequence[int] | None,
    progress: ProgressCallback | None,
    started: float,
) -> dict[str, CamResult]:
    """``run`` (``_compute`` without aug_smooth) on every view of ``AUG_SMOOTH_VIEWS``, the original first (it fixes
    the classes, unless the options hold targets, ``fixed_targets``: those explain every view), each view's maps
    mirrored back; per method the mean of the views' maps and raw maps, in ttach's order (pytorch-grad-cam's
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

        views[mirror, factor] = run(image * factor if factor != 1.0 else image, class_idx=class_idx, progress=report)
        if not fixed_targets:
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
