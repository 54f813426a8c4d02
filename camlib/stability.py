"""Explanations under augmentation: does a CAM move with the image when the image is augmented?

``augmentation_stability`` augments each image ``n_views`` times with a Lab pipeline (seeded), computes the CAM of
every view, and compares it with the original image's CAM carried through the same spatial transform. A model whose
explanation follows the object gives maps that agree (correlation and top-20% IoU near 1); a map that stays put
while the object moves, or changes under a colour jitter, does not. The per-transform breakdown repeats the measures
with the pipeline cut to one enabled step at a time, so a page can say which transform moves the explanation.

Motivation: Tetkova & Hansen, "Robustness of Visual Explanations to Common Data Augmentation Methods", CVPR
Workshops 2023 (explanations are often not equivariant to the augmentations a model was trained with). Contrast
with pytorch-grad-cam's ``aug_smooth`` (``BaseCAM.forward_augmentation_smoothing``), which *averages* the CAMs of
flipped and rescaled copies mapped back to the original to make one smoother map; here the views are compared,
not averaged, and the transforms are the user's own pipeline.

How a map is carried. The original image's pixel coordinates ``(x, y)`` and a channel of ones go through the view's
``A.Compose`` call as one float32 ``mask`` (``(H, W, 3)``), in the same call that augments the image, so the mask
gets exactly the parameters the image drew. Albumentations 2.0.8 moves masks with the image by geometric transforms
(flips, crops, pads, affine, perspective, distortions; nearest-neighbour, the default ``mask_interpolation``, which
the Lab does not expose, so coordinates arrive as exact integers), leaves them alone in pixel-only transforms
(colour, blur, noise, compression, dropout: ``fill_mask`` is ``None``), and fills pixels with no source with 0
(``fill_mask``, also not exposed): the ones channel is then 0 there. The carried CAM is the original CAM read at the
carried coordinates, which is the CAM itself passed as ``mask=`` (tested), but lets the original's CAM be computed
once and the views of every image share ``compute_cams`` batches. With a reflecting or replicating ``border_mode``
the filled pixels carry reflected coordinates and count as present, as their image content does.

Frames. A CAM lives in the model's input (``crop x crop`` after ``prepare_batch``'s resize and centre crop); both
maps are compared in the augmented image's pixel frame: a model-input map is read back at each image pixel's centre
(bilinear) and pixels outside the model's crop are not valid. With the bundled CIFAR-10 model (resize 32, crop 32)
on 32x32 images the two frames coincide and nothing is resampled.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from camlib.augment.catalogue import TRANSFORMS
from camlib.augment.grid import pick_references
from camlib.augment.pipeline import Pipeline, _require_pipeline, augment_image, build_pipeline, reference_keys
from camlib.cam import METHODS, compute_cams
from camlib.contracts import describe, require_array, require_int, require_model
from camlib.errors import ClassIndexError, InputError, LayerError, MethodError, PipelineError
from camlib.models import Preprocessing, _resize_geometry, prepare_batch
from camlib.targets import Target, class_of, resolve_targets

TOP_FRACTION = 0.2  # the share of pixels that counts as "the salient region" in the IoU
MAX_VIEWS = 256  # views per image
MAX_IMAGES = 1024  # images per call
MAX_CURVE_VALUES = 64  # parameter values in one flip curve
VIEW_BATCH = 256  # images per compute_cams call: views of several images go together
PRESENT = 0.999  # the carried ones channel above this: the pixel came from the image (not a fill)


# --- the two measures ------------------------------------------------------------------------------------------------


def _require_maps(a: object, b: object, valid: object) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    require_array(a, "a", dtypes=(np.float16, np.float32, np.float64), ndim=2, expected="float map (H, W)")
    require_array(b, "b", dtypes=(np.float16, np.float32, np.float64), ndim=2, expected="float map (H, W)")
    require_array(valid, "valid", dtypes=(np.bool_,), ndim=2, expected="bool mask (H, W)")
    if not a.shape == b.shape == valid.shape:
        raise InputError(f"a, b and valid must have one shape, got {a.shape}, {b.shape} and {valid.shape}")
    for name, values in (("a", a), ("b", b)):
        if not np.isfinite(values[valid]).all():
            raise InputError(f"{name} contains NaN or Inf on valid pixels")
    return a[valid].astype(np.float64), b[valid].astype(np.float64), valid


def map_correlation(a: np.ndarray, b: np.ndarray, valid: np.ndarray) -> float:
    """Pearson correlation of two maps over the pixels where ``valid`` is True.

    ``r = sum((a - mean a)(b - mean b)) / sqrt(sum((a - mean a)^2) * sum((b - mean b)^2))``, sums over valid pixels,
    in float64, clipped to ``[-1, 1]`` (rounding). NaN where it is undefined: fewer than 2 valid pixels, or a map
    constant on them (e.g. a degenerate, all-zero CAM).

    Args:
        a, b: float ``(H, W)`` maps (float16/32/64), finite on the valid pixels.
        valid: bool ``(H, W)``, the pixels present in both maps.

    Raises:
        InputError: wrong types, dtypes or shapes, or non-finite values on valid pixels.
    """
    x, y, _ = _require_maps(a, b, valid)
    return _pearson(x, y)


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    """``map_correlation`` of two float64 vectors (the valid pixels, already checked)."""
    if x.size < 2:
        return float("nan")
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    if denominator == 0:
        return float("nan")
    return float(np.clip((x * y).sum() / denominator, -1.0, 1.0))


def _top_set(values: np.ndarray, fraction: float) -> np.ndarray:
    k = int(np.ceil(fraction * values.size))
    threshold = np.partition(values, values.size - k)[values.size - k]
    return (values >= threshold) & (values > 0)


def top_fraction_iou(a: np.ndarray, b: np.ndarray, valid: np.ndarray, *, fraction: float = TOP_FRACTION) -> float:
    """Intersection over union of the top ``fraction`` of the valid pixels of two maps.

    With ``n`` valid pixels and ``k = ceil(fraction * n)``, a map's top set is every valid pixel whose value is at
    least the map's ``k``-th largest valid value and above 0. Ties at that value are all in (the set does not depend
    on pixel order, so it may hold more than ``k`` pixels), and zero pixels never are (a CAM's zeros carry no
    evidence: a map with fewer than ``k`` positive pixels has only those, an all-zero map an empty set).
    ``IoU = |A & B| / |A | B|``; NaN where both sets are empty (or no pixel is valid).

    Args:
        a, b: float ``(H, W)`` maps (float16/32/64), finite on the valid pixels.
        valid: bool ``(H, W)``, the pixels present in both maps.
        fraction: the share of valid pixels in a top set, in ``(0, 1]``.

    Raises:
        InputError: wrong types, dtypes or shapes, non-finite values on valid pixels, or ``fraction`` out of range.
    """
    x, y, _ = _require_maps(a, b, valid)
    return _iou(x, y, _require_fraction(fraction))


def _iou(x: np.ndarray, y: np.ndarray, fraction: float) -> float:
    """``top_fraction_iou`` of two float64 vectors (the valid pixels, already checked)."""
    if x.size == 0:
        return float("nan")
    top_a, top_b = _top_set(x, fraction), _top_set(y, fraction)
    union = int((top_a | top_b).sum())
    return float((top_a & top_b).sum() / union) if union else float("nan")


def _require_fraction(fraction: object) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, int | float | np.floating | np.integer):
        raise InputError(f"fraction must be a number in (0, 1], got {fraction!r}")
    if not 0 < fraction <= 1:
        raise InputError(f"fraction must be in (0, 1], got {fraction!r}")
    return float(fraction)


# --- results ---------------------------------------------------------------------------------------------------------


def _mean(values: np.ndarray) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else float("nan")


@dataclass(frozen=True)
class StabilityScores:
    """The measures of every view, row ``i`` for image ``i``, column ``k`` for its ``k``-th view.

    Attributes:
        correlation: float64 ``(N, V)``, ``map_correlation`` of the view's CAM and the carried CAM over the pixels
            valid in both; NaN where undefined (a constant map, e.g. a degenerate CAM).
        iou: float64 ``(N, V)``, ``top_fraction_iou`` (top 20%) over the same pixels; NaN where undefined.
        probability_change: float64 ``(N, V)``, softmax probability of the explained class on the view minus on the
            original (negative: the view made the model less sure of it); with ``targets``, the target's score on
            the view minus on the original.
        flipped: bool ``(N, V)``, the view's predicted label differs from the original's.
        augmented_label: int64 ``(N, V)``, the view's predicted label.
        valid_fraction: float64 ``(N, V)``, the share of the view's pixels valid in both maps.
        degenerate: bool ``(N, V)``, the view's or the original's CAM carries no positive evidence (all zeros).
    """

    correlation: np.ndarray
    iou: np.ndarray
    probability_change: np.ndarray
    flipped: np.ndarray
    augmented_label: np.ndarray
    valid_fraction: np.ndarray
    degenerate: np.ndarray

    @property
    def mean_correlation(self) -> float:
        """Mean correlation over the views where it is defined (NaN if none)."""
        return _mean(self.correlation)

    @property
    def mean_iou(self) -> float:
        """Mean top-20% IoU over the views where it is defined (NaN if none)."""
        return _mean(self.iou)

    @property
    def flip_rate(self) -> float:
        """Share of views whose predicted label differs from the original's."""
        return float(self.flipped.mean()) if self.flipped.size else 0.0

    @property
    def mean_probability_change(self) -> float:
        """Mean change of the explained class's probability (negative: less sure)."""
        return float(self.probability_change.mean()) if self.probability_change.size else 0.0


