"""Faithfulness metrics of saliency maps: does the model's confidence follow the map?

Every metric takes ``model, x, maps, class_idx`` and the keyword ``targets``:

- ``model``: a ``torch.nn.Module`` returning ``(B, num_classes)`` logits (with ``targets``, any output the targets
  read: a tensor, a dict of batched tensors, a list of per-image outputs); it may be a shared cached model. Only
  ``torch.no_grad`` forwards run on it, under ``camlib.guard.eval_mode`` (modes restored); no hooks, no
  ``backward()``, nothing modified.
- ``x``: ``(B, C, H, W)`` float tensor, already preprocessed (model space); moved to the model's device and dtype.
- ``maps``: ``(B, H, W)`` float numpy array or tensor in ``[0, 1]`` (``CamResult.maps[layer]``), one per image.
- ``class_idx``: the explained class, an int for every image or one per image (``None``: the predicted class).
- ``targets``: instead of ``class_idx``, one callable per image (``camlib.targets``; pytorch-grad-cam 1.5.7's target
  objects work unchanged).

Every metric and sanity check raises ``InputError`` for a bad argument (the message names it) or both ``class_idx``
and ``targets``, ``ClassIndexError`` for a class outside the model's classes, ``TargetError`` for not one target per
image or a target failing on the model's output, and ``NonFiniteError`` when the model or a target produces NaN or
Inf: "the common errors" below.

The score of an input is the softmax probability of the explained class, or with ``targets`` the score
``targets[i](output_i)`` of its image's target as returned (pytorch-grad-cam's metrics score inputs this way, so
``ClassifierOutputSoftmaxTarget(k)`` gives the numbers of ``class_idx=k``). Perturbed inputs are built on the model's
device and run through the model in batches (``batch_size``). Maps are ranked in their own dtype; ROAD reads them as
numpy arrays, as pytorch-grad-cam does.

- ``deletion_insertion``: Petsiuk et al., "RISE", BMVC 2018 (arXiv:1806.07421), section 4.
- ``road``: Rong et al., "A Consistent and Efficient Evaluation Strategy for Attribution Methods", ICML 2022
  (arXiv:2202.00449); numbers as pytorch-grad-cam 1.5.7's ``ROADMostRelevantFirstAverage``,
  ``ROADLeastRelevantFirstAverage`` and ``ROADCombined`` (``pytorch_grad_cam/metrics/road.py``).
- ``average_drop_increase``: Average Drop and Increase in Confidence, Chattopadhay et al., "Grad-CAM++", WACV 2018
  (arXiv:1710.11063), section 5.2.
- ``confidence_change``: pytorch-grad-cam 1.5.7's ``CamMultImageConfidenceChange`` with
  ``ClassifierOutputSoftmaxTarget`` (``pytorch_grad_cam/metrics/cam_mult_image.py``).
- ``baseline_maps``: maps that explain nothing (random, a centred Gaussian, image edges) to compare methods against.
- ``faithfulness_scores``, ``baseline_scores``, ``compare_with_baselines``: deletion, insertion and ROAD of a method's
  maps against those of the baselines; a method that does not beat them is flagged.
- ``cascading_randomization``: the model-parameter randomisation test of Adebayo et al., "Sanity Checks for Saliency
  Maps", NeurIPS 2018 (arXiv:1810.03292), section 3.1, on a deep copy of the model.
- ``random_logit``: the random-logit test of Sixt et al., "When Explanations Lie", ICML 2020 (arXiv:1912.09818),
  a sanity check in Adebayo et al.'s sense: the map of a random other class against the explained class's map, on a
  deep copy of the model.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.transforms.functional as TF
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import spsolve
from scipy.stats import rankdata, spearmanr
from skimage.filters import sobel
from skimage.metrics import structural_similarity
from torch import nn

from camlib.cam import ProgressCallback
from camlib.contracts import (
    describe,
    require_cam_input,
    require_int,
    require_model,
    require_size,
    require_tensor,
    require_unit_range,
    resolve_classes,
)
from camlib.errors import InputError, MethodError, NonFiniteError
from camlib.guard import eval_mode, model_lock
from camlib.targets import ClassIdx, Target, Targets, class_of, resolve_targets, target_scores

# A batch of maps: (B, H, W) float in [0, 1], numpy or torch.
Maps = np.ndarray | torch.Tensor

BLUR_KERNEL = 11  # RISE's evaluation code (eclique/RISE, evaluation.py): blur = gkern(klen=11, nsig=5)
BLUR_SIGMA = 5.0
BASELINES = ("blur", "zeros", "mean")
ROAD_PERCENTILES = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # pytorch-grad-cam's ROAD*Average default
ROAD_ORDERS = ("morf", "lerf", "combined")
# ROAD's linear imputation (Rong et al. 2022, eq. 3; pytorch-grad-cam's neighbors_weights): an imputed pixel is the
# weighted mean of its 8 neighbours, 1/6 for the 4 direct ones and 1/12 for the diagonals. (row, column) offsets, in
# the reference's order.
ROAD_NEIGHBOURS = (
    ((1, 1), 1 / 12),
    ((0, 1), 1 / 6),
    ((-1, 1), 1 / 12),
    ((1, -1), 1 / 12),
    ((0, -1), 1 / 6),
    ((-1, -1), 1 / 12),
    ((1, 0), 1 / 6),
    ((-1, 0), 1 / 6),
)
ROAD_BATCH_SIZE = 64  # imputed inputs per forward
BASELINE_KINDS = ("random", "gaussian", "edges")
GAUSSIAN_SIGMA_SHARE = 0.25  # the "gaussian" baseline map's sigma, as a share of the image's shorter side
# Which way is better for each score of the faithfulness grid (compare_with_baselines, the app, the benchmark).
METRIC_DIRECTIONS = {"deletion_auc": "lower", "insertion_auc": "higher", "road": "higher"}


# --- results -------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeletionInsertion:
    """Deletion and insertion curves (Petsiuk et al., BMVC 2018) of ``B`` maps.

    Attributes:
        fractions: ``(steps + 1,)`` float64, ``k / steps``: the share of pixels deleted (inserted) at step ``k``.
        deletion: ``(B, steps + 1)`` float32, the explained class's probability with the map's top pixels replaced by
            the baseline. Lower area is better.
        insertion: ``(B, steps + 1)`` float32, the probability of the baseline with the map's top pixels restored.
            Higher area is better.
        deletion_auc: ``(B,)`` float64, the area under ``deletion`` over ``fractions`` (trapezoid rule), in [0, 1].
        insertion_auc: ``(B,)`` float64, the area under ``insertion``.
    """

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray
    deletion_auc: np.ndarray
    insertion_auc: np.ndarray


@dataclass(frozen=True)
class RoadResult:
    """ROAD scores (Rong et al., ICML 2022) as pytorch-grad-cam 1.5.7 computes them.

    Attributes:
        percentiles: the thresholds ``p``: at ``p`` MoRF imputes the pixels whose map value is at or above the map's
            ``p``-th percentile (it keeps the lowest ``p`` %), LeRF those whose ``1 - map`` is (it keeps the highest).
        order: "morf", "lerf" or "combined".
        morf: ``(B, len(percentiles))`` float32, probability after imputation minus before, for MoRF (None when
            ``order`` is "lerf"). More negative is better.
        lerf: the same for LeRF (None when ``order`` is "morf"). Closer to 0 is better.
        scores: ``(B,)`` float32, the reference's number: the mean of ``morf`` (``ROADMostRelevantFirstAverage``) or
            of ``lerf`` (``ROADLeastRelevantFirstAverage``) over the percentiles, or ``(lerf - morf) / 2`` of the two
            means (``ROADCombined``, higher is better).
    """

    percentiles: tuple[float, ...]
    order: str
    morf: np.ndarray | None
    lerf: np.ndarray | None
    scores: np.ndarray


@dataclass(frozen=True)
class ConfidenceDrop:
    """Average Drop and Increase in Confidence (Chattopadhay et al., WACV 2018, section 5.2).

    The explanation map of image ``i`` is ``x_i * map_i`` (in model space, as pytorch-grad-cam's
    ``multiply_tensor_with_cam``: for a mean/std-normalised input a map value of 0 gives the dataset's mean colour).

    Attributes:
        original: ``(B,)`` float32, ``Y_i``: the explained class's probability on ``x``.
        explanation: ``(B,)`` float32, ``O_i``: its probability on the explanation map.
        drop: ``(B,)`` float32, ``max(0, Y_i - O_i) / Y_i`` (0 where ``Y_i`` is 0).
        increased: ``(B,)`` bool, ``Y_i < O_i``.
        average_drop: ``100 * mean(drop)``, percent (lower is better).
        increase_in_confidence: ``100 * mean(increased)``, percent (higher is better).
    """

    original: np.ndarray
    explanation: np.ndarray
    drop: np.ndarray
    increased: np.ndarray
    average_drop: float
    increase_in_confidence: float


@dataclass(frozen=True)
class SanityResult:
    """Cascading randomisation (Adebayo et al., NeurIPS 2018, section 3.1): similarity of each image's map on the
    trained model to its map after re-initialising the model's layers one by one, from the logits down.

    Attributes:
        layers: the dotted names of the re-initialised modules, in order; step ``i`` has ``layers[: i + 1]`` random.
        spearman: ``(B, len(layers))`` float64, Spearman's rank correlation of the flattened maps
            (``scipy.stats.spearmanr``; NaN where either map is constant). A faithful method's falls towards 0.
        ssim: ``(B, len(layers))`` float64, ``skimage.metrics.structural_similarity`` with ``data_range=1``.
    """

    layers: tuple[str, ...]
    spearman: np.ndarray
    ssim: np.ndarray


@dataclass(frozen=True)
class RandomLogitResult:
    """The random-logit test (Sixt et al., ICML 2020; a sanity check as Adebayo et al., NeurIPS 2018): each image's map
    for its explained class against its map for a random other class.

    Attributes:
        class_idx: the explained class of each image (``B`` ints).
        other_class_idx: the random other class of each image, never equal to ``class_idx[i]``.
        maps: ``(B, H, W)`` float32, the explained classes' maps as ``explain`` returned them.
        other_maps: ``(B, H, W)`` float32, the other classes' maps.
        spearman: ``(B,)`` float64, Spearman's rank correlation of the two flattened maps (NaN where either is
            constant). Near 1: the map does not depend on the class.
        ssim: ``(B,)`` float64, ``skimage.metrics.structural_similarity`` with ``data_range=1`` (NaN for maps under
            3 px a side).
    """

    class_idx: tuple[int, ...]
    other_class_idx: tuple[int, ...]
    maps: np.ndarray
    other_maps: np.ndarray
    spearman: np.ndarray
    ssim: np.ndarray


# --- input contracts -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Inputs:
    """Checked metric inputs: ``x`` on the model's device and dtype, ``maps`` as a numpy float array."""

    x: torch.Tensor
    maps: np.ndarray
    device: torch.device


