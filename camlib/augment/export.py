"""Export of a pipeline (JSON and YAML that ``albumentations.load`` reads, a Python snippet) and its re-import."""

from __future__ import annotations

import json
from typing import Any

import albumentations as A
import yaml
from albumentations.core.serialization import serialize_enum

from camlib.augment.catalogue import TRANSFORMS, shown
from camlib.augment.grid import _jsonable
from camlib.augment.pipeline import (
    MAX_STEPS,
    Pipeline,
    PipelineStep,
    _check_seed,
    _require_pipeline,
    _step_error,
    build_pipeline,
    validate_step,
)
from camlib.contracts import describe
from camlib.errors import PipelineError

MAX_IMPORT_CHARS = 256_000  # the largest export (32 Affine steps) is 53 kB of JSON, 32 kB of YAML
MAX_IMPORT_DEPTH = 16  # nesting of lists and objects; an export nests 6 deep
MAX_SCALAR_CHARS = 256  # one YAML value; the longest an export writes is a class path of 60 characters
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: a 0.9 MB file in 0.2 s, not 10-30 s
EXPORT_KEY = "augmentation_lab"  # our editor state inside an Albumentations export; A.load ignores it
EXPORT_FORMAT = 1


def _plain(value: Any) -> Any:
    """JSON/YAML-safe plain data (tuples -> lists, numpy -> Python)."""
    return json.loads(json.dumps(value, default=_jsonable))


def _editor_state(pipeline: Pipeline) -> dict[str, Any]:
    steps = [
        {
            "transform": step.transform,
            "enabled": bool(step.enabled),
            "p": float(step.p),
            "params": validate_step(step, i),
        }
        for i, step in enumerate(pipeline.steps)
    ]
    return {"format": EXPORT_FORMAT, "seed": int(pipeline.seed), "steps": steps}


def _transform_dict(transform: A.BasicTransform) -> dict[str, Any]:
    spec = TRANSFORMS.get(type(transform).__name__)
    if spec is None or spec.reference_key is None:
        return transform.to_dict_private()
    # Albumentations refuses to serialise a transform that reads a second image per call; its settings are plain
    # values, and A.from_dict rebuilds it from them (the second image still comes per call, via metadata_key)
    args = transform.get_transform_init_args()
    kept = {k: v for k, v in args.items() if k not in ("reference_images", "read_fn")}
    return {"__class_fullname__": transform.get_class_fullname(), **kept}


def compose_to_dict(compose: A.Compose) -> dict[str, Any]:
    """``A.to_dict(compose)``, also for the steps that match an image to a second one (FDA, HistogramMatching,
    PixelDistributionAdaptation), which ``A.to_dict`` refuses: they are written as their settings, which
    ``A.from_dict`` reads back. Enums as Albumentations' own ``A.save`` writes them.

    Raises ``PipelineError`` unless ``compose`` is an ``A.Compose`` (``build_pipeline``'s result)."""
    if not isinstance(compose, A.Compose):
        raise PipelineError(f"compose must be an albumentations Compose (see build_pipeline), got {describe(compose)}")
    document = A.to_dict(A.Compose([], p=compose.p, is_check_shapes=compose.is_check_shapes))
    document["transform"]["transforms"] = [_transform_dict(t) for t in compose.transforms]
    return serialize_enum(document)


def pipeline_to_dict(pipeline: Pipeline) -> dict[str, Any]:
    """``A.to_dict`` of the built Compose, plus our editor state (seed, disabled steps) under ``EXPORT_KEY``.

    ``A.from_dict`` / ``A.load`` read the result as is (they ignore ``EXPORT_KEY``; Albumentations does not
    serialise the seed, so pass it to ``set_random_seed``); ``pipeline_from_dict`` restores the editor.
    """
    document = _plain(compose_to_dict(build_pipeline(pipeline)))  # Albumentations' own serialisation
    document[EXPORT_KEY] = _plain(_editor_state(pipeline))
    return document


def pipeline_to_json(pipeline: Pipeline) -> str:
    """The pipeline as JSON (see ``pipeline_to_dict``), loadable with ``A.load(path, data_format="json")``."""
    return json.dumps(pipeline_to_dict(pipeline), indent=2)


def pipeline_to_yaml(pipeline: Pipeline) -> str:
    """The pipeline as YAML (see ``pipeline_to_dict``), loadable with ``A.load(path, data_format="yaml")``."""
    return yaml.safe_dump(pipeline_to_dict(pipeline), sort_keys=False, default_flow_style=False)