@dataclass(frozen=True)
class StepStability:
    """The measures with the pipeline cut to one enabled step (same seed, so the step's own draws).

    Attributes:
        index: the step's position in ``pipeline.steps`` (disabled steps count).
        transform: its transform name.
        scores: as for the full pipeline.
    """

    index: int
    transform: str
    scores: StabilityScores


@dataclass(frozen=True)
class ViewMaps:
    """One image's views and maps (``stability_views``), each in its augmented image's frame.

    Attributes:
        original_cam: float32 ``(H, W)`` in [0, 1], the original image's CAM in its own frame.
        images: per view, uint8 ``(H', W', 3)``, the augmented image (sizes may differ between views).
        cams: per view, float32 ``(H', W')`` in [0, 1], its CAM.
        carried: per view, float32 ``(H', W')`` in [0, 1], the original CAM carried through the view's transform
            (0 where not valid).
        valid: per view, bool ``(H', W')``, the pixels present in both maps.
        scores: the views' measures (one row).
    """

    original_cam: np.ndarray
    images: tuple[np.ndarray, ...]
    cams: tuple[np.ndarray, ...]
    carried: tuple[np.ndarray, ...]
    valid: tuple[np.ndarray, ...]
    scores: StabilityScores


@dataclass(frozen=True)
class StabilityReport:
    """What ``augmentation_stability`` measured.

    Attributes:
        method, layer: the CAM method and target layer.
        seed: the pipeline's seed, which drew the views; ``n_views``: views per image.
        class_idx: int64 ``(N,)``, the explained class of each image (kept for its views); with ``targets``, the
            class of each class target (``camlib.targets.class_of``), -1 for a target that explains no class.
        original_label: int64 ``(N,)``, the class predicted on each original image.
        original_probability: float64 ``(N,)``, the probability of ``class_idx`` on the original (with ``targets``,
            the target's score).
        scores: the full pipeline's measures.
        per_step: one entry per enabled step, in pipeline order (empty for a pipeline without enabled steps).
        targets: the targets explained, one per image, or None for ``class_idx``.
    """

    method: str
    layer: str
    seed: int
    n_views: int
    class_idx: np.ndarray
    original_label: np.ndarray
    original_probability: np.ndarray
    scores: StabilityScores
    per_step: tuple[StepStability, ...]
    targets: tuple[Target, ...] | None = None


