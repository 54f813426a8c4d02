"""Grids of augmented tiles (``augment_grid``), the images they show (``pick_images``) and one image of a grid
(``tile_grid``)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import albumentations as A
import numpy as np

from camlib.augment.pipeline import (
    Pipeline,
    _check_seed,
    _require_pipeline,
    augment_image,
    build_pipeline,
    reference_keys,
)
from camlib.augment.sizes import SizeBox, check_output_sizes
from camlib.contracts import describe, require_array, require_int
from camlib.errors import GridError, InvalidImageError, PipelineError
from camlib.imaging import ensure_rgb_uint8

GridMode = Literal["many", "one"]
ProgressCallback = Callable[[int, int], None]  # (tiles done, tiles in all), as camlib.cam's

MAX_GRID_SIDE = 16  # rows and cols of a grid
MAX_GRID_PIXELS = 2**25  # input pixels over all tiles (~100 MB of uint8 RGB): bounds memory for large uploads
MAX_LISTED_ELEMENTS = 64  # applied-param arrays above this size are summarised, not listed (e.g. 32x32 remap fields)
MAX_REFERENCES = 8  # second images offered to a tile's FDA/HistogramMatching/PixelDistributionAdaptation step


@dataclass(frozen=True)
class GridResult:
    """Augmented tiles of a grid, row-major.

    Attributes:
        tiles: ``uint8`` ``(rows*cols, h, w, 3)``. Tiles whose size changed (e.g. ``Affine(fit_output=True)``) are
            centred on a black canvas of the largest tile's size; pixels are never resampled.
        indices: the source image of each tile.
        applied: per tile, the transforms that fired and the parameters they drew (JSON-friendly; arrays above
            ``MAX_LISTED_ELEMENTS`` values are summarised as a string).
        tile_shapes: per tile, ``(h, w)`` before padding to the common size.
    """

    tiles: np.ndarray
    indices: tuple[int, ...]
    applied: tuple[tuple[dict[str, Any], ...], ...]
    tile_shapes: tuple[tuple[int, int], ...]
    mode: GridMode
    rows: int
    cols: int
    seed: int


def _jsonable(value: Any) -> Any:
    """Arrays, numpy scalars and tuples as JSON types; large arrays as a one-line summary."""
    if isinstance(value, np.ndarray):
        if value.size > MAX_LISTED_ELEMENTS:
            return f"<array {value.dtype} {tuple(value.shape)}>"
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _as_batch(images: np.ndarray) -> np.ndarray:
    """``(N, H, W, 3)`` uint8 from a batch or one ``(H, W, 3)`` / ``(H, W)`` image."""
    if isinstance(images, np.ndarray) and images.ndim == 4:
        if images.dtype != np.uint8 or images.shape[-1] != 3 or 0 in images.shape:
            raise InvalidImageError(f"expected uint8 RGB images (N, H, W, 3), got {images.dtype} {images.shape}")
        return images
    image = ensure_rgb_uint8(images)
    if 0 in image.shape:
        raise InvalidImageError(f"the image is empty {image.shape}; it needs at least 1x1 px")
    return image[None]


def _pick_indices(
    count: int, n_images: int, mode: GridMode, seed: int, indices: Sequence[int] | None
) -> tuple[int, ...]:
    wanted = count if mode == "many" else 1
    if indices is None:
        chosen = pick_images(np.arange(n_images), wanted, seed)
    else:
        if (
            isinstance(indices, str | bytes)
            or not isinstance(indices, Sequence | np.ndarray)
            or any(isinstance(i, bool | np.bool_) or not isinstance(i, int | np.integer) for i in indices)
        ):
            raise GridError(f"indices must be a sequence of integers (one image index per tile), got {indices!r}")
        chosen = [int(i) for i in indices]
        if len(chosen) != wanted:
            raise GridError(f"mode '{mode}' needs {wanted} image index(es) for this grid, got {len(chosen)}")
        bad = [i for i in chosen if not 0 <= i < n_images]
        if bad:
            raise GridError(f"image index {bad[0]} is out of range: there are {n_images} images (0..{n_images - 1})")
    return tuple(chosen * count if mode == "one" else chosen)


def pick_references(images: np.ndarray | Sequence[np.ndarray], own: int | None, seed: int) -> list[np.ndarray]:
    """The second images offered to one tile's domain-adaptation steps: up to ``MAX_REFERENCES`` of ``images``
    drawn with ``seed`` (the same for every tile), leaving out the tile's own image ``own`` unless it is the only
    one. The step then draws one of them with the Compose's generator.

    Raises:
        InvalidImageError: ``images`` is not uint8 RGB ``(N, H, W, 3)`` or a non-empty list of ``(H, W, 3)`` images.
        GridError: ``own`` is not None or an index of ``images``; a bad ``seed`` (``pick_images``)."""
    if isinstance(images, np.ndarray):
        require_array(images, "images", dtypes=(np.uint8,), ndim=4, channels=3, error=InvalidImageError)
    elif isinstance(images, Sequence) and not isinstance(images, str | bytes) and len(images):
        for j, image in enumerate(images):
            require_array(image, f"images[{j}]", dtypes=(np.uint8,), ndim=3, channels=3, error=InvalidImageError)
    else:
        raise InvalidImageError(
            f"images must be uint8 RGB (N, H, W, 3) or a non-empty list of (H, W, 3) images, got {describe(images)}"
        )
    if own is not None:
        require_int(own, "own (the tile's image index)", minimum=0, maximum=len(images) - 1, error=GridError)
    chosen = pick_images(np.arange(len(images)), min(len(images), MAX_REFERENCES + 1), seed)
    others = [images[j] for j in chosen if j != own][:MAX_REFERENCES]
    return others or [images[own if own is not None else 0]]


def pick_images(pool: Sequence[int] | np.ndarray, count: int, seed: int) -> list[int]:
    """``count`` image indices from ``pool``, drawn without replacement with a local generator seeded by ``seed``
    (cycled in order when the pool is smaller than ``count``). The global numpy RNG is never touched.

    Raises ``GridError`` for an empty ``pool`` or one that is not a 1-D sequence of non-negative integers, a ``count``
    below 1 or a ``seed`` outside ``[0, 2**32)``."""
    if isinstance(pool, str | bytes) or not isinstance(pool, Sequence | np.ndarray):
        raise GridError(f"the pool of image indices must be a 1-D sequence of integers, got {type(pool).__name__}")
    pool = np.asarray(pool)
    if pool.size == 0:
        raise GridError("no images to choose from: the pool is empty (is the class filter empty?)")
    if pool.ndim != 1 or pool.dtype.kind not in "iu" or pool.min() < 0:
        raise GridError(f"the pool of image indices must be 1-D non-negative integers, got {pool.dtype} {pool.shape}")
    require_int(count, "count", minimum=1, error=GridError)
    _check_seed(seed)
    pool = pool.astype(np.int64)
    if pool.size >= count:
        return np.random.default_rng(seed).choice(pool, size=count, replace=False).tolist()
    return np.resize(pool, count).tolist()


def _check_grid_int(name: str, value: Any, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise GridError(f"{name} must be an integer from {low} to {high}, got {value!r}")


def _pad_to(tile: np.ndarray, height: int, width: int) -> np.ndarray:
    top, left = (height - tile.shape[0]) // 2, (width - tile.shape[1]) // 2
    canvas = np.zeros((height, width, 3), np.uint8)
    canvas[top : top + tile.shape[0], left : left + tile.shape[1]] = tile
    return canvas


def _augment_tiles(
    batch: np.ndarray,
    compose: A.Compose,
    chosen: Sequence[int],
    references: np.ndarray | Sequence[np.ndarray] | None,
    seed: int,
    *,
    progress: ProgressCallback | None = None,
) -> list[tuple[np.ndarray, list[tuple[str, Any]]]]:
    """Tile ``k`` is the ``k``-th call of ``compose`` on ``batch[chosen[k]]``: each tile with the parameters drawn.
    ``progress(done, total)`` is called after each tile; whatever it raises stops the grid there."""
    needs_references = bool(reference_keys(compose))
    if needs_references and references is not None:
        if isinstance(references, np.ndarray):
            require_array(references, "references", dtypes=(np.uint8,), ndim=4, channels=3, error=InvalidImageError)
        elif isinstance(references, str | bytes) or not isinstance(references, Sequence):
            raise GridError(
                f"references must be uint8 RGB images or None for the grid's own, got {describe(references)}"
            )
        else:
            try:
                references = [_as_batch(r)[0] for r in references]
            except InvalidImageError as exc:  # name the argument: the message of _as_batch speaks of "the image"
                raise InvalidImageError(f"references: {exc}") from exc
        if not len(references):
            raise GridError("references is empty: give at least one second image, or None for the grid's own")
    outputs = []
    for index in chosen:
        image = batch[index]
        offered = ()
        if needs_references:
            offered = pick_references(
                batch if references is None else references, index if references is None else None, seed
            )
        try:
            result = augment_image(compose, image, references=offered)
        except Exception as exc:  # re-raised typed: any transform may fail on an unusual image (size, dtype)
            raise PipelineError(
                f"the pipeline failed on a {image.shape[1]}x{image.shape[0]} image: {' '.join(str(exc).split())}"
            ) from exc
        tile = result["image"]
        if tile.dtype != np.uint8 or tile.ndim != 3 or tile.shape[2] != 3:
            raise PipelineError(f"the pipeline returned {tile.dtype} {tile.shape}, not a uint8 RGB image")
        outputs.append((tile, list(result.get("applied_transforms", ()))))
        if progress is not None:
            progress(len(outputs), len(chosen))
    return outputs


def check_grid_pixels(grid: str, tiles: int, height: int, width: int, boxes: tuple[SizeBox, ...] = ()) -> None:
    """Refuse a grid of ``tiles`` tiles of ``height x width`` inputs whose inputs, or the largest outputs the
    pipeline's steps can make (``boxes``, from ``check_output_sizes``), add up to more than ``MAX_GRID_PIXELS``;
    ``grid`` names it in the message (e.g. ``"8x8 grid"``). ``augment_grid`` and ``estimate_grid`` both check it, so
    that a grid that cannot be drawn is refused before it is estimated or offered.

    Raises:
        GridError: over ``MAX_GRID_PIXELS``, saying which size and what to change.
    """
    if tiles * height * width > MAX_GRID_PIXELS:
        raise GridError(
            f"A {grid} of {width}x{height} images is too large; use fewer tiles or a "
            f"smaller image (at most {MAX_GRID_PIXELS:,} pixels in all)"
        )
    out = boxes[-1] if boxes else None
    if out is not None and tiles * out.max_pixels > MAX_GRID_PIXELS:
        raise GridError(
            f"This pipeline can make {out.w_hi:,}x{out.h_hi:,} tiles from these {width}x{height} images: a "
            f"{grid} of them is too large (at most {MAX_GRID_PIXELS:,} pixels in all); use fewer tiles "
            "or smaller sizes"
        )


def augment_grid(  # noqa: PLR0913 (keyword-only options of the public entry point)
    images: np.ndarray,
    pipeline: Pipeline,
    *,
    mode: GridMode = "many",
    rows: int = 4,
    cols: int = 4,
    seed: int | None = None,
    indices: Sequence[int] | None = None,
    references: np.ndarray | Sequence[np.ndarray] | None = None,
    progress: ProgressCallback | None = None,
) -> GridResult:
    """Augment a grid of tiles: "many" images with one draw each, or "one" image with ``rows*cols`` draws.

    Tile ``k`` is the ``k``-th call of a Compose built for this call, so the same (images, pipeline, seed, indices)
    always gives byte-identical tiles, whatever other threads or sessions do.

    Args:
        images: ``uint8`` RGB ``(N, H, W, 3)``, or one ``(H, W, 3)`` image.
        pipeline: the steps; ``pipeline.seed`` unless ``seed`` is given.
        mode: "many" (tile k shows image ``indices[k]``) or "one" (every tile shows ``indices[0]``).
        rows, cols: grid size, 1..16 each.
        seed: overrides ``pipeline.seed`` (a "reroll" without editing the pipeline).
        indices: source images; by default drawn without replacement with ``np.random.default_rng(seed)``
            (cycled in order when there are fewer images than tiles).
        references: the second images that steps matching an image to another one (FDA, HistogramMatching,
            PixelDistributionAdaptation) draw from (``pick_references``): uint8 RGB ``(M, H', W', 3)`` or a list
            of images of any size; by default the other images of ``images``.
        progress: called as ``progress(done, total)`` after each tile, between tiles: a page's progress bar, through
            which Streamlit stops a superseded run or a closed tab's (whatever it raises propagates).

    Every step's output is bounded before any tile is made, from what the steps declare
    (``camlib.augment.sizes.check_output_sizes``: at most ``MAX_STEP_PIXELS`` per step), and so is the grid's.

    Raises:
        GridError: bad mode, rows/cols or indices, or more than ``MAX_GRID_PIXELS`` input pixels, or tiles that can
            add up to more than ``MAX_GRID_PIXELS`` pixels.
        PipelineError: an invalid pipeline, a step that can make an image above ``MAX_STEP_PIXELS``, or a
            transform that fails on these images (e.g. a crop larger than the image).
        InvalidImageError: ``images`` is not uint8 RGB.
    """
    if mode not in ("many", "one"):
        raise GridError(f"mode must be 'many' or 'one', got {mode!r}")
    _require_pipeline(pipeline)
    _check_grid_int("rows", rows, 1, MAX_GRID_SIDE)
    _check_grid_int("cols", cols, 1, MAX_GRID_SIDE)
    batch = _as_batch(images)
    count = rows * cols
    height, width = batch.shape[1:3]
    check_grid_pixels(f"{rows}x{cols} grid", count, height, width)
    effective_seed = pipeline.seed if seed is None else seed
    _check_seed(effective_seed)
    compose = build_pipeline(Pipeline(pipeline.steps, effective_seed))
    check_grid_pixels(f"{rows}x{cols} grid", count, height, width, check_output_sizes(compose, height, width))
    chosen = _pick_indices(count, len(batch), mode, effective_seed, indices)
    outputs = _augment_tiles(batch, compose, chosen, references, effective_seed, progress=progress)
    tiles = [tile for tile, _ in outputs]
    applied = [
        tuple({"transform": name, "params": _jsonable(params)} for name, params in drawn) for _, drawn in outputs
    ]
    shapes = tuple((int(t.shape[0]), int(t.shape[1])) for t in tiles)
    out_h, out_w = max(s[0] for s in shapes), max(s[1] for s in shapes)
    stacked = np.stack([t if t.shape[:2] == (out_h, out_w) else _pad_to(t, out_h, out_w) for t in tiles])
    return GridResult(stacked, chosen, tuple(applied), shapes, mode, rows, cols, int(effective_seed))


@dataclass(frozen=True)
class TileSteps:
    """One grid tile, step by step (``trace_tile``).

    Attributes:
        index: the tile's source image; ``original``: that image.
        transforms: the enabled steps' transform names, in order.
        images: uint8 RGB, the image after each enabled step (sizes may change along the way); the last is the tile.
        applied: per enabled step, the parameters it drew (JSON-friendly), or None where it did not fire.
    """

    index: int
    original: np.ndarray
    transforms: tuple[str, ...]
    images: tuple[np.ndarray, ...]
    applied: tuple[dict[str, Any] | None, ...]


def trace_tile(
    images: np.ndarray,
    pipeline: Pipeline,
    grid: GridResult,
    tile: int,
    *,
    references: np.ndarray | Sequence[np.ndarray] | None = None,
) -> TileSteps:
    """The output after each step of the pipeline for tile ``tile`` of ``grid`` (``augment_grid(images, pipeline,
    ..., references=references)``): the same image and the same drawn parameters; its last image is the tile.

    The grid's Compose (seed ``grid.seed``) is rebuilt with a recording step after each enabled step; a recording
    step has ``p=1`` and draws nothing, so the random stream, and every parameter drawn, is the grid's own. Tiles
    ``0..tile-1`` are augmented again to bring the stream to the tile.

    Raises:
        GridError: ``tile`` outside the grid; and whatever ``augment_grid`` raises.
    """
    _require_pipeline(pipeline)
    if not isinstance(grid, GridResult):
        raise GridError(f"grid must be the GridResult of augment_grid, got {type(grid).__name__}")
    _check_grid_int("tile", tile, 0, len(grid.indices) - 1)
    recorded: list[np.ndarray] = []

    def record(image: np.ndarray, **_: Any) -> np.ndarray:
        recorded.append(image.copy())
        return image

    built = build_pipeline(Pipeline(pipeline.steps, grid.seed))
    steps = [t for transform in built.transforms for t in (transform, A.Lambda(image=record, p=1.0))]
    compose = A.Compose(steps, seed=grid.seed, strict=True, save_applied_params=True)
    batch = _as_batch(images)
    if max(grid.indices) >= len(batch):
        raise GridError(f"the grid shows image {max(grid.indices)}, but there are {len(batch)} images")
    outputs = _augment_tiles(batch, compose, grid.indices[: tile + 1], references, grid.seed)
    names = tuple(step.transform for step in pipeline.steps if step.enabled)
    # applied_transforms lists the steps that fired, each followed by its recorder: a recorder right after another
    # recorder (or first) closes a step that did not fire
    applied: list[dict[str, Any] | None] = []
    pending = None
    for name, params in outputs[-1][1]:
        if name == "Lambda":
            applied.append(pending)
            pending = None
        else:
            pending = {"transform": name, "params": _jsonable(params)}
    index = grid.indices[tile]
    after = tuple(recorded[len(recorded) - len(names) :]) if names else ()
    return TileSteps(index, batch[index], names, after, tuple(applied))


def tile_grid(tiles: np.ndarray, rows: int, cols: int, *, scale: int = 1, pad: int = 2, fill: int = 255) -> np.ndarray:
    """One ``uint8`` image of ``rows x cols`` tiles, each upscaled ``scale`` times by pixel repetition.

    Nearest-neighbour keeps 32x32 tiles crisp (no interpolation blur); ``pad`` pixels of grey level ``fill``
    separate the tiles and frame the grid.

    Raises:
        GridError: tiles not ``(rows*cols, h, w, 3)`` uint8, bad scale/pad, or a result above ``MAX_GRID_PIXELS``.
    """
    _check_grid_int("rows", rows, 1, MAX_GRID_SIDE)
    _check_grid_int("cols", cols, 1, MAX_GRID_SIDE)
    if (
        not isinstance(tiles, np.ndarray)
        or tiles.dtype != np.uint8
        or tiles.ndim != 4
        or tiles.shape[3] != 3
        or 0 in tiles.shape[1:]
    ):
        raise GridError(
            f"tiles must be uint8 (N, H, W, 3), got {getattr(tiles, 'dtype', type(tiles))} "
            f"{getattr(tiles, 'shape', '')}"
        )
    if tiles.shape[0] != rows * cols:
        raise GridError(f"a {rows}x{cols} grid needs {rows * cols} tiles, got {tiles.shape[0]}")
    _check_grid_int("scale", scale, 1, 16)
    _check_grid_int("pad", pad, 0, 32)
    _check_grid_int("fill", fill, 0, 255)
    tile_h, tile_w = tiles.shape[1] * scale, tiles.shape[2] * scale
    out_h, out_w = rows * (tile_h + pad) + pad, cols * (tile_w + pad) + pad
    if out_h * out_w > MAX_GRID_PIXELS:
        raise GridError(f"the grid image would be {out_w}x{out_h}; lower the scale or the number of tiles")
    canvas = np.full((out_h, out_w, 3), fill, np.uint8)
    big = tiles.repeat(scale, axis=1).repeat(scale, axis=2) if scale > 1 else tiles
    for k in range(rows * cols):
        top, left = pad + (k // cols) * (tile_h + pad), pad + (k % cols) * (tile_w + pad)
        canvas[top : top + tile_h, left : left + tile_w] = big[k]
    return canvas
