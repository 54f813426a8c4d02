"""What a CAM computation will cost before it starts: extra forward passes from the method's family and the target
layers' channel counts, and seconds from a measured forward of the model on its device.

Gradient and activation methods cost one forward (plus one backward for gradients) whatever the layer; perturbation
methods (Score-CAM, Wang et al., CVPRW 2020; Ablation-CAM, Desai & Ramaswamy, WACV 2020) run one extra forward per
channel of each target layer, in batches. The page shows the estimate and asks before starting a slow one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from camlib.cam import METHODS
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
        seconds: estimated wall time of the extra forwards, s (0 when there are none).
    """

    method: str
    extra_forwards: int
    batches: int
    seconds: float


def estimate_cost(
    method: str,
    channels: Sequence[int],
    *,
    seconds_per_image: float,
    batch_size: int = 32,
    n_samples: int | None = None,
) -> CostEstimate:
    """The cost of ``method`` on target layers with ``channels`` channels each, for one image.

    Args:
        method: a key of ``camlib.cam.METHODS``.
        channels: the channel count of each target layer (``LayerInfo.channels``), each >= 1.
        seconds_per_image: one image's forward time on the model's device, s (``time_forward``), finite and >= 0.
        batch_size: perturbed inputs per forward (``compute_cams``' ``scorecam_batch_size``), >= 1.
        n_samples: ``compute_cams``' ``n_samples`` for the sampling methods (None: the method's default), >= 1.

    Raises:
        MethodError: an unknown method. InputError: bad ``channels``, ``seconds_per_image`` or ``batch_size``.
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
    if spec.family != "perturbation":
        return CostEstimate(method, 0, 0, 0.0)
    # One forward per channel (Score-CAM, Ablation-CAM), times the samples of SS-CAM and IS-CAM; Smooth Grad-CAM++:
    # one forward and backward per noisy sample. MethodSpec.extra_forwards / batches say which.
    forwards = sum(spec.extra_forwards(c, n_samples) for c in counts)
    batches = sum(spec.batches(c, batch_size, n_samples) for c in counts)
    return CostEstimate(method, forwards, batches, forwards * float(seconds_per_image))


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