# --- frames and carrying ---------------------------------------------------------------------------------------------


def _to_image_frame(
    maps: np.ndarray, height: int, width: int, preprocessing: Preprocessing
) -> tuple[np.ndarray, np.ndarray]:
    """Model-input maps ``(B, crop, crop)`` read at each pixel centre of a ``height x width`` image (bilinear), and
    the ``(height, width)`` bool mask of the pixels inside the model's crop. The identity where resize and crop
    leave the image as it is."""
    new_h, new_w, top, left = _resize_geometry(height, width, preprocessing)
    crop = preprocessing.crop
    if (new_h, new_w, top, left) == (height, width, 0, 0) and crop == height == width:
        return maps, np.ones((height, width), bool)
    # pixel centre x + 0.5 is at (x + 0.5) * new_w / width in the resized image (torchvision's resize, no corner
    # alignment); grid_sample's normalised coordinate of crop pixel u is (2u + 1) / crop - 1
    gx = ((np.arange(width) + 0.5) * new_w / width - left) * 2 / crop - 1
    gy = ((np.arange(height) + 0.5) * new_h / height - top) * 2 / crop - 1
    grid = torch.from_numpy(np.stack(np.meshgrid(gx, gy), axis=-1)).float()[None].expand(len(maps), -1, -1, -1)
    sampled = F.grid_sample(
        torch.from_numpy(maps)[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False
    )[:, 0]
    inside = (np.abs(gy)[:, None] <= 1) & (np.abs(gx)[None, :] <= 1)
    return sampled.numpy().astype(np.float32), inside


def _coordinates(height: int, width: int) -> np.ndarray:
    """float32 ``(H, W, 3)``: each pixel's column, row, and 1."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    return np.stack([xs, ys, np.ones_like(xs)], axis=-1)


def _read_carried(cam: np.ndarray, cam_valid: np.ndarray, carried: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image-frame ``cam`` read (bilinear) at the carried coordinates ``(H', W', 3)``, and where it is valid:
    the pixel came from the image (ones channel) and from inside the model's crop. Integer coordinates read exact
    values."""
    height, width = cam.shape
    cx, cy, ones = (carried[..., c].astype(np.float64) for c in range(3))
    present = ones > PRESENT
    cx, cy = np.clip(cx, 0, width - 1), np.clip(cy, 0, height - 1)
    x0, y0 = np.floor(cx).astype(np.int64), np.floor(cy).astype(np.int64)
    x1, y1 = np.minimum(x0 + 1, width - 1), np.minimum(y0 + 1, height - 1)
    fx, fy = cx - x0, cy - y0
    values = (
        cam[y0, x0] * (1 - fx) * (1 - fy)
        + cam[y0, x1] * fx * (1 - fy)
        + cam[y1, x0] * (1 - fx) * fy
        + cam[y1, x1] * fx * fy
    )
    valid = present & cam_valid[np.rint(cy).astype(np.int64), np.rint(cx).astype(np.int64)]
    return np.where(valid, values, 0.0).astype(np.float32), valid


def _image_seed(seed: int, index: int) -> int:
    """The Compose seed of image ``index``: its views do not depend on the other images in the call."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _augment(
    compose: Any, image: np.ndarray, coordinates: np.ndarray, references: Sequence[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    try:
        result = augment_image(compose, image, references=references, mask=coordinates)
    except Exception as exc:  # re-raised typed: any transform may fail on an unusual image (size, dtype)
        raise PipelineError(
            f"the pipeline failed on a {image.shape[1]}x{image.shape[0]} image: {' '.join(str(exc).split())}"
        ) from exc
    view, carried = result["image"], result["mask"]
    if view.dtype != np.uint8 or view.ndim != 3 or view.shape[2] != 3 or carried.shape[:2] != view.shape[:2]:
        raise PipelineError(f"the pipeline returned {view.dtype} {view.shape}, not a uint8 RGB image")
    return view, carried


def _model_input(images: Sequence[np.ndarray], preprocessing: Preprocessing) -> torch.Tensor:
    """``prepare_batch`` of images that may differ in size (grouped by size, in order): ``(B, 3, crop, crop)``."""
    out = torch.empty(len(images), 3, preprocessing.crop, preprocessing.crop)
    shapes: dict[tuple[int, ...], list[int]] = {}
    for k, image in enumerate(images):
        shapes.setdefault(image.shape, []).append(k)
    for indices in shapes.values():
        out[indices] = prepare_batch(np.stack([images[k] for k in indices]), preprocessing)
    return out


@dataclass(frozen=True)
class _Setup:
    """Validated inputs and what does not depend on the pipeline: each original's explained class (or target),
    predicted label, probability of the class (score of the target) and CAM (image frame, with the pixels inside the
    model's crop)."""

    model: nn.Module
    images: np.ndarray
    layer: str
    preprocessing: Preprocessing
    method: str
    targets: np.ndarray
    n_views: int
    seed: int
    original_label: np.ndarray
    original_probability: np.ndarray
    original_cams: np.ndarray
    original_valid: np.ndarray
    original_degenerate: np.ndarray
    explained: tuple[Target, ...] | None = None


_PROGRESS: ContextVar[Callable[[int, int], None] | None] = ContextVar("camlib_stability_progress", default=None)


@contextmanager
def reporting_progress(callback: Callable[[int, int], None]) -> Iterator[None]:
    """Within the block, ``augmentation_stability``, ``stability_views`` and ``flip_curve`` call ``callback(done,
    total)`` after each batch of views (``total`` batches in the call). The callback may raise to cancel the
    computation (the model is left clean: ``compute_cams`` removes its hooks). Per thread and per context, so
    concurrent sessions each see their own callback.

    Raises ``InputError`` (on entering) unless ``callback`` is callable."""
    if not callable(callback):
        raise InputError(f"callback must be a callable (done, total), got {describe(callback)}")
    token = _PROGRESS.set(callback)
    try:
        yield
    finally:
        _PROGRESS.reset(token)


def _batches(count: int) -> list[slice]:
    return [slice(start, min(start + VIEW_BATCH, count)) for start in range(0, count, VIEW_BATCH)]


def _cams(
    model: nn.Module,
    images: Sequence[np.ndarray],
    classes: Sequence[int] | Sequence[Target] | None,
    *,
    layer: str,
    method: str,
    preprocessing: Preprocessing,
    explained: Sequence[Target] | None = None,
    tick: Callable[[], None] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``compute_cams`` over ``images`` (any sizes) in batches of ``VIEW_BATCH``, explaining ``classes`` (None: each
    image's prediction) or the targets ``explained`` (one per image): maps, degenerate flags, softmax probabilities
    and the explained scores (``CamResult.scores``), concatenated; ``tick`` after each batch.

    Raises ``MethodError`` when the model's output is not ``(N, num_classes)`` logits (the report compares predicted
    labels), and what ``compute_cams`` raises."""
    maps, flags, probabilities, scores = [], [], [], []
    for part in _batches(len(images)):
        x = _model_input(images[part], preprocessing)
        if explained is not None:
            result = compute_cams(model, x, [layer], method=method, targets=list(explained[part]))
        else:
            result = compute_cams(
                model, x, [layer], method=method, class_idx=None if classes is None else list(classes[part])
            )
        if result.logits is None:
            raise MethodError(
                "the stability report compares each view's predicted label with the original's, so it needs a model "
                "returning (N, num_classes) logits; this model's output is not"
            )
        maps.append(result.maps[layer])
        flags.append(result.degenerate[layer])
        probabilities.append(result.probabilities)
        scores.append(result.scores)
        if tick is not None:
            tick()
    return np.concatenate(maps), np.concatenate(flags), np.concatenate(probabilities), np.concatenate(scores)


def _measure(
    setup: _Setup, pipeline: Pipeline, *, keep_views: bool, tick: Callable[[], None]
) -> tuple[StabilityScores, tuple[ViewMaps, ...] | None]:
    """The scores of ``pipeline`` (its own steps; seeds from ``setup``) and the maps if kept. The views of every image
    go through ``compute_cams`` together, in batches of ``VIEW_BATCH`` (the originals' CAMs come from ``setup``)."""
    n, v = len(setup.images), setup.n_views
    height, width = setup.images.shape[1:3]
    coordinates = _coordinates(height, width)
    augmented = []
    compose = build_pipeline(pipeline)  # built once (validation is most of a build), reseeded per image below
    for i, image in enumerate(setup.images):
        compose.set_random_seed(_image_seed(setup.seed, i))  # the same draws as a Compose built with this seed
        offered: Sequence[np.ndarray] = ()
        if reference_keys(compose):  # FDA-like steps match each image to the other images of the call
            offered = pick_references(setup.images, i, setup.seed)
        augmented += [_augment(compose, image, coordinates, offered) for _ in range(v)]
    views = [view for view, _ in augmented]
    targets = np.repeat(setup.targets, v)
    explained = None if setup.explained is None else [t for t in setup.explained for _ in range(v)]
    maps, flags, probabilities, explained_scores = _cams(
        setup.model,
        views,
        targets,
        layer=setup.layer,
        method=setup.method,
        preprocessing=setup.preprocessing,
        explained=explained,
        tick=tick,
    )
    labels = probabilities.argmax(axis=1).reshape(n, v)
    if explained is None:
        picked = probabilities[np.arange(n * v), targets].astype(np.float64).reshape(n, v)
    else:
        picked = explained_scores.astype(np.float64).reshape(n, v)
    change = picked - setup.original_probability[:, None]
    correlation, iou, valid_fraction = np.full((n, v), np.nan), np.full((n, v), np.nan), np.zeros((n, v))
    kept = []
    for i in range(n):
        cams, carried_maps, valids = [], [], []
        for k in range(v):
            view, carried = augmented[i * v + k]
            cam, cam_valid = _to_image_frame(
                maps[i * v + k : i * v + k + 1], view.shape[0], view.shape[1], setup.preprocessing
            )
            moved, moved_valid = _read_carried(setup.original_cams[i], setup.original_valid, carried)
            valid = cam_valid & moved_valid
            x, y = cam[0][valid].astype(np.float64), moved[valid].astype(np.float64)  # finite: CAMs and their copies
            correlation[i, k] = _pearson(x, y)
            iou[i, k] = _iou(x, y, TOP_FRACTION)
            valid_fraction[i, k] = float(valid.mean())
            if keep_views:
                cams.append(cam[0])
                carried_maps.append(moved)
                valids.append(valid)
        if keep_views:
            kept.append(
                (
                    setup.original_cams[i],
                    tuple(views[i * v : (i + 1) * v]),
                    tuple(cams),
                    tuple(carried_maps),
                    tuple(valids),
                )
            )
    scores = StabilityScores(
        correlation=correlation,
        iou=iou,
        probability_change=change,
        flipped=labels != setup.original_label[:, None],
        augmented_label=labels.astype(np.int64),
        valid_fraction=valid_fraction,
        degenerate=flags.reshape(n, v) | setup.original_degenerate[:, None],
    )
    return scores, (tuple(ViewMaps(*maps, scores=scores) for maps in kept) if keep_views else None)


def _ticker(total: int) -> Callable[[], None]:
    """Counts batches and reports them to the callback of ``reporting_progress``, if any."""
    callback = _PROGRESS.get()
    done = [0]

    def tick() -> None:
        done[0] += 1
        if callback is not None:
            callback(done[0], total)

    return tick


# --- validation ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Explanation:
    """What the public functions pass on unchecked: the model's preprocessing, the CAM method, what is explained
    (``class_idx`` or ``targets``) and the views per image."""

    preprocessing: object
    method: object
    n_views: object
    class_idx: object = None
    targets: object = None


def _setup(model: object, images: object, pipeline: object, layer: object, explanation: _Explanation) -> _Setup:
    preprocessing, method, class_idx = explanation.preprocessing, explanation.method, explanation.class_idx
    require_model(model)
    require_array(images, "images", dtypes=(np.uint8,), ndim=4, channels=3, expected="uint8 RGB images (N, H, W, 3)")
    if len(images) > MAX_IMAGES:
        raise InputError(f"images holds {len(images)} images; at most {MAX_IMAGES} per call")
    _require_pipeline(pipeline)
    if not isinstance(layer, str) or layer not in dict(model.named_modules()) or not layer:
        raise LayerError(f"layer must be the dotted name of one module of this model (e.g. 'layer3'), got {layer!r}")
    if not isinstance(preprocessing, Preprocessing):
        raise InputError(f"preprocessing must be a camlib.models.Preprocessing, got {describe(preprocessing)}")
    if not isinstance(method, str) or method not in METHODS:
        raise MethodError(f"unknown CAM method {method!r}; choose one of: {', '.join(METHODS)}")
    n_views = require_int(explanation.n_views, "n_views", minimum=1, maximum=MAX_VIEWS)
    explained = resolve_targets(explanation.targets, class_idx, len(images))
    requested = _requested_classes(class_idx, len(images))
    build_pipeline(pipeline)  # every step and the seed valid before any forward pass
    # the originals' CAMs, once for every pipeline measured with this setup
    maps, flags, probabilities, scores = _cams(
        model, images, requested, layer=layer, method=method, preprocessing=preprocessing, explained=explained
    )
    if explained is not None:
        classes = np.array([-1 if class_of(t) is None else class_of(t) for t in explained])
    else:
        classes = probabilities.argmax(axis=1) if requested is None else np.array(requested)
    classes = classes.astype(np.int64)
    original_cams, original_valid = _to_image_frame(maps, *images.shape[1:3], preprocessing)
    return _Setup(
        model=model,
        images=images,
        layer=layer,
        preprocessing=preprocessing,
        method=method,
        targets=classes,
        n_views=n_views,
        seed=int(pipeline.seed),
        original_label=probabilities.argmax(axis=1).astype(np.int64),
        original_probability=(probabilities[np.arange(len(images)), classes] if explained is None else scores).astype(
            np.float64
        ),
        original_cams=original_cams,
        original_valid=original_valid,
        original_degenerate=flags,
        explained=None if explained is None else tuple(explained),
    )


def _requested_classes(class_idx: object, count: int) -> list[int] | None:
    if class_idx is None:
        return None
    if isinstance(class_idx, np.ndarray):
        class_idx = class_idx.tolist()
    values = [class_idx] * count if not isinstance(class_idx, Sequence) or isinstance(class_idx, str) else class_idx
    if len(values) != count or any(isinstance(k, bool) or not isinstance(k, int | np.integer) for k in values):
        raise ClassIndexError(
            f"class_idx must be None, an integer, or one integer per image ({count}), got {class_idx!r}"
        )
    return [int(k) for k in values]


# --- public ----------------------------------------------------------------------------------------------------------


def augmentation_stability(  # noqa: PLR0913 (keyword-only options of a public entry point)
    model: nn.Module,
    images: np.ndarray,
    pipeline: Pipeline,
    layer: str,
    *,
    preprocessing: Preprocessing,
    method: str = "gradcam",
    class_idx: int | Sequence[int] | None = None,
    targets: Sequence[Target] | None = None,
    n_views: int = 16,
) -> StabilityReport:
    """How much a CAM and a prediction change when each image is augmented by ``pipeline``, view by view.

    For image ``i`` an ``A.Compose`` of the enabled steps is seeded with ``SeedSequence([pipeline.seed, i])``
    and called ``n_views`` times: the same pipeline (seed included) gives an identical report, and an image's views
    depend on its position ``i``, never on the other images (reroll with ``dataclasses.replace(pipeline, seed=k)``).
    The originals and the views are preprocessed (``prepare_batch``, after augmentation) and go through
    ``compute_cams``, each view explaining its original's class or target (batches mix images: equal up to float
    rounding). Per view: ``map_correlation`` and ``top_fraction_iou`` (top 20%) of the view's CAM and the original's
    CAM carried through the view's transform, over the pixels valid in both (see the module docstring); the explained
    class's probability change (the target's score change); whether the predicted label flipped. ``per_step``
    repeats this with the pipeline cut to each enabled step (same seeds: the step's own draws, not those it gets
    inside the full pipeline; a single-step pipeline's row equals the full one).
    Steps that match an image to a second one (FDA, HistogramMatching...) take it from the other images of the call
    (``pick_references``; a lone image is matched to itself).

    Cost: ``compute_cams`` over the N originals once, then over ``N x n_views`` views (in batches of ``VIEW_BATCH``)
    for the full pipeline and for each enabled step (only once for a one-step pipeline). ``reporting_progress``
    reports each batch.

    Args:
        model: a classifier returning ``(N, num_classes)`` logits; may be shared (``compute_cams`` leaves it as it
            found it: no hooks left, modes restored, no ``.grad``).
        images: uint8 RGB ``(N, H, W, 3)``, 1 to ``MAX_IMAGES`` images.
        pipeline: the Lab's pipeline (its seed seeds the views); disabled steps are skipped.
        layer: the target layer's dotted name.
        preprocessing: the model's preprocessing (a registry spec's ``.preprocessing``).
        method: a key of ``camlib.cam.METHODS``.
        class_idx: the class to explain: None for each original image's prediction, one int for all, or one per
            image.
        targets: instead of ``class_idx``, one target per image (``camlib.targets``; pytorch-grad-cam's target
            objects work unchanged), explained on the image and on each of its views.
        n_views: views per image, 1 to ``MAX_VIEWS``.

    Returns:
        A ``StabilityReport``.

    Raises:
        InputError: bad ``model``, ``images``, ``preprocessing`` or ``n_views``.
        PipelineError: ``pipeline`` is not a valid Lab pipeline, or a transform fails on these images.
        LayerError, MethodError, ClassIndexError: a bad ``layer``, ``method`` or ``class_idx``; and whatever
            ``compute_cams`` raises (e.g. ``NonFiniteError``). MethodError also: a model whose output is not
            ``(N, num_classes)`` logits (the labels compared).
        InputError, TargetError: both ``class_idx`` and ``targets``, or not one target per image.
    """
    explanation = _Explanation(preprocessing, method, n_views, class_idx, targets)
    setup = _setup(model, images, pipeline, layer, explanation)
    enabled = [(index, step) for index, step in enumerate(pipeline.steps) if step.enabled]
    cut = [] if len(enabled) == 1 else enabled  # one step: its row is the full pipeline's (same seeds, same draws)
    tick = _ticker(len(_batches(len(images) * setup.n_views)) * (1 + len(cut)))
    scores, _ = _measure(setup, pipeline, keep_views=False, tick=tick)
    per_step = tuple(
        StepStability(
            index, step.transform, _measure(setup, Pipeline((step,), pipeline.seed), keep_views=False, tick=tick)[0]
        )
        for index, step in cut
    ) or tuple(StepStability(index, step.transform, scores) for index, step in enabled)
    return StabilityReport(
        method=method,
        layer=layer,
        seed=setup.seed,
        n_views=setup.n_views,
        class_idx=setup.targets,
        original_label=setup.original_label,
        original_probability=setup.original_probability,
        scores=scores,
        per_step=per_step,
        targets=setup.explained,
    )


def stability_views(  # noqa: PLR0913 (keyword-only options of a public entry point)
    model: nn.Module,
    image: np.ndarray,
    pipeline: Pipeline,
    layer: str,
    *,
    preprocessing: Preprocessing,
    method: str = "gradcam",
    class_idx: int | None = None,
    targets: Sequence[Target] | None = None,
    n_views: int = 16,
) -> ViewMaps:
    """One image's views with their maps and measures, to show what ``augmentation_stability`` compared.

    The views and numbers are those of image 0 of ``augmentation_stability`` on ``image[None]`` (same seeding).

    Args:
        image: uint8 RGB ``(H, W, 3)``.
        model, pipeline, layer, preprocessing, method, n_views: as for ``augmentation_stability``.
        class_idx: the class to explain, or None for the image's prediction.
        targets: instead of ``class_idx``, a list of one target (``camlib.targets``).

    Raises:
        As ``augmentation_stability``; ``InputError`` for an ``image`` that is not uint8 ``(H, W, 3)``.
    """
    require_array(image, "image", dtypes=(np.uint8,), ndim=3, channels=3, expected="uint8 RGB image (H, W, 3)")
    if class_idx is not None and (isinstance(class_idx, bool) or not isinstance(class_idx, int | np.integer)):
        raise ClassIndexError(f"class_idx must be None or an integer, got {class_idx!r}")
    explanation = _Explanation(preprocessing, method, n_views, class_idx, targets)
    setup = _setup(model, image[None], pipeline, layer, explanation)
    (views,) = _measure(setup, pipeline, keep_views=True, tick=_ticker(len(_batches(setup.n_views))))[1]
    return views


@dataclass(frozen=True)
class Sweep:
    """What ``flip_curve`` varies: parameter ``param`` of step ``step_index`` (its position in ``pipeline.steps``),
    set to each of ``values`` in turn. A number given for a range parameter (e.g. ``brightness_limit``) fixes it: the
    range ``(v, v)``; pairs are passed as they are."""

    step_index: int
    param: str
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if isinstance(self.values, Sequence | np.ndarray) and not isinstance(self.values, str | bytes):
            object.__setattr__(self, "values", tuple(self.values))


@dataclass(frozen=True)
class FlipCurve:
    """Label flips and CAM stability as one numeric parameter of one step varies (``flip_curve``).

    Attributes:
        sweep: the varied parameter and its values.
        transform: the varied step's transform name.
        flip_rate: float64 ``(K,)``, the share of views whose predicted label flipped, per value.
        mean_correlation: float64 ``(K,)``, the mean CAM correlation (NaN where undefined for every view).
        mean_iou: float64 ``(K,)``, the mean top-20% IoU (NaN where undefined for every view).
        mean_probability_change: float64 ``(K,)``, the mean change of the predicted class's probability.
    """

    sweep: Sweep
    transform: str
    flip_rate: np.ndarray
    mean_correlation: np.ndarray
    mean_iou: np.ndarray
    mean_probability_change: np.ndarray


_NUMERIC_KINDS = ("float", "int", "range", "int_range", "int_pair")


def _swept_pipelines(pipeline: Pipeline, sweep: object) -> list[Pipeline]:
    """One pipeline per value of ``sweep``, each built once so that a bad value fails before any CAM."""
    if not isinstance(sweep, Sweep):
        raise PipelineError(f"sweep must be a camlib.stability.Sweep, got {describe(sweep)}")
    index = require_int(
        sweep.step_index, "sweep.step_index", minimum=0, maximum=len(pipeline.steps) - 1, error=PipelineError
    )
    step = pipeline.steps[index]
    if not step.enabled:
        raise PipelineError(f"sweep.step_index {index} ({step.transform}) is disabled; enable it to vary it")
    kinds = {p.name: p.kind for p in TRANSFORMS[step.transform].params}
    if not isinstance(sweep.param, str) or kinds.get(sweep.param) not in _NUMERIC_KINDS:
        numeric = ", ".join(name for name, kind in kinds.items() if kind in _NUMERIC_KINDS) or "none"
        raise PipelineError(
            f"sweep.param {sweep.param!r} is not a numeric parameter of {step.transform} (numeric: {numeric})",
            step=index,
            transform=step.transform,
        )
    if not isinstance(sweep.values, tuple) or not 1 <= len(sweep.values) <= MAX_CURVE_VALUES:
        raise PipelineError(
            f"sweep.values must be a sequence of 1 to {MAX_CURVE_VALUES} values, got {describe(sweep.values)}"
        )
    pipelines = []
    for value in sweep.values:
        scalar = kinds[sweep.param] in ("range", "int_range") and isinstance(value, int | float | np.number)
        steps = list(pipeline.steps)
        steps[index] = replace(step, params={**step.params, sweep.param: (value, value) if scalar else value})
        varied = Pipeline(tuple(steps), pipeline.seed)
        try:
            build_pipeline(varied)
        except PipelineError as error:
            raise PipelineError(
                f"sweep value {value!r}: {error}", step=error.step, transform=error.transform, param=error.param
            ) from error
        pipelines.append(varied)
    return pipelines


def flip_curve(
    model: nn.Module,
    images: np.ndarray,
    pipeline: Pipeline,
    layer: str,
    *,
    preprocessing: Preprocessing,
    sweep: Sweep,
    method: str = "gradcam",
    n_views: int = 8,
) -> FlipCurve:
    """The whole pipeline with one numeric parameter of one step set to each value of ``sweep`` in turn: the share
    of label flips and the mean CAM stability (``augmentation_stability``'s measures of the full pipeline) per value.

    The seed (``pipeline.seed``) is fixed, so every value sees the same draws of everything else and the curve shows
    the parameter's own effect; each image's explained class is its original prediction.

    Args:
        sweep: the step, its numeric parameter (kind float, int, range, int_range or int_pair in the catalogue) and
            1 to ``MAX_CURVE_VALUES`` values, each valid for it.
        model, images, pipeline, layer, preprocessing, method, n_views: as for ``augmentation_stability``.

    Raises:
        PipelineError: ``sweep`` is not a ``Sweep``, names a bad or disabled step or a parameter that is not
            numeric, or holds an invalid value (naming the step and the parameter).
        InputError, LayerError, MethodError: as ``augmentation_stability``.
    """
    _require_pipeline(pipeline)
    pipelines = _swept_pipelines(pipeline, sweep)
    setup = _setup(model, images, pipeline, layer, _Explanation(preprocessing, method, n_views))
    tick = _ticker(len(_batches(len(images) * setup.n_views)) * len(pipelines))
    curves = [_measure(setup, varied, keep_views=False, tick=tick)[0] for varied in pipelines]
    return FlipCurve(
        sweep=sweep,
        transform=pipeline.steps[sweep.step_index].transform,
        flip_rate=np.array([s.flip_rate for s in curves]),
        mean_correlation=np.array([s.mean_correlation for s in curves]),
        mean_iou=np.array([s.mean_iou for s in curves]),
        mean_probability_change=np.array([s.mean_probability_change for s in curves]),
    )
