"""Augmentation Lab backend: a catalogue of Albumentations transforms, seeded pipelines, grids and export.

Modules:
    catalogue -- ``TRANSFORMS``: every editable parameter of each transform, derived from its own schema.
    pipeline  -- ``Pipeline`` of ``PipelineStep``s, ``validate_step`` and ``build_pipeline`` (a seeded ``A.Compose``).
    grid      -- ``augment_grid`` (tiles and the parameters they drew), ``pick_images`` and ``tile_grid``.
    export    -- JSON/YAML/Python export and re-import.
    sizes     -- ``output_bounds``: the largest image each step can make, from its declared parameters.
    cost      -- ``estimate_grid``: a grid's seconds from per-step costs measured on this machine.

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
from camlib.augment.cost import GridEstimate, estimate_grid, step_seconds  # noqa: E402
from camlib.augment.export import (  # noqa: E402
    EXPORT_FORMAT,
    EXPORT_KEY,
    MAX_IMPORT_CHARS,
    MAX_IMPORT_DEPTH,
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
    ProgressCallback,
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
from camlib.augment.sizes import (  # noqa: E402
    KEEPS_SIZE,
    MAX_STEP_PIXELS,
    SIZE_RULES,
    SizeBox,
    check_output_sizes,
    output_bounds,
)
from camlib.errors import GridError, PipelineError  # noqa: E402

__all__ = [
    "CIFAR10_TRAIN_PIPELINE",
    "EXPORT_FORMAT",
    "EXPORT_KEY",
    "MAX_GRID_PIXELS",
    "MAX_GRID_SIDE",
    "MAX_IMPORT_CHARS",
    "MAX_IMPORT_DEPTH",
    "MAX_LISTED_ELEMENTS",
    "KEEPS_SIZE",
    "MAX_REFERENCES",
    "MAX_STEPS",
    "MAX_STEP_PIXELS",
    "SIZE_RULES",
    "TRANSFORMS",
    "GridError",
    "GridEstimate",
    "GridMode",
    "GridResult",
    "ParamKind",
    "ParamSpec",
    "Pipeline",
    "PipelineError",
    "PipelineStep",
    "ProgressCallback",
    "SizeBox",
    "TileSteps",
    "TransformSpec",
    "augment_grid",
    "augment_image",
    "build_pipeline",
    "check_output_sizes",
    "compose_to_dict",
    "estimate_grid",
    "get_transform_spec",
    "output_bounds",
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
    "step_seconds",
    "tile_grid",
    "trace_tile",
    "validate_step",
]