def _check_inputs(model: object, x: object, maps: object, batch_size: object = 1) -> _Inputs:
    """Check the common arguments; raise ``InputError`` naming the first bad one."""
    device = require_model(model)
    require_cam_input(x)  # a float (B, C, H, W) tensor with data, not channels-last (as compute_cams checks x)
    require_int(batch_size, "batch_size", minimum=1)
    if isinstance(maps, torch.Tensor):
        require_tensor(maps, "maps", ndim=3, floating=True, expected="float (B, H, W) array or tensor in [0, 1]")
        maps = maps.detach().cpu().numpy()
    if not isinstance(maps, np.ndarray) or maps.dtype.kind != "f" or maps.ndim != 3:
        raise InputError(f"maps must be a float (B, H, W) array or tensor in [0, 1], got {describe(maps)}")
    if maps.shape != (x.shape[0], *x.shape[2:]):
        raise InputError(
            f"maps must have one (H, W) map per image of x, {(x.shape[0], *x.shape[2:])}, got {maps.shape}"
        )
    require_unit_range(maps, "maps")
    maps = maps.astype(np.float32) if maps.dtype == np.float16 else maps
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else x.dtype
    return _Inputs(x.detach().to(device=device, dtype=dtype), maps, device)


def _batches(total: int, batch_size: int) -> Iterator[slice]:
    for start in range(0, total, batch_size):
        yield slice(start, min(start + batch_size, total))


def _logits(model: nn.Module, make: Callable[[slice], torch.Tensor], total: int, batch_size: int) -> torch.Tensor:
    """The ``(total, num_classes)`` float32 logits (on the CPU) of inputs ``0..total-1``, built ``make(batch)`` at a
    time. The caller holds ``eval_mode(model)``; every forward runs under ``torch.no_grad``.

    Raises ``InputError`` when the model does not return ``(N, num_classes)`` and ``NonFiniteError`` when its
    probabilities are not finite (a logit of -inf is fine: probability 0)."""
    out = []
    with torch.no_grad():
        for batch in _batches(total, batch_size):
            logits = model(make(batch))
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise InputError("model must return (B, num_classes) logits")
            if not bool(torch.isfinite(torch.softmax(logits.float(), dim=1)).all()):
                raise NonFiniteError("the model produced non-finite values (NaN or Inf); the metric is undefined")
            out.append(logits.float().cpu())
    return torch.cat(out)


def _scores(logits: torch.Tensor, targets: Sequence[int]) -> torch.Tensor:
    """The softmax probability of class ``targets[i]`` in row ``i`` of ``logits``, ``(N,)`` float32."""
    return torch.softmax(logits, dim=1)[torch.arange(len(targets)), torch.tensor(targets)]


