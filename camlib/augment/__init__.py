"""Augmentation Lab backend: a catalogue of Albumentations transforms, seeded pipelines, grids and export.

Modules:
    catalogue -- ``TRANSFORMS``: every editable parameter of each transform, derived from its own schema.
    pipeline  -- ``Pipeline`` of ``PipelineStep``s, ``validate_step`` and ``build_pipeline`` (a seeded ``A.Compose``).
    grid      -- ``augment_grid`` (tiles and the parameters they drew), ``pick_images`` and ``tile_grid``.
    export    -- JSON/YAML/Python export and re-import.

Every public name is re-exported here, so ``from camlib.augment import build_pipeline`` works; so are
``PipelineError`` and ``GridError``, which live in ``camlib.errors`` with every camlib error.
"""

import os

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations checks PyPI for updates at import otherwise

from camlib.augment.catalogue import (  # noqa: E402
    TRANSFORMS,
    ParamKind,
    ParamSpec,
    TransformSpec,
    get_transform_spec,
)
from camlib.augment.export import (  # noqa: E402
    EXPORT_FORMAT,
    EXPORT_KEY,
    MAX_IMPORT_CHARS,
    compose_to_dict,
    pipeline_from_dict,
    pipeline_from_json,
    pipeline_from_query,
    pipeline_from_yaml,
    pipeline_to_dict,
    pipeline_to_json,
    pipeline_to_python,
    pipeline_to_query,
    pipeline_to_yaml,
)
from camlib.augment.grid import (  # noqa: E402
    MAX_GRID_PIXELS,
    MAX_GRID_SIDE,
    MAX_LISTED_ELEMENTS,
    MAX_REFERENCES,
    GridMode,
    GridResult,
    TileSteps,
    augment_grid,
    pick_images,
    pick_references,
    tile_grid,
    trace_tile,
)
from camlib.augment.pipeline import (  # noqa: E402
    CIFAR10_TRAIN_PIPELINE,
    MAX_STEPS,
    Pipeline,
    PipelineStep,
    augment_image,
    build_pipeline,
    reference_keys,
    validate_step,
)
from camlib.errors import GridError, PipelineError  # noqa: E402

__all__ = [
    "CIFAR10_TRAIN_PIPELINE",
    "EXPORT_FORMAT",
    "EXPORT_KEY",
    "MAX_GRID_PIXELS",
    "MAX_GRID_SIDE",
    "MAX_IMPORT_CHARS",
    "MAX_LISTED_ELEMENTS",
    "MAX_REFERENCES",
    "MAX_STEPS",
    "TRANSFORMS",
    "GridError",
    "GridMode",
    "GridResult",
    "ParamKind",
    "ParamSpec",
    "Pipeline",
    "PipelineError",
    "PipelineStep",
    "TileSteps",
    "TransformSpec",
    "augment_grid",
    "augment_image",
    "build_pipeline",
    "compose_to_dict",
    "get_transform_spec",
    "pick_images",
    "pick_references",
    "pipeline_from_dict",
    "pipeline_from_json",
    "pipeline_from_query",
    "pipeline_from_yaml",
    "pipeline_to_dict",
    "pipeline_to_json",
    "pipeline_to_python",
    "pipeline_to_query",
    "pipeline_to_yaml",
    "reference_keys",
    "tile_grid",
    "trace_tile",
    "validate_step",
]