def pipeline_to_python(pipeline: Pipeline) -> str:
    """A runnable snippet that rebuilds the same Compose (same seed, every parameter explicit).

    Disabled steps are written as comments so that they are not lost.
    """
    _require_pipeline(pipeline)
    _check_seed(pipeline.seed)
    lines = [
        f'"""Augmentation pipeline exported from the CAM Explorer Augmentation Lab (albumentations '
        f'{A.__version__})."""',
        "import albumentations as A",
        "",
        "transform = A.Compose(",
        "    [",
    ]
    for i, step in enumerate(pipeline.steps):
        params = validate_step(step, i) | {"p": float(step.p)}
        call = f"A.{step.transform}({', '.join(f'{k}={v!r}' for k, v in params.items())}),"
        lines.append(f"        {call}" if step.enabled else f"        # disabled: {call}")
    lines += ["    ],", f"    seed={int(pipeline.seed)},", "    strict=True,", "    save_applied_params=True,", ")", ""]
    return "\n".join(lines)


def pipeline_from_dict(document: Any) -> Pipeline:
    """The editor state of an exported pipeline, checked against the catalogue.

    When the file also holds an Albumentations section written by this Albumentations version, it must agree with
    the editor state (a file edited by hand in one place only is refused rather than half-applied).

    Raises:
        PipelineError: not an export of the lab, an unknown transform or parameter, or an invalid value.
    """
    if not isinstance(document, dict) or not isinstance(document.get(EXPORT_KEY), dict):
        raise PipelineError(
            f"this is not an Augmentation Lab export: the '{EXPORT_KEY}' section is missing "
            "(a plain Albumentations file loads with albumentations.load instead)"
        )
    state = document[EXPORT_KEY]
    if state.get("format") != EXPORT_FORMAT or isinstance(state.get("format"), bool):
        raise PipelineError(f"unsupported export format {shown(state.get('format'))}; expected {EXPORT_FORMAT}")
    steps_data = state.get("steps")
    if not isinstance(steps_data, list) or len(steps_data) > MAX_STEPS:
        raise PipelineError(f"the export's 'steps' must be a list of at most {MAX_STEPS} steps")
    steps = []
    for i, item in enumerate(steps_data):
        if not isinstance(item, dict) or not isinstance(item.get("transform"), str):
            raise PipelineError(
                f"step {i + 1} of the export is not a {{'transform': ..., 'params': ...}} object", step=i
            )
        params = item.get("params", {})
        if not isinstance(params, dict):
            raise _step_error(i, item["transform"], None, "'params' must be an object")
        steps.append(PipelineStep(item["transform"], params, p=item.get("p", 1.0), enabled=item.get("enabled", True)))
        if not isinstance(steps[-1].enabled, bool):
            raise _step_error(i, item["transform"], "enabled", "must be true or false")
    pipeline = Pipeline(tuple(steps), state.get("seed", 0))
    # normalise (lists -> tuples) through validation so that the restored pipeline equals the exported one
    restored = Pipeline(
        tuple(PipelineStep(s.transform, validate_step(s, i), s.p, s.enabled) for i, s in enumerate(pipeline.steps)),
        pipeline.seed,
    )
    rebuilt = pipeline_to_dict(restored)  # also validates the seed and builds every enabled step
    if (
        "transform" in document
        and document.get("__version__") == A.__version__
        and _plain(document["transform"]) != rebuilt["transform"]
    ):
        raise PipelineError(
            "the file's Albumentations 'transform' section does not match its "
            f"'{EXPORT_KEY}' editor state (edited by hand?); edit the editor state or re-export"
        )
    return restored


def pipeline_to_query(pipeline: Pipeline) -> str:
    """The steps of ``pipeline`` as compact JSON for a URL query: ``[[transform, {changed params}, p, enabled], ...]``,
    each parameter only where it differs from its catalogue default (the seed travels separately).

    Raises:
        PipelineError: an invalid step (``validate_step``).
    """
    _require_pipeline(pipeline)
    steps = []
    for i, step in enumerate(pipeline.steps):
        defaults = TRANSFORMS[step.transform].defaults() if step.transform in TRANSFORMS else {}
        params = {k: v for k, v in validate_step(step, i).items() if defaults.get(k) != v}
        steps.append([step.transform, params, float(step.p), bool(step.enabled)])
    return json.dumps(_plain(steps), separators=(",", ":"))