def _targeted_scores(
    model: nn.Module, make: Callable[[slice], torch.Tensor], targets: Sequence[Target], batch_size: int
) -> torch.Tensor:
    """``targets[n](output_n)`` of inputs ``n = 0..len(targets)-1``, built ``make(batch)`` at a time: ``(N,)``
    float32 on the CPU. The caller holds ``eval_mode(model)``; every forward runs under ``torch.no_grad``.

    Raises ``TargetError`` when a target fails on the model's output and ``NonFiniteError`` when a score is not
    finite (``camlib.targets.target_scores``)."""
    out = []
    with torch.no_grad():
        for batch in _batches(len(targets), batch_size):
            out.append(target_scores(targets[batch], model(make(batch))).detach().float().cpu())
    return torch.cat(out)


@dataclass(frozen=True)
class _Scoring:
    """What a metric scores: the checked ``targets`` (one callable per image), or when None ``class_idx`` (checked
    on the logits of the unperturbed images)."""

    class_idx: object
    targets: list[Target] | None

    def scores(
        self,
        model: nn.Module,
        make: Callable[[slice], torch.Tensor],
        image_of: Sequence[int],
        batch_size: int,
        originals: Sequence[int],
    ) -> tuple[torch.Tensor, list[int] | None]:
        """The ``(N,)`` float32 scores of inputs ``0..N-1`` (``make``), input ``n`` being a version of image
        ``image_of[n]``, and the checked class of each image (None with ``targets``). With ``class_idx`` the
        classes are read from the logits of inputs ``originals`` (image ``i``'s own input, ``x_i``)."""
        if self.targets is not None:
            return _targeted_scores(model, make, [self.targets[i] for i in image_of], batch_size), None
        logits = _logits(model, make, len(image_of), batch_size)
        classes = resolve_classes(self.class_idx, logits[list(originals)])
        return _scores(logits, [classes[i] for i in image_of]), classes


def _scoring(class_idx: object, targets: object, batch: int) -> _Scoring:
    """Check ``class_idx`` against ``targets``: ``InputError`` for both, ``TargetError`` for a wrong count."""
    return _Scoring(class_idx, resolve_targets(targets, class_idx, batch))


# --- deletion and insertion ----------------------------------------------------------------------------------------


def blurred(x: torch.Tensor) -> torch.Tensor:
    """RISE's insertion baseline: ``x`` blurred by a Gaussian of sigma ``BLUR_SIGMA`` = 5 px in an
    ``BLUR_KERNEL`` = 11 px square kernel (Petsiuk et al.'s ``gkern(11, 5)``), reflect-padded at the borders
    (``torchvision.transforms.functional.gaussian_blur``). Images under 6 px get the largest kernel reflect padding
    allows, ``2 min(H, W) - 1``.

    Raises ``InputError`` unless ``x`` is a non-empty float ``(B, C, H, W)`` tensor with data."""
    require_tensor(x, "x", ndim=4, floating=True, expected="float tensor (B, C, H, W)")
    kernel = min(BLUR_KERNEL, 2 * min(x.shape[-2:]) - 1)
    return TF.gaussian_blur(x, [kernel, kernel], [BLUR_SIGMA, BLUR_SIGMA])


def _baseline(x: torch.Tensor, baseline: object) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        require_tensor(baseline, "baseline", ndim=4, floating=True, expected=f"float tensor {tuple(x.shape)}")
        if baseline.shape != x.shape:
            raise InputError(f"baseline must have x's shape {tuple(x.shape)}, got {tuple(baseline.shape)}")
        return baseline.detach().to(device=x.device, dtype=x.dtype)
    if not isinstance(baseline, str) or baseline not in BASELINES:
        given = repr(baseline) if isinstance(baseline, str) else describe(baseline)
        raise InputError(f"baseline must be one of {BASELINES} or a tensor of x's shape, got {given}")
    if baseline == "blur":
        return blurred(x)
    if baseline == "zeros":
        return torch.zeros_like(x)
    return x.mean(dim=(2, 3), keepdim=True).expand_as(x)  # "mean"


