"""What a CAM computation will cost before it starts: the passes each method runs beyond the shared one, from its
family and the target layers' channel counts, and seconds from passes of the model timed on its device.

Most gradient and activation methods cost one forward (plus one backward for gradients) whatever the layers; every
family has members that cost more per layer, and each is counted:

- perturbation methods (Score-CAM, Wang et al., CVPRW 2020; Ablation-CAM, Desai & Ramaswamy, WACV 2020; SS-CAM,
  IS-CAM, Smooth Grad-CAM++, SESS) run extra forwards per channel or per sample of each target layer, in batches;
- second-order gradient methods (ShapleyCAM, Cai et al. 2024) run one Hessian-vector product per layer: a second
  backward through the graph the first one kept (Pearlmutter, Neural Computation 1994);
- LeGrad (Bousselham et al. 2024), an activation method, runs its own forward and backward per layer;
- principal-component methods solve an eigenproblem per layer and image: Eigen-CAM and Eigen-Grad-CAM (Muhammad &
  Yeasin, IJCNN 2020) an SVD of the ``(hw, C)`` activations, KPCA-CAM (Karmani et al. 2024) the top eigenpair of an
  ``(hw, hw)`` kernel; their time grows with the layer's positions, not with the model.

The pages show the estimate and ask before starting a slow computation, whichever family it comes from.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camlib.cam import METHODS, _kernel_projection, eigen_projection
from camlib.contracts import require_int, require_model, require_size
from camlib.errors import InputError, MethodError
from camlib.guard import eval_mode


@dataclass(frozen=True)
class CostEstimate:
    """The estimated cost of one CAM computation on one image.

    Attributes:
        method: the registry key.
        extra_forwards: model forwards beyond the shared pass (0 for gradient and activation methods).
        batches: how many batched forwards those take (``ceil(channels / batch_size)`` summed over layers).
        seconds: estimated wall time of all the extra passes, s (0 when there are none).
        extra_backwards: forwards with a backward beyond the shared pass (LeGrad: one per layer).
        hessian_products: Hessian-vector products (second-order methods: one per layer).
        eigenproblems: SVDs or kernel eigenproblems (principal-component methods: one per layer).
    """

    method: str
    extra_forwards: int
    batches: int
    seconds: float
    extra_backwards: int = 0
    hessian_products: int = 0
    eigenproblems: int = 0


@dataclass(frozen=True)
class PassTimes:
    """One image's time of each kind of pass on one model and device, s (``time_passes``).

    Attributes:
        forward: a no-grad forward.
        backward: a forward and the backward of one class score to the input.
        hessian: a forward, a backward that keeps its graph, and a second backward through it (a Hessian-vector
            product with respect to the input: an upper bound of one with respect to any layer's output, whose
            second backward stops at that layer).
        kernel: KPCA-CAM's kernel eigenproblem on ``KERNEL_PROBE`` (positions, channels), on the CPU (0: not timed).
        svd: Eigen-CAM's SVD of ``SVD_PROBE`` (positions, channels) activations (0: not timed).
    """

    forward: float
    backward: float
    hessian: float
    kernel: float = 0.0
    svd: float = 0.0

    def scaled(self, factor: float) -> PassTimes:
        """These times for ``factor`` times the work per image (aug_smooth's views)."""
        return PassTimes(*(factor * t for t in (self.forward, self.backward, self.hessian, self.kernel, self.svd)))


# Methods outside the perturbation family whose cost grows with the layers, and what they run per layer:
# ("backward", n): n forward-and-backward passes; second-order methods (MethodSpec.second_order) one Hessian product.
PER_LAYER_PASSES: dict[str, tuple[str, int]] = {"legrad": ("backward", 1)}
# Methods that solve an eigenproblem per layer and image, and which one.
PER_LAYER_EIGEN: dict[str, str] = {"kpcacam": "kernel", "eigencam": "svd", "eigengradcam": "svd"}
# The sizes time_passes times them at: (positions, channels). Larger than most CNN layers' 7x7 to 28x28 grids, so
# that scaling up from them is by the asymptotic power (kernel: positions^2 for its build and Lanczos products; SVD:
# positions x channels x min of the two), and scaling down stays linear, which overestimates small layers a little.
KERNEL_PROBE = (2500, 32)
SVD_PROBE = (2500, 256)


def _eigen_seconds(kind: str, positions: int, channels: int, passes: PassTimes) -> float:
    """One image's eigenproblem of ``kind`` on a layer of ``positions`` x ``channels``, s, scaled from the probe."""
    if kind == "kernel":
        ratio = positions / KERNEL_PROBE[0]
        return passes.kernel * max(ratio, ratio * ratio)
    work = positions * channels * min(positions, channels)
    probe = SVD_PROBE[0] * SVD_PROBE[1] * min(SVD_PROBE)
    return passes.svd * work / probe


def estimate_cost(
    method: str,
    channels: Sequence[int],
    *,
    seconds_per_image: float,
    batch_size: int = 32,
    n_samples: int | None = None,
    passes: PassTimes | None = None,
    positions: Sequence[int] | None = None,
) -> CostEstimate:
    """The cost of ``method`` on target layers with ``channels`` channels each, for one image.

    Args:
        method: a key of ``camlib.cam.METHODS``.
        channels: the channel count of each target layer (``LayerInfo.channels``), each >= 1.
        seconds_per_image: one image's forward time on the model's device, s (``time_forward``), finite and >= 0.
        batch_size: perturbed inputs per forward (``compute_cams``' ``scorecam_batch_size``), >= 1.
        n_samples: ``compute_cams``' ``n_samples`` for the sampling methods (None: the method's default), >= 1.
        passes: the model's timed passes (``time_passes``); needed by the methods that run a backward, a Hessian
            product or an eigenproblem per layer (``PER_LAYER_PASSES``, ``MethodSpec.second_order``,
            ``PER_LAYER_EIGEN``), unused by the others.
        positions: each target layer's ``h * w`` (``LayerInfo.layout``), in the order of ``channels``; needed by
            ``PER_LAYER_EIGEN`` methods.

    Returns:
        Perturbation methods: ``extra_forwards`` times ``seconds_per_image``. Second-order methods: one Hessian
        product per layer, ``len(channels) * passes.hessian``. ``PER_LAYER_PASSES`` methods: their backwards,
        ``n * len(channels) * passes.backward``. ``PER_LAYER_EIGEN`` methods: the timed probe eigenproblem
        (``passes.kernel`` or ``passes.svd``) scaled to each layer's size (linear below the probe's size; above it
        positions squared for the kernel, positions x channels x min of the two for the SVD). Every other method: 0
        (it shares the one pass).

    Raises:
        MethodError: an unknown method. InputError: bad ``channels``, ``seconds_per_image``, ``batch_size``,
        ``passes`` or ``positions``, or no ``passes`` or ``positions`` for a method that needs them.
    """
    if method not in METHODS:
        raise MethodError(f"unknown CAM method {method!r}; known: {', '.join(METHODS)}")
    if isinstance(channels, (str, bytes)) or not isinstance(channels, Sequence) or not channels:
        raise InputError(f"channels must be a non-empty sequence of channel counts, got {channels!r}")
    counts = [require_int(c, "channels", minimum=1) for c in channels]
    batch_size = require_int(batch_size, "batch_size", minimum=1)
    n_samples = None if n_samples is None else require_int(n_samples, "n_samples", minimum=1)
    if isinstance(seconds_per_image, bool) or not isinstance(seconds_per_image, (int, float)):
        raise InputError(f"seconds_per_image must be a number of seconds, got {seconds_per_image!r}")
    if not math.isfinite(seconds_per_image) or seconds_per_image < 0:
        raise InputError(f"seconds_per_image must be finite and >= 0, got {seconds_per_image!r}")
    spec = METHODS[method]
    if method in PER_LAYER_EIGEN:
        return _eigen_estimate(method, counts, positions, passes)
    if spec.second_order or method in PER_LAYER_PASSES:
        kind, per_layer = ("hessian", 1) if spec.second_order else PER_LAYER_PASSES[method]
        if not isinstance(passes, PassTimes):
            raise InputError(f"passes (time_passes) are needed to estimate {method}'s per-layer passes, got {passes!r}")
        count = per_layer * len(counts)
        if kind == "hessian":
            return CostEstimate(method, 0, 0, count * passes.hessian, hessian_products=count)
        return CostEstimate(method, 0, 0, count * passes.backward, extra_backwards=count)
    if spec.family != "perturbation":
        return CostEstimate(method, 0, 0, 0.0)
    # One forward per channel (Score-CAM, Ablation-CAM), times the samples of SS-CAM and IS-CAM; Smooth Grad-CAM++:
    # one forward and backward per noisy sample. MethodSpec.extra_forwards / batches say which.
    forwards = sum(spec.extra_forwards(c, n_samples) for c in counts)
    batches = sum(spec.batches(c, batch_size, n_samples) for c in counts)
    return CostEstimate(method, forwards, batches, forwards * float(seconds_per_image))


def _eigen_estimate(
    method: str, counts: list[int], positions: Sequence[int] | None, passes: PassTimes | None
) -> CostEstimate:
    if not isinstance(passes, PassTimes):
        raise InputError(f"passes (time_passes) are needed to estimate {method}'s eigenproblems, got {passes!r}")
    if isinstance(positions, (str, bytes)) or not isinstance(positions, Sequence) or len(positions) != len(counts):
        raise InputError(f"positions must give each of the {len(counts)} layers' h * w, got {positions!r}")
    sizes = [require_int(n, "positions", minimum=1) for n in positions]
    kind = PER_LAYER_EIGEN[method]
    seconds = sum(_eigen_seconds(kind, n, c, passes) for n, c in zip(sizes, counts, strict=True))
    return CostEstimate(method, 0, 0, seconds, eigenproblems=len(counts))


def time_forward(model: nn.Module, input_size: int | tuple[int, int], *, batch_size: int = 8) -> float:
    """One image's forward time on the model's device, s: the median of three batched no-grad forwards of zeros of
    ``(batch_size, 3, H, W)`` after a warm-up, divided by ``batch_size``. The model is left as it was (eval under
    ``camlib.guard.eval_mode``; no hooks, no gradients).

    Raises:
        InputError: a non-module model, a bad ``input_size`` or ``batch_size``.
    """
    device = require_model(model)
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    height, width = require_size(input_size, "input_size")
    batch_size = require_int(batch_size, "batch_size", minimum=1)
    x = torch.zeros(batch_size, 3, height, width, device=device)
    times = []
    with eval_mode(model), torch.no_grad():
        for _ in range(4):
            start = time.perf_counter()
            model(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return sorted(times[1:])[1] / batch_size


def time_passes(model: nn.Module, input_size: int | tuple[int, int], *, batch_size: int = 1) -> PassTimes:
    """One image's time of a forward (``time_forward``), of a forward and backward, and of a forward, backward and
    Hessian-vector product on the model's device, s, from batches of zeros of ``(batch_size, 3, H, W)`` divided by
    ``batch_size``: each after a warm-up, the backward the median of three, the Hessian product (the slowest, up to
    ten times a forward) one. The score differentiated is the sum of the first logit; the products are taken with
    respect to the input (``torch.autograd.grad``, never ``backward()``: the parameters' ``.grad`` stay untouched).
    The model is left as it was (eval under ``camlib.guard.eval_mode``).

    Raises:
        InputError: a non-module model, a bad ``input_size`` or ``batch_size``, or a model PyTorch cannot take
            second derivatives of (the ``RuntimeError`` from autograd, named).
    """
    device = require_model(model)
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    height, width = require_size(input_size, "input_size")
    batch_size = require_int(batch_size, "batch_size", minimum=1)
    forward = time_forward(model, (height, width), batch_size=batch_size)

    def timed(second: bool) -> float:
        start = time.perf_counter()
        x = torch.zeros(batch_size, 3, height, width, device=device, requires_grad=True)
        score = model(x).reshape(batch_size, -1)[:, 0].sum()
        try:
            (grad,) = torch.autograd.grad(score, x, create_graph=second)
            if second and grad.requires_grad:  # else the network is piecewise linear in x: no second backward
                torch.autograd.grad(grad, x, grad_outputs=torch.ones_like(grad), allow_unused=True)
        except RuntimeError as error:
            raise InputError(f"model: cannot time its backward passes ({str(error).splitlines()[0]})") from error
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - start) / batch_size

    with eval_mode(model), torch.inference_mode(False), torch.enable_grad():
        backward = sorted([timed(False) for _ in range(4)][1:])[1]
        hessian = [timed(True) for _ in range(2)][1]
    return PassTimes(forward, backward, hessian, *time_eigenproblems())


def time_eigenproblems() -> tuple[float, float]:
    """KPCA-CAM's kernel eigenproblem on ``KERNEL_PROBE`` and Eigen-CAM's SVD on ``SVD_PROBE`` (positions,
    channels) of seeded random activations, s, each timed once on the CPU (where camlib solves them; about 1 s and
    0.3 s on a 2-core laptop CPU). They do not depend on the model."""
    generator = torch.Generator().manual_seed(0)
    times = []
    for solve, (positions, channels) in ((_kernel_projection, KERNEL_PROBE), (eigen_projection, SVD_PROBE)):
        side = math.isqrt(positions)
        acts = torch.relu(torch.randn(1, channels, side, positions // side, generator=generator))
        start = time.perf_counter()
        solve(acts)
        times.append(time.perf_counter() - start)
    return times[0], times[1]
