"""The CAM method registry: what a method gets (``LayerEvidence``), what it declares (``MethodSpec``) and ``METHODS``.

Each method is a function decorated with ``register_method(name, label=..., paper=..., family=..., cost=...)`` that
turns a layer's ``LayerEvidence`` (activations, and gradients for the "gradient" family) into a signed raw map; the
decorator is the one place a method is declared. The functions live by family in ``camlib.cam.gradient``,
``activation``, ``perturbation`` and ``transformer``. ``MethodSpec.refusal`` says from a model's structure why a
method cannot explain a layer (CAM, LeGrad, KPCA-CAM's memory cap), before any computation.

``METHODS`` lists the methods in ``METHOD_ORDER`` (the order pickers and tables show them), whatever order the family
modules are imported in; a method that is not in it follows, in the order it was registered.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import partial
from typing import Any

import torch
from torch import nn

from camlib.errors import LayerError, MethodError
from camlib.layouts import Layout
from camlib.targets import Target, class_of, is_logit_target, target_scores

FAMILIES = ("gradient", "activation", "perturbation")


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
        forward_with_output: ``forward_with_output(inputs, output) -> model output`` runs the model on ``inputs``
            with this layer's output replaced by ``output`` (same layout; a hook acting for this thread only, removed
            after); score it with ``target_scores``.
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


@dataclass(frozen=True, kw_only=True)
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


def register_method(name: str, **declaration: Any) -> Callable[[RawMap], RawMap]:
    """Decorator adding a raw-map function to ``METHODS`` under ``name``: the one place a method is declared.

    The keyword arguments are ``MethodSpec``'s fields, by keyword: ``label``, ``paper``, ``family`` and ``cost`` are
    required. ``score`` is what a "gradient" method differentiates (default: the targets' scores); ``second_order``
    gives it Hessian-vector products as well (``LayerEvidence.hessian_products``); ``samples`` and ``per_channel``
    describe a sampling "perturbation" method's extra forwards (``MethodSpec.extra_forwards``); ``fuses_layers``
    says that the method's map is ``CamResult.refined`` (its per-layer maps fused); ``refuse(model, module, layout)``
    says statically why the method does not apply to a layer (``MethodSpec.refusal``); ``forwards_per_sample`` and
    ``batched`` refine the cost of a method that is not per channel (``MethodSpec.extra_forwards``, ``batches``);
    ``stochastic`` says that its maps depend on ``compute_cams(seed=...)`` (a picker offers the seed).

    Raises:
        MethodError: an unknown ``family``, a keyword that is not a field of ``MethodSpec``, or (when the decorator
            is applied) a name registered twice.
    """
    family = declaration.get("family")
    if not isinstance(family, str) or family not in FAMILIES:
        raise MethodError(f"unknown method family {family!r}; one of {FAMILIES}")
    unknown = sorted(set(declaration) - {f.name for f in fields(MethodSpec)} - {"name", "raw_map"})
    if unknown or {"name", "raw_map"} & set(declaration):
        raise MethodError(f"register_method takes MethodSpec's fields by keyword; not {unknown or ['name', 'raw_map']}")

    def add(raw_map: RawMap) -> RawMap:
        if name in METHODS:
            raise MethodError(f"CAM method {name!r} is registered twice")
        METHODS[name] = MethodSpec(name=name, raw_map=raw_map, **declaration)
        return raw_map

    return add


def family_decorator(family: str) -> Callable[..., Callable[[RawMap], RawMap]]:
    """``register_method`` with ``family`` given: each family's module declares its methods with its own decorator
    (``gradient_method = family_decorator("gradient")``), so the family is said once per module.

    Raises:
        MethodError: an unknown ``family``.
    """
    if family not in FAMILIES:
        raise MethodError(f"unknown method family {family!r}; one of {FAMILIES}")
    return partial(register_method, family=family)


RANDOM_CAM_SEED = 0  # compute_cams' default seed: Random-CAM's weights are the same for every image, layer and call


def _resolve_method(method: str) -> MethodSpec:
    spec = METHODS.get(method) if isinstance(method, str) else None
    if spec is None:
        raise MethodError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
    return spec


# The order ``METHODS`` lists the methods in (pickers, tables, the Compare grid), kept whatever order the family modules
# register them in (``_order_methods``).
METHOD_ORDER = (
    "gradcam",
    "gradcam++",
    "refinecam",
    "xgradcam",
    "hirescam",
    "shapleycam",
    "layercam",
    "finercam",
    "eigencam",
    "kpcacam",
    "fem",
    "gradcam_elementwise",
    "eigengradcam",
    "scorecam",
    "ablationcam",
    "sscam",
    "iscam",
    "smoothgradcam++",
    "sess",
    "randomcam",
    "legrad",
    "cam",
)


def _order_methods() -> None:
    """Put ``METHODS`` (the same dict) in ``METHOD_ORDER``, the methods not in it after, in registration order."""
    rank = {name: k for k, name in enumerate(METHOD_ORDER)}
    ordered = sorted(METHODS.items(), key=lambda item: rank.get(item[0], len(rank)))
    METHODS.clear()
    METHODS.update(ordered)