def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: Maps,
    class_idx: ClassIdx = None,
    *,
    targets: Targets = None,
    steps: int = 20,
    baseline: str | torch.Tensor = "blur",
    batch_size: int = 64,
) -> DeletionInsertion:
    """Deletion and insertion curves and their areas (Petsiuk et al., "RISE", BMVC 2018, section 4).

    Pixels are ranked by map value, highest first, ties by flat index (a stable argsort of ``-map``). At step
    ``k = 0..steps`` the top ``n_k = ceil(k H W / steps)`` pixels (all channels) are replaced by the baseline
    (deletion) or restored onto the baseline (insertion); each curve is the explained class's softmax probability (the
    target's score with ``targets``), its area the trapezoid rule over ``k / steps``. All ``B (2 steps + 2)`` inputs
    go through the model in batches of ``batch_size``.

    Args:
        model, x, maps, class_idx, targets: see the module docstring.
        steps: the number of steps (curve points minus one), at least 1.
        baseline: what removed pixels become, in model space: "blur" (``blurred(x)``, the paper's insertion start),
            "zeros", "mean" (each image's per-channel mean), or a tensor of ``x``'s shape.
        batch_size: inputs per forward.

    Returns:
        ``DeletionInsertion``: curves ``(B, steps + 1)`` and areas ``(B,)``.

    Raises:
        The common errors (module docstring).
    """
    inputs = _check_inputs(model, x, maps, batch_size)
    scoring = _scoring(class_idx, targets, len(inputs.x))
    steps = require_int(steps, "steps", minimum=1)
    x = inputs.x
    images, _, height, width = x.shape
    pixels = height * width
    base = _baseline(x, baseline)
    with eval_mode(model):
        flat = torch.from_numpy(inputs.maps).reshape(images, pixels)
        order = torch.argsort(-flat, dim=1, stable=True)
        rank = torch.empty_like(order).scatter_(1, order, torch.arange(pixels).expand(images, pixels))
        rank = rank.reshape(images, 1, height, width).to(inputs.device)
        counts = torch.tensor([-(-k * pixels // steps) for k in range(steps + 1)], device=inputs.device)
        # Input i is image i // (2 (steps + 1)); then deletion steps 0..steps, then insertion steps 0..steps.
        per_image = 2 * (steps + 1)
        index = torch.arange(images * per_image, device=inputs.device)
        image_of, within = index // per_image, index % per_image
        step_of, inserting = within % (steps + 1), within >= steps + 1

        def make(batch: slice) -> torch.Tensor:
            b = image_of[batch]
            top = rank[b] < counts[step_of[batch]][:, None, None, None]
            # deletion: the top pixels from the baseline; insertion: the top pixels from x, the rest from the baseline
            take_x = top == inserting[batch][:, None, None, None]
            return torch.where(take_x, x[b], base[b])

        # Deletion step 0 is x itself: its logits pick and check the classes (no separate forward of x).
        total = images * per_image
        scores, _ = scoring.scores(
            model, make, [n // per_image for n in range(total)], batch_size, range(0, total, per_image)
        )
    curves = scores.reshape(images, 2, steps + 1).numpy()
    fractions = np.arange(steps + 1) / steps
    deletion, insertion = curves[:, 0], curves[:, 1]
    return DeletionInsertion(
        fractions=fractions,
        deletion=deletion,
        insertion=insertion,
        deletion_auc=np.trapezoid(deletion.astype(np.float64), fractions, axis=1),
        insertion_auc=np.trapezoid(insertion.astype(np.float64), fractions, axis=1),
    )


# --- ROAD ----------------------------------------------------------------------------------------------------------


def _impute(image: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """ROAD's linear imputation (pytorch-grad-cam's ``NoisyLinearImputer`` without its noise): every pixel where
    ``keep`` (H, W) is False becomes the ``ROAD_NEIGHBOURS``-weighted mean of its in-image neighbours, known or
    imputed, by one sparse linear solve (``scipy.sparse.linalg.spsolve``, float64) for all channels of ``image``
    (C, H, W) float32. Returns the solution ``(N_missing, C)`` as float32, in flat-index order. With no kept pixel
    the system is singular (no value to spread); the reference's solver returns zeros there, and so do we."""
    channels, height, width = image.shape
    kept = keep.reshape(-1)
    missing = np.flatnonzero(~kept)
    count = len(missing)
    if not kept.any():
        return np.zeros((count, channels), np.float32)
    variable = np.zeros(kept.size, dtype=np.int64)
    variable[missing] = np.arange(count)
    flat = image.reshape(channels, -1)
    rows, columns = missing // width, missing % width
    b = np.zeros((count, channels))
    inside_weight = np.ones(count)
    entries_i, entries_j, entries_w = [np.arange(count)], [np.arange(count)], []
    for (dy, dx), weight in ROAD_NEIGHBOURS:
        inside = (rows + dy >= 0) & (rows + dy < height) & (columns + dx >= 0) & (columns + dx < width)
        inside_weight[~inside] -= weight
        ids = np.flatnonzero(inside)
        neighbour = missing[ids] + dy * width + dx
        known = kept[neighbour]
        b[ids[known]] -= weight * flat[:, neighbour[known]].T
        entries_i.append(ids[~known])
        entries_j.append(variable[neighbour[~known]])
        entries_w.append(np.full(int((~known).sum()), weight))
    values = np.concatenate([-inside_weight, *entries_w])
    matrix = coo_matrix((values, (np.concatenate(entries_i), np.concatenate(entries_j))), shape=(count, count))
    solution = spsolve(matrix.tocsc(), b)
    return np.asarray(solution, dtype=np.float32).reshape(count, channels)


def _road_inputs(
    x: np.ndarray, maps: np.ndarray, percentiles: Sequence[float], *, least_relevant: bool, noise: float, generator
) -> np.ndarray:
    """``(P, B, C, H, W)`` float32: image ``b`` with the pixels at or above the ``p``-th percentile of its map (of
    ``1 - map`` for LeRF) imputed, as pytorch-grad-cam's ``RemoveMostRelevantFirst``/``RemoveLeastRelevantFirst``.
    Noise is drawn percentile by percentile, image by image, as the reference draws it from the global RNG."""
    out = np.repeat(x[None], len(percentiles), axis=0)
    for p_index, percentile in enumerate(percentiles):
        for b, cam in enumerate(maps):
            ranked = np.asarray(1, cam.dtype) - cam if least_relevant else cam
            keep = ranked < np.percentile(ranked, percentile)
            solution = _impute(x[b], keep)
            filled = torch.from_numpy(solution.T.copy())
            filled = filled + noise * torch.randn(filled.shape, generator=generator, dtype=filled.dtype)
            out[p_index, b].reshape(x.shape[1], -1)[:, ~keep.reshape(-1)] = filled.numpy()
    return out


def _check_percentiles(percentiles: object) -> tuple[float, ...]:
    if (
        not isinstance(percentiles, Sequence)
        or isinstance(percentiles, str)
        or not percentiles
        or any(isinstance(p, bool) or not isinstance(p, int | float | np.number) for p in percentiles)
        or not all(0 <= float(p) <= 100 for p in percentiles)
    ):
        raise InputError(f"percentiles must be a non-empty sequence of numbers in [0, 100], got {percentiles!r}")
    return tuple(percentiles)


def road(  # noqa: PLR0913 (keyword-only options of a public metric)
    model: nn.Module,
    x: torch.Tensor,
    maps: Maps,
    class_idx: ClassIdx = None,
    *,
    targets: Targets = None,
    percentiles: Sequence[float] = ROAD_PERCENTILES,
    order: str = "combined",
    noise: float = 0.01,
    seed: int = 0,
) -> RoadResult:
    """ROAD, RemOve And Debias (Rong et al., ICML 2022), as pytorch-grad-cam 1.5.7's ``ROAD*`` metrics.

    For each percentile ``p`` and image, MoRF imputes the pixels whose map value is at or above the map's ``p``-th
    percentile (``np.percentile``, linear), LeRF the pixels whose ``1 - map`` is. Imputed pixels are the
    ``ROAD_NEIGHBOURS``-weighted mean of their neighbours (one sparse linear solve per image and percentile, on the
    CPU with scipy, as the reference) plus Gaussian noise of standard deviation ``noise``. The score is the explained
    class's softmax probability after imputation minus before (``ClassifierOutputSoftmaxTarget``; with ``targets``,
    each image's target score after minus before, as the reference scores its ``targets``). The imputed
    inputs go through the model ``ROAD_BATCH_SIZE`` at a time.

    With ``noise=0`` the scores equal the reference's (whose imputer hard-codes noise 0.01; its noise comes from the
    global torch RNG: after ``torch.manual_seed(seed)`` it draws what this function draws with ``seed``, which never
    touches the global RNG).

    Args:
        model, x, maps, class_idx, targets: see the module docstring.
        percentiles: thresholds in [0, 100].
        order: "morf" (most relevant first), "lerf" (least relevant first) or "combined" (both, LeRF drawn first).
        noise: standard deviation of the imputation noise, in model-space units; 0 for none.
        seed: seed of the noise.

    Returns:
        ``RoadResult`` (per-percentile changes and the reference's score per image).

    Raises:
        The common errors (module docstring).
    """
    inputs = _check_inputs(model, x, maps)
    scoring = _scoring(class_idx, targets, len(inputs.x))
    percentiles = _check_percentiles(percentiles)
    if not isinstance(order, str) or order not in ROAD_ORDERS:
        raise InputError(f"order must be one of {ROAD_ORDERS}, got {order!r}")
    if isinstance(noise, bool) or not isinstance(noise, int | float) or not 0 <= noise < float("inf"):
        raise InputError(f"noise must be a finite number >= 0 (a standard deviation in model space), got {noise!r}")
    generator = torch.Generator().manual_seed(require_int(seed, "seed", minimum=0))
    x_cpu = inputs.x.float().cpu().numpy()
    changes: dict[str, np.ndarray] = {}
    images = len(x_cpu)
    with eval_mode(model):
        before, classes = scoring.scores(model, lambda batch: inputs.x[batch], range(images), images, range(images))
        if classes is not None:
            scoring = _Scoring(classes, None)  # the classes picked on x, for every imputed input
        for name in ("lerf", "morf"):  # ROADCombined runs LeRF first, so the noise is drawn in the same order
            if order not in (name, "combined"):
                continue
            perturbed = _road_inputs(
                x_cpu, inputs.maps, percentiles, least_relevant=name == "lerf", noise=noise, generator=generator
            )
            flat = torch.from_numpy(perturbed.reshape(-1, *x_cpu.shape[1:]))
            after, _ = scoring.scores(
                model,
                lambda batch, flat=flat: flat[batch].to(device=inputs.device, dtype=inputs.x.dtype),
                [n % images for n in range(len(flat))],
                ROAD_BATCH_SIZE,
                range(images),
            )
            changes[name] = (after.reshape(len(percentiles), -1) - before).T.numpy()
    means = {name: np.mean(change, axis=1, dtype=np.float32) for name, change in changes.items()}
    scores = (means["lerf"] - means["morf"]) / 2 if order == "combined" else means[order]
    return RoadResult(percentiles, order, changes.get("morf"), changes.get("lerf"), scores.astype(np.float32))


# --- confidence with the map applied -------------------------------------------------------------------------------


def _explanation_scores(
    model: nn.Module, x: torch.Tensor, maps: Maps, class_idx: object, *, targets: object, batch_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The explained class's probability (the target's score) on ``x`` and on ``x * map``, each ``(B,)`` float32 on
    the CPU."""
    inputs = _check_inputs(model, x, maps, batch_size)
    scoring = _scoring(class_idx, targets, len(inputs.x))
    weights = torch.from_numpy(inputs.maps).to(device=inputs.device, dtype=inputs.x.dtype)[:, None]
    images = len(inputs.x)
    both = torch.cat([torch.ones_like(weights), weights])  # x itself, then x * map: one pass for both

    def make(batch: slice) -> torch.Tensor:
        return inputs.x[torch.arange(batch.start, batch.stop) % images] * both[batch]

    with eval_mode(model):
        scores, _ = scoring.scores(model, make, [n % images for n in range(2 * images)], batch_size, range(images))
    return scores[:images], scores[images:]


def confidence_change(
    model: nn.Module,
    x: torch.Tensor,
    maps: Maps,
    class_idx: ClassIdx = None,
    *,
    targets: Targets = None,
    batch_size: int = 64,
) -> np.ndarray:
    """``p(x * map) - p(x)`` per image, ``(B,)`` float32: pytorch-grad-cam 1.5.7's ``CamMultImageConfidenceChange``
    with ``ClassifierOutputSoftmaxTarget(class)`` (the input multiplied by the map in model space), or with the
    ``targets`` given (the reference's ``targets`` argument).

    Raises the common errors (module docstring)."""
    before, after = _explanation_scores(model, x, maps, class_idx, targets=targets, batch_size=batch_size)
    return (after - before).numpy()


def average_drop_increase(
    model: nn.Module,
    x: torch.Tensor,
    maps: Maps,
    class_idx: ClassIdx = None,
    *,
    targets: Targets = None,
    batch_size: int = 64,
) -> ConfidenceDrop:
    """Average Drop ``100 / N sum_i max(0, Y_i - O_i) / Y_i`` and Increase in Confidence ``100 / N sum_i [Y_i < O_i]``
    (Chattopadhay et al., "Grad-CAM++", WACV 2018, section 5.2, eq. 22-23), with ``Y_i`` the explained class's
    softmax probability on image ``x_i`` and ``O_i`` on its explanation map ``x_i * map_i`` (model space); with
    ``targets``, image ``i``'s target score. ``drop`` is pytorch-grad-cam 1.5.7's ``DropInConfidence`` divided by
    ``Y_i``, ``increased`` its ``IncreaseInConfidence``.

    Raises the common errors (module docstring)."""
    before, after = (
        t.numpy() for t in _explanation_scores(model, x, maps, class_idx, targets=targets, batch_size=batch_size)
    )
    drop = np.where(before > 0, np.maximum(before - after, 0) / np.where(before > 0, before, 1), 0).astype(np.float32)
    increased = before < after
    return ConfidenceDrop(
        original=before,
        explanation=after,
        drop=drop,
        increased=increased,
        average_drop=float(100 * drop.mean()),
        increase_in_confidence=float(100 * increased.mean()),
    )


# --- baselines -----------------------------------------------------------------------------------------------------


def baseline_maps(x: torch.Tensor | tuple[int, int, int], kind: str = "random", *, seed: int = 0) -> np.ndarray:
    """Maps that explain nothing, ``(B, H, W)`` float32 in [0, 1], to compare a CAM method's scores against.

    - "random": independent uniform values from ``numpy.random.default_rng(seed)`` (one draw for the batch).
    - "gaussian": ``exp(-r^2 / (2 sigma^2))`` around the image centre ``((H - 1) / 2, (W - 1) / 2)``, ``sigma`` a
      quarter of the shorter side (``GAUSSIAN_SIGMA_SHARE``): the centre bias of photos.
    - "edges": the Sobel gradient magnitude (``skimage.filters.sobel``) of each image's channel mean, divided by its
      maximum (zeros for a flat image).

    Args:
        x: the ``(B, C, H, W)`` float input (needed for "edges"), or a ``(B, H, W)`` shape.
        kind: "random", "gaussian" or "edges".
        seed: the seed of "random" (the others are deterministic).

    Raises:
        InputError: unknown ``kind``, a bad ``x`` or shape (or a shape for "edges"), a negative ``seed``.
    """
    if not isinstance(kind, str) or kind not in BASELINE_KINDS:
        raise InputError(f"kind must be one of {BASELINE_KINDS}, got {kind!r}")
    seed = require_int(seed, "seed", minimum=0)
    if isinstance(x, torch.Tensor):
        require_tensor(x, "x", ndim=4, floating=True, expected="float tensor (B, C, H, W) or a (B, H, W) shape")
        images, height, width = x.shape[0], x.shape[2], x.shape[3]
    elif isinstance(x, tuple | list) and len(x) == 3 and kind != "edges":
        images = require_int(x[0], "x (the batch size of a (B, H, W) shape)", minimum=1)
        height, width = require_size(tuple(x[1:]), "x (the (H, W) of a (B, H, W) shape)")
    else:
        needs = "a float tensor (B, C, H, W)" if kind == "edges" else "a float tensor (B, C, H, W) or a (B, H, W) shape"
        raise InputError(f"x must be {needs} for {kind!r} maps, got {describe(x) if x is not None else 'None'}")
    if kind == "random":
        return np.random.default_rng(seed).random((images, height, width), dtype=np.float32)
    if kind == "gaussian":
        sigma = GAUSSIAN_SIGMA_SHARE * min(height, width)
        rows = (np.arange(height) - (height - 1) / 2)[:, None]
        columns = (np.arange(width) - (width - 1) / 2)[None, :]
        gaussian = np.exp(-(rows**2 + columns**2) / (2 * sigma**2)).astype(np.float32)
        return np.repeat(gaussian[None], images, axis=0)
    edges = np.stack([sobel(image) for image in x.detach().float().mean(dim=1).cpu().numpy()])
    peak = edges.reshape(images, -1).max(axis=1)[:, None, None]
    return np.divide(edges, peak, out=np.zeros_like(edges), where=peak > 0).astype(np.float32)


# --- against the baselines -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FaithfulnessScores:
    """Deletion, insertion and ROAD of ``B`` maps, as ``faithfulness_scores`` computes them.

    Attributes:
        curves: the ``DeletionInsertion`` curves and areas.
        road: the ``RoadResult`` (``order="combined"``).
    """

    curves: DeletionInsertion
    road: RoadResult

    @property
    def summary(self) -> dict[str, np.ndarray]:
        """``{metric: (B,) float64}`` for every key of ``METRIC_DIRECTIONS``: deletion AUC, insertion AUC, ROAD."""
        return {
            "deletion_auc": self.curves.deletion_auc.astype(np.float64),
            "insertion_auc": self.curves.insertion_auc.astype(np.float64),
            "road": self.road.scores.astype(np.float64),
        }


def faithfulness_scores(  # noqa: PLR0913 (keyword-only options of a public metric)
    model: nn.Module,
    x: torch.Tensor,
    maps: Maps,
    class_idx: ClassIdx = None,
    *,
    targets: Targets = None,
    steps: int = 20,
    baseline: str | torch.Tensor = "blur",
    noise: float = 0.01,
    seed: int = 0,
) -> FaithfulnessScores:
    """``deletion_insertion`` (``steps``, ``baseline``) and ``road`` (``order="combined"``, the default percentiles,
    ``noise``, ``seed``) of the same maps: the three numbers of the app's faithfulness grid and of
    ``benchmarks/bench_faithfulness.py``. Arguments, errors and sources as those two functions."""
    curves = deletion_insertion(model, x, maps, class_idx, targets=targets, steps=steps, baseline=baseline)
    scores = road(model, x, maps, class_idx, targets=targets, order="combined", noise=noise, seed=seed)
    return FaithfulnessScores(curves, scores)


def baseline_scores(
    model: nn.Module,
    x: torch.Tensor,
    class_idx: ClassIdx = None,
    *,
    targets: Targets = None,
    kinds: Sequence[str] = BASELINE_KINDS,
    seed: int = 0,
    **options: object,
) -> dict[str, FaithfulnessScores]:
    """``faithfulness_scores`` of each ``baseline_maps(x, kind, seed=seed)``: what a map that explains nothing scores
    on these images, for ``class_idx`` or ``targets``. ``options`` go to ``faithfulness_scores`` (``seed`` is also
    ROAD's noise seed).

    Returns ``{kind: FaithfulnessScores}`` in the order of ``kinds``. Raises ``InputError`` for an unknown kind or a
    bad argument, and what ``faithfulness_scores`` raises."""
    if (
        isinstance(kinds, str)
        or not isinstance(kinds, Sequence)
        or not kinds
        or any(not isinstance(kind, str) or kind not in BASELINE_KINDS for kind in kinds)
    ):
        raise InputError(f"kinds must be a non-empty sequence of {BASELINE_KINDS}, got {kinds!r}")
    if unknown := sorted(set(options) - {"steps", "baseline", "noise"}):
        raise InputError(f"unknown options {unknown} for faithfulness_scores; the options are steps, baseline, noise")
    return {
        kind: faithfulness_scores(
            model, x, baseline_maps(x, kind, seed=seed), class_idx, targets=targets, seed=seed, **options
        )
        for kind in kinds
    }


@dataclass(frozen=True)
class BaselineComparison:
    """Whether a method's mean scores beat those of maps that explain nothing (``compare_with_baselines``).

    Attributes:
        method: ``{metric: mean score}`` of the method over its images.
        baselines: ``{kind: {metric: mean score}}`` of each baseline.
        beats: ``{metric: {kind: bool}}``: the method's mean is better than the baseline's by more than the margin
            (lower for "deletion_auc", higher for "insertion_auc" and "road": ``METRIC_DIRECTIONS``).
        failures: the ``(metric, kind)`` pairs the method does not beat, in the order of ``beats``.
        flagged: True when ``failures`` is not empty: on some metric the method is no better than a map that explains
            nothing.
    """

    method: dict[str, float]
    baselines: dict[str, dict[str, float]]
    beats: dict[str, dict[str, bool]]
    failures: tuple[tuple[str, str], ...]
    flagged: bool


def _mean_scores(scores: object, what: str) -> dict[str, float]:
    """``{metric: mean}`` of a ``FaithfulnessScores`` or of a mapping from ``METRIC_DIRECTIONS`` keys to a number or
    a non-empty array of finite numbers; ``InputError`` naming ``what`` otherwise."""
    if isinstance(scores, FaithfulnessScores):
        scores = scores.summary
    if not isinstance(scores, Mapping) or not scores:
        raise InputError(f"{what} must be a FaithfulnessScores or a non-empty {{metric: scores}} mapping")
    means = {}
    for metric, values in scores.items():
        if metric not in METRIC_DIRECTIONS:
            raise InputError(f"{what} has an unknown metric {metric!r}; known: {tuple(METRIC_DIRECTIONS)}")
        try:
            array = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values)
        except ValueError as exc:  # ragged nested lists
            raise InputError(f"{what}[{metric!r}] must be finite numbers, got {describe(values)}") from exc
        if array.dtype.kind not in "fiu" or array.size == 0 or not np.isfinite(array).all():
            raise InputError(f"{what}[{metric!r}] must be finite numbers, got {describe(values)}")
        means[metric] = float(array.mean())
    return means


def compare_with_baselines(
    method_scores: FaithfulnessScores | Mapping[str, object],
    baselines: Mapping[str, FaithfulnessScores | Mapping[str, object]],
    *,
    margin: float = 0.0,
) -> BaselineComparison:
    """Does a method beat the maps that explain nothing? After the sanity-check argument of Adebayo et al.
    (NeurIPS 2018): a saliency method should be judged against model-independent maps (a seeded random
    map, a centred Gaussian, Sobel edges: ``baseline_maps``/``baseline_scores``).

    Each metric's mean over the images is compared with each baseline's: the method beats a baseline on a metric when
    it is better by more than ``margin`` (deletion AUC lower, insertion AUC and ROAD higher). It is flagged when it
    fails to beat some baseline on some metric.

    Args:
        method_scores: the method's ``FaithfulnessScores``, or ``{metric: (B,) scores or a number}`` with keys of
            ``METRIC_DIRECTIONS``.
        baselines: ``{kind: scores}`` in the same form (``baseline_scores``' result); each must have every metric of
            ``method_scores``.
        margin: how much better than a baseline counts as beating it, in the metric's units, ``>= 0``.

    Returns:
        ``BaselineComparison``.

    Raises:
        InputError: no baselines, an unknown or missing metric, scores that are not finite numbers, a bad margin.
    """
    if isinstance(margin, bool) or not isinstance(margin, int | float) or not 0 <= margin < float("inf"):
        raise InputError(f"margin must be a finite number >= 0, got {margin!r}")
    method = _mean_scores(method_scores, "method_scores")
    if not isinstance(baselines, Mapping) or not baselines:
        raise InputError("baselines must be a non-empty {kind: scores} mapping (see baseline_scores)")
    means = {str(kind): _mean_scores(scores, f"baselines[{kind!r}]") for kind, scores in baselines.items()}
    for kind, scores in means.items():
        if missing := sorted(set(method) - set(scores)):
            raise InputError(f"baselines[{kind!r}] lacks the metrics {missing} that method_scores has")
    beats = {
        metric: {
            kind: (value - scores[metric] if METRIC_DIRECTIONS[metric] == "higher" else scores[metric] - value) > margin
            for kind, scores in means.items()
        }
        for metric, value in method.items()
    }
    failures = tuple((metric, kind) for metric, row in beats.items() for kind, won in row.items() if not won)
    return BaselineComparison(method, means, beats, failures, bool(failures))


def rank_by_faithfulness(means: Mapping[object, Mapping[str, float]]) -> list[object]:
    """Order candidates (e.g. ``(method, layer)`` cells of the faithfulness grid) best first by their mean rank over
    the metrics (``scipy.stats.rankdata``, ties averaged, each metric in its ``METRIC_DIRECTIONS``), ties kept in the
    input's order. Ranks, not raw values: the three scores have different scales.

    Args:
        means: ``{candidate: {metric: mean score}}``; every candidate has the same metrics, keys of
            ``METRIC_DIRECTIONS``, finite.

    Returns:
        The candidates, best first.

    Raises:
        InputError: an empty mapping, unknown or differing metrics, scores that are not finite numbers.
    """
    if not isinstance(means, Mapping) or not means:
        raise InputError("means must be a non-empty {candidate: {metric: score}} mapping")
    rows = {key: _mean_scores(scores, f"means[{key!r}]") for key, scores in means.items()}
    metrics = set(next(iter(rows.values())))
    if any(set(row) != metrics for row in rows.values()):
        raise InputError(f"every candidate in means must have the same metrics, {sorted(metrics)}")
    keys = list(rows)
    total = np.zeros(len(keys))
    for metric in metrics:
        values = np.array([rows[key][metric] for key in keys])
        total += rankdata(-values if METRIC_DIRECTIONS[metric] == "higher" else values)
    return [keys[i] for i in np.argsort(total, kind="stable")]


# --- sanity checks -------------------------------------------------------------------------------------------------


Explain = Callable[[nn.Module, torch.Tensor, list[int] | list[Target]], np.ndarray]


def _reinitialize(module: nn.Module, generator: torch.Generator, seed: int) -> None:
    """Re-initialise ``module``'s own parameters as at construction (``reset_parameters`` under a forked, seeded
    global RNG, so the caller's RNG is untouched), else draw them from ``N(0, std of the old values)``."""
    if hasattr(module, "reset_parameters"):
        devices = [p.device.index or 0 for p in module.parameters(recurse=False) if p.device.type == "cuda"][:1]
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(seed)
            module.reset_parameters()
        return
    with torch.no_grad():
        for parameter in module.parameters(recurse=False):
            noise = torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype)
            parameter.copy_(noise.to(parameter.device) * parameter.float().std().nan_to_num(1.0).to(parameter.dtype))


def _similarities(reference: np.ndarray, other: np.ndarray) -> tuple[float, float]:
    # A constant map has no ranking (Spearman undefined): NaN, without scipy's ConstantInputWarning (and without
    # a process-wide swap of the warning filters, which is not thread-safe across sessions).
    constant = np.ptp(reference) == 0 or np.ptp(other) == 0
    rank = np.nan if constant else float(spearmanr(reference.ravel(), other.ravel()).statistic)
    window = min(7, *(side - (side + 1) % 2 for side in reference.shape))  # odd and within the map
    ssim = structural_similarity(reference, other, data_range=1.0, win_size=window) if window >= 3 else np.nan
    return rank, float(ssim)


def cascading_randomization(
    model: nn.Module,
    x: torch.Tensor,
    class_idx: ClassIdx,
    explain: Explain,
    *,
    targets: Targets = None,
    seed: int = 0,
    progress: ProgressCallback | None = None,
) -> SanityResult:
    """The model-parameter randomisation test (Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018,
    section 3.1): re-initialise the layers of a deep copy of ``model`` one by one from the logits down (each module
    with parameters of its own, in reverse ``named_modules`` order, cumulatively) and compare each image's map after
    every step with its map on the trained model (Spearman rank correlation and SSIM, as the paper).

    ``model`` itself is only deep-copied (under its lock): its weights, modes, hooks and gradients stay as they were.

    Args:
        model, x, class_idx, targets: see the module docstring (the classes are checked on ``model``'s logits for
            ``x``, the targets on its output: ``class_idx`` must then be None).
        explain: ``explain(model_copy, x, classes) -> (B, H', W')`` maps in [0, 1], e.g.
            ``lambda m, x, k: compute_cams(m, x, ["layer4"], class_idx=k).maps["layer4"]``; called ``L + 1`` times.
            With ``targets`` it gets the list of targets in place of the classes, e.g.
            ``lambda m, x, t: compute_cams(m, x, ["layer4"], targets=t).maps["layer4"]``.
        seed: seeds the re-initialisations (layer ``i`` uses ``seed + i``).
        progress: ``callback(done, total)`` after each ``explain`` call (``total = len(layers) + 1``); it may raise to
            cancel (the copy is dropped, the shared model was never touched).

    Returns:
        ``SanityResult``: the re-initialised layers in order and each image's similarity after each step.

    Raises:
        InputError: a model without parameters, or ``explain`` not returning one map in [0, 1] per image.
        And the common errors (module docstring).
    """
    x, explained, _, randomized = _sanity_setup(model, x, class_idx, targets, explain)
    seed = require_int(seed, "seed", minimum=0)
    if progress is not None and not callable(progress):
        raise InputError(f"progress must be None or a callable (done, total), got {describe(progress)}")
    layers = [name for name, m in randomized.named_modules() if next(m.parameters(recurse=False), None) is not None]
    if not layers:
        raise InputError("model has no parameters to randomise")
    layers.reverse()
    reference = _explained(explain, randomized, x, explained)
    if progress is not None:
        progress(1, len(layers) + 1)
    generator = torch.Generator().manual_seed(seed)
    modules = dict(randomized.named_modules())
    spearman, ssim = np.zeros((len(x), len(layers))), np.zeros((len(x), len(layers)))
    for step, name in enumerate(layers):
        _reinitialize(modules[name], generator, seed + step)
        for b, (before, after) in enumerate(zip(reference, _explained(explain, randomized, x, explained))):
            spearman[b, step], ssim[b, step] = _similarities(before, after)
        if progress is not None:
            progress(step + 2, len(layers) + 1)
    return SanityResult(tuple(layers), spearman, ssim)


def _sanity_setup(
    model: nn.Module, x: torch.Tensor, class_idx: object, targets: object, explain: object
) -> tuple[torch.Tensor, list[int] | list[Target], int | None, nn.Module]:
    """Check the sanity checks' common arguments; return ``x`` on the model's device, what ``explain`` explains (the
    checked classes, or the targets, checked on the model's output for ``x``), the number of classes (None when the
    output is not ``(B, num_classes)`` logits) and a deep copy of ``model`` in eval mode (copied under the model's
    lock: the shared model is only read)."""
    device = require_model(model)
    require_cam_input(x)  # a float (B, C, H, W) tensor with data, not channels-last (as compute_cams checks x)
    if not callable(explain):
        raise InputError(f"explain must be a callable (model, x, classes) -> maps, got {describe(explain)}")
    x = x.detach().to(device)
    checked = resolve_targets(targets, class_idx, len(x))
    with eval_mode(model):
        if checked is None:
            logits = _logits(model, lambda batch: x[batch], len(x), len(x))
            explained, num_classes = resolve_classes(class_idx, logits), int(logits.shape[1])
        else:
            with torch.no_grad():
                output = model(x)
            target_scores(checked, output)  # every target reads the output and scores it finitely, before any map
            explained = checked
            num_classes = output.shape[1] if isinstance(output, torch.Tensor) and output.dim() == 2 else None
    with model_lock(model):
        copied = copy.deepcopy(model)
    return x, explained, num_classes, copied.eval()


def _explained(explain: Explain, network: nn.Module, x: torch.Tensor, explained: list) -> np.ndarray:
    """``explain(network, x, explained)`` (classes or targets) as ``(B, H, W)`` float64; ``InputError`` unless it is
    one float map in [0, 1] per image."""
    maps = explain(network, x, list(explained))
    maps = maps.detach().cpu().numpy() if isinstance(maps, torch.Tensor) else maps
    if not isinstance(maps, np.ndarray) or maps.ndim != 3 or len(maps) != len(x) or maps.dtype.kind != "f":
        raise InputError(f"explain must return (B, H, W) float maps, one per image, got {describe(maps)}")
    require_unit_range(maps, "explain's maps")  # NaN or unscaled maps would give NaN or meaningless similarities
    return maps.astype(np.float64)


def random_logit(
    model: nn.Module, x: torch.Tensor, class_idx: ClassIdx, explain: Explain, *, targets: Targets = None, seed: int = 0
) -> RandomLogitResult:
    """The random-logit test (Sixt, Granz and Landgraf, "When Explanations Lie: Why Many Modified BP Attributions
    Fail", ICML 2020, arXiv:1912.09818; Quantus's ``RandomLogit``), a sanity check in the sense of Adebayo et al.,
    NeurIPS 2018: compare each image's map for its explained class with its map for a random other class (Spearman and
    SSIM, as ``cascading_randomization``). A method whose maps hardly depend on the class (similarity near 1) does not
    explain the class.

    The other class of image ``i`` is uniform over the model's classes except ``class_idx[i]``, drawn from
    ``numpy.random.default_rng(seed)`` (the global RNGs are untouched). Both maps come from one ``explain`` call on a
    deep copy of ``model`` (copied under its lock; the shared model's weights, modes, hooks and gradients stay as they
    were), with the batch ``x`` twice: explained classes first, other classes second.

    With ``targets`` each must explain one class of ``(B, num_classes)`` logits (``camlib.targets.class_of``: the
    logit, softmax and sigmoid targets, pytorch-grad-cam's classifier targets); the other class's target is the same
    kind of target for the other class, and ``explain`` gets the ``2B`` targets in place of the classes.

    Args:
        model, x, class_idx, targets: see the module docstring (``None``: the predicted classes; checked on
            ``model``'s logits).
        explain: ``explain(model_copy, x2, classes) -> (2B, H', W')`` float maps in [0, 1], one per image of ``x2``,
            e.g. ``lambda m, x, k: compute_cams(m, x, ["layer4"], class_idx=k).maps["layer4"]``; called once. With
            ``targets``: ``lambda m, x, t: compute_cams(m, x, ["layer4"], targets=t).maps["layer4"]``.
        seed: seeds the choice of the other classes, ``>= 0``.

    Returns:
        ``RandomLogitResult``: the classes, both maps and their Spearman correlation and SSIM per image.

    Raises:
        InputError: a model with fewer than 2 classes, or ``explain`` not returning one map in [0, 1] per image.
        MethodError: a target that explains no class of ``(B, num_classes)`` logits.
        And the common errors (module docstring).
    """
    x, explained, num_classes, copied = _sanity_setup(model, x, class_idx, targets, explain)
    seed = require_int(seed, "seed", minimum=0)
    classes = _target_classes(explained, num_classes) if targets is not None else explained
    if num_classes < 2:
        raise InputError(f"the random-logit test needs a model with at least 2 classes, this one has {num_classes}")
    draws = np.random.default_rng(seed).integers(num_classes - 1, size=len(x))
    others = [int(d) + int(d >= k) for d, k in zip(draws, classes)]  # uniform over the classes other than k
    if targets is not None:
        others_explained = [_for_class(target, k) for target, k in zip(explained, others)]
    else:
        others_explained = others
    both = _explained(explain, copied, torch.cat([x, x]), list(explained) + others_explained)
    explained, other = both[: len(x)], both[len(x) :]
    similarity = np.array([_similarities(a, b) for a, b in zip(explained, other)]).reshape(len(x), 2)
    return RandomLogitResult(
        class_idx=tuple(classes),
        other_class_idx=tuple(others),
        maps=explained.astype(np.float32),
        other_maps=other.astype(np.float32),
        spearman=similarity[:, 0],
        ssim=similarity[:, 1],
    )


def _target_classes(targets: Sequence[Target], num_classes: int | None) -> list[int]:
    """The class each target explains; ``MethodError`` unless every target explains one class of ``(B, C)`` logits
    (the random-logit test swaps the class for another one)."""
    if num_classes is None:
        raise MethodError(
            "the random-logit test swaps each image's class for another class, so it needs a model returning "
            "(B, num_classes) logits; this model's output is not"
        )
    classes = [class_of(target) for target in targets]
    if None in classes:
        index = classes.index(None)
        raise MethodError(
            f"the random-logit test swaps each image's class for another class; targets[{index}] "
            f"({type(targets[index]).__name__}) explains no class (use a class target: ClassTarget, SoftmaxTarget, "
            "SigmoidTarget or pytorch-grad-cam's ClassifierOutputTarget)"
        )
    return resolve_classes(classes, torch.empty(len(classes), num_classes))


def _for_class(target: Target, category: int) -> Target:
    """The same kind of class target as ``target`` for class ``category``: camlib's frozen dataclasses by
    ``dataclasses.replace``, pytorch-grad-cam's classifier targets by their one-argument constructor."""
    if dataclasses.is_dataclass(target):
        return dataclasses.replace(target, category=category)
    return type(target)(category)