def pipeline_from_query(text: str, seed: int) -> Pipeline:
    """The pipeline ``pipeline_to_query`` wrote, with ``seed``; every step validated, parameters canonical.

    Raises:
        PipelineError: not that JSON, or an invalid step or seed.
    """
    items = _parse(text, json.loads, "JSON")
    if not isinstance(items, list) or len(items) > MAX_STEPS:
        raise PipelineError(f"the pipeline in the link must be a list of at most {MAX_STEPS} steps")
    steps = []
    for i, item in enumerate(items):
        if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str) and isinstance(item[1], dict)):
            raise PipelineError(f"step {i + 1} of the link is not [transform, params, p, enabled]", step=i)
        if not isinstance(item[3], bool):
            raise _step_error(i, item[0], "enabled", "must be true or false")
        step = PipelineStep(item[0], item[1], item[2], item[3])
        steps.append(PipelineStep(step.transform, validate_step(step, i), step.p, step.enabled))
    _check_seed(seed)
    return Pipeline(tuple(steps), seed)


def _check_depth(document: Any, what: str) -> None:
    """Refuse lists and objects nested deeper than ``MAX_IMPORT_DEPTH`` (walked with a stack, not recursion)."""
    stack = [(document, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_IMPORT_DEPTH:
                raise PipelineError(f"the {what} nests lists or objects more than {MAX_IMPORT_DEPTH} deep")
            stack.extend((child, depth + 1) for child in (value.values() if isinstance(value, dict) else value))


def _check_yaml_events(text: str) -> None:
    """Refuse, from libyaml's event stream and before anything is built, what no export holds: anchors and aliases
    (an alias bomb grows exponentially when expanded), nesting deeper than ``MAX_IMPORT_DEPTH`` (the constructor
    recurses), and a value longer than ``MAX_SCALAR_CHARS`` (YAML 1.1 reads ``1:2:3...`` and ``0x...`` as integers
    of any size, at a cost quadratic in their length)."""
    depth = 0
    for event in yaml.parse(text, Loader=_YAML_LOADER):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise PipelineError("the YAML uses anchors or aliases (&, *), which an exported pipeline never does")
        if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
            depth += 1
            if depth > MAX_IMPORT_DEPTH:
                raise PipelineError(f"the YAML nests lists or mappings more than {MAX_IMPORT_DEPTH} deep")
        elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
            depth -= 1
        elif isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR_CHARS:
            raise PipelineError(f"a YAML value is {len(event.value):,} characters long (at most {MAX_SCALAR_CHARS})")


def _load_yaml(text: str) -> Any:
    _check_yaml_events(text)
    return yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506  (a safe loader: CSafeLoader or SafeLoader)


def _parse(text: str, loader: Any, what: str) -> Any:
    """``loader(text)`` of untrusted text: its length capped first, every failure a ``PipelineError``, and the
    result nested at most ``MAX_IMPORT_DEPTH`` deep."""
    if not isinstance(text, str):
        raise PipelineError(f"expected {what} text, got {type(text).__name__}")
    if len(text) > MAX_IMPORT_CHARS:
        raise PipelineError(
            f"the {what} is {len(text):,} characters; an exported pipeline is far smaller "
            f"(at most {MAX_IMPORT_CHARS:,})"
        )
    try:
        document = loader(text)
    except PipelineError:
        raise
    except (ValueError, yaml.YAMLError) as exc:  # json.JSONDecodeError is a ValueError; so is int()'s digit limit
        raise PipelineError(f"not valid {what}: {' '.join(str(exc).split())[:200]}") from exc
    except RecursionError as exc:  # json's C decoder stops at the interpreter's recursion limit
        raise PipelineError(f"the {what} nests lists or objects more than {MAX_IMPORT_DEPTH} deep") from exc
    _check_depth(document, what)
    return document


def pipeline_from_json(text: str) -> Pipeline:
    """Import ``pipeline_to_json`` output. Raises ``PipelineError`` on bad JSON or an invalid pipeline."""
    return pipeline_from_dict(_parse(text, json.loads, "JSON"))


def pipeline_from_yaml(text: str) -> Pipeline:
    """Import ``pipeline_to_yaml`` output (safe YAML only). Raises ``PipelineError`` like ``pipeline_from_json``."""
    return pipeline_from_dict(_parse(text, _load_yaml, "YAML"))
