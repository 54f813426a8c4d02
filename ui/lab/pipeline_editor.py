"""The Augmentation Lab's pipeline editor: Streamlit widgets over a canonical pipeline kept in ``st.session_state``.

The canonical state (``aug_steps``, a list of ``{"id", "transform", "params", "p", "enabled"}``, and ``aug_seed``)
is plain session data, so it survives page switches (Streamlit drops the state of widgets that are not drawn) and
adding, removing or reordering other steps (widget keys carry a step id that never changes, not a position).
"""

from __future__ import annotations

from typing import Any

import streamlit as st

from camlib.augment import (
    CIFAR10_TRAIN_PIPELINE,
    MAX_IMPORT_CHARS,
    TRANSFORMS,
    ParamSpec,
    Pipeline,
    PipelineStep,
    pipeline_from_json,
    pipeline_from_yaml,
    pipeline_to_json,
    pipeline_to_python,
    pipeline_to_yaml,
)
from camlib.errors import CamlibError, PipelineError
from ui import keys
from ui.text import md, shorten

STEPS = keys.AUG_STEPS
NEXT_ID = keys.AUG_NEXT_ID
SEED = keys.AUG_SEED
SEED_MAX = 2**32 - 1


def _hex(colour: Any) -> str:
    if isinstance(colour, str):
        return colour
    return "#" + "".join(f"{int(c):02x}" for c in colour)


def _new_step(
    transform: str, params: dict[str, Any] | None = None, p: float | None = None, enabled: bool = True
) -> dict[str, Any]:
    spec = TRANSFORMS[transform]
    step_id = st.session_state.get(NEXT_ID, 0)
    st.session_state[NEXT_ID] = step_id + 1
    return {
        "id": step_id,
        "transform": transform,
        "params": spec.defaults() | dict(params or {}),
        "p": spec.default_p if p is None else float(p),
        "enabled": enabled,
    }


def load_pipeline(pipeline: Pipeline) -> None:
    """Replace the editor's pipeline (default pipeline, or an imported one)."""
    for key in [k for k in st.session_state if isinstance(k, str) and keys.STEP_WIDGET.match(k)]:
        del st.session_state[key]  # old step widgets: their ids are gone
    st.session_state[STEPS] = [_new_step(s.transform, dict(s.params), s.p, s.enabled) for s in pipeline.steps]
    st.session_state[SEED] = int(pipeline.seed)
    st.session_state[keys.AUG_SEED_INPUT] = int(pipeline.seed)


def ensure_state() -> None:
    if STEPS not in st.session_state:
        load_pipeline(CIFAR10_TRAIN_PIPELINE)


def seed_input(container: Any) -> int:
    """The seed number input (in ``container``, e.g. a column); the editor's seed follows it. This module is the input's
    only writer: ``new_samples_button`` moves it on, an imported pipeline sets it (``load_pipeline``)."""
    ensure_state()
    st.session_state.setdefault(keys.AUG_SEED_INPUT, st.session_state[SEED])
    seed = int(container.number_input("Seed", 0, SEED_MAX, key=keys.AUG_SEED_INPUT, persist_state="session"))
    st.session_state[SEED] = seed
    return seed


def new_samples_button() -> None:
    """Draw the next seed's samples: the seed input moves on by one (after the last seed, back to 0)."""

    def next_seed() -> None:
        st.session_state[keys.AUG_SEED_INPUT] = (int(st.session_state[keys.AUG_SEED_INPUT]) + 1) % (SEED_MAX + 1)

    st.button("New samples", key=keys.AUG_NEW_SAMPLES, on_click=next_seed)


def current_pipeline() -> Pipeline:
    steps = tuple(
        PipelineStep(s["transform"], dict(s["params"]), s["p"], s["enabled"]) for s in st.session_state[STEPS]
    )
    return Pipeline(steps, int(st.session_state[SEED]))


# --- callbacks (run before the rerun, so the new order is drawn at once) --------------------------------------------


def _add(choice_key: str) -> None:
    st.session_state[STEPS].append(_new_step(st.session_state[choice_key]))


def _remove(step_id: int) -> None:
    st.session_state[STEPS] = [s for s in st.session_state[STEPS] if s["id"] != step_id]


def _move(step_id: int, offset: int) -> None:
    steps = st.session_state[STEPS]
    index = next(i for i, s in enumerate(steps) if s["id"] == step_id)
    target = index + offset
    if 0 <= target < len(steps):
        steps[index], steps[target] = steps[target], steps[index]


# --- widgets ---------------------------------------------------------------------------------------------------------


def _bound(key: str, value: Any) -> None:
    """Seed a widget's state from the canonical value when the widget is new (first draw or after a page switch)."""
    if key not in st.session_state:
        st.session_state[key] = value


def _param_widget(step: dict[str, Any], spec: ParamSpec) -> Any:
    key = keys.step_widget(step["id"], spec.name)
    value = step["params"].get(spec.name, spec.default)
    label = spec.name
    if spec.kind == "bool":
        _bound(key, bool(value))
        return st.checkbox(label, key=key)
    if spec.kind == "choice":
        _bound(key, value if value in spec.choices else spec.default)
        labels = dict(zip(spec.choices, spec.choice_labels or map(str, spec.choices)))
        return st.selectbox(label, spec.choices, format_func=lambda c: labels.get(c, str(c)), key=key)
    if spec.kind == "colour":
        _bound(key, _hex(value))
        return st.color_picker(label, key=key)
    if spec.kind == "int_pair":
        left, right = st.columns(2)
        pair = []
        for column, part, suffix in ((left, value[0], "0"), (right, value[1], "1")):
            _bound(f"{key}_{suffix}", int(part))
            pair.append(
                column.number_input(
                    md("{label}[{suffix}]", label=label, suffix=suffix),
                    int(spec.low),
                    int(spec.high),
                    step=1,
                    key=f"{key}_{suffix}",
                )
            )
        return (int(pair[0]), int(pair[1]))
    integer = spec.kind in ("int", "int_range")
    cast = int if integer else float
    low, high, step_size = cast(spec.low), cast(spec.high), cast(spec.step or (1 if integer else 0.01))
    if spec.kind in ("range", "int_range"):
        _bound(key, (cast(value[0]), cast(value[1])))
    else:
        _bound(key, cast(value))
    result = st.slider(label, low, high, step=step_size, key=key)
    return tuple(result) if isinstance(result, (list, tuple)) else result


def _step_editor(position: int, step: dict[str, Any], count: int) -> None:
    spec = TRANSFORMS[step["transform"]]
    # The toggle's new value is in session state before the toggle is drawn: use it for the title at once.
    enabled = st.session_state.get(keys.step_widget(step["id"], "_enabled"), step["enabled"])
    title = "{number}. {transform}" if enabled else "{number}. {transform} (off)"
    with st.expander(md(title, number=position + 1, transform=step["transform"]), expanded=False):
        st.caption(md("{summary} Targets: {targets}.", summary=spec.summary, targets=", ".join(spec.targets)))
        if spec.reference_key:
            st.caption("Matches each image to a second one: another image of the data source.")
        on, up, down, remove = st.columns([2, 1, 1, 1])
        _bound(keys.step_widget(step["id"], "_enabled"), step["enabled"])
        step["enabled"] = on.toggle("enabled", key=keys.step_widget(step["id"], "_enabled"))
        up.button(
            "↑",
            key=keys.step_widget(step["id"], "_up"),
            on_click=_move,
            args=(step["id"], -1),
            disabled=position == 0,
            help="Move up",
        )
        down.button(
            "↓",
            key=keys.step_widget(step["id"], "_down"),
            on_click=_move,
            args=(step["id"], 1),
            disabled=position == count - 1,
            help="Move down",
        )
        remove.button(
            "✕", key=keys.step_widget(step["id"], "_remove"), on_click=_remove, args=(step["id"],), help="Remove"
        )
        _bound(keys.step_widget(step["id"], "_p"), float(step["p"]))
        step["p"] = st.slider("p (probability)", 0.0, 1.0, step=0.05, key=keys.step_widget(step["id"], "_p"))
        for param in spec.params:
            step["params"][param.name] = _param_widget(step, param)


def pipeline_editor() -> Pipeline:
    """Draw the editor and return the pipeline it describes (validation happens when it is built)."""
    ensure_state()
    steps = st.session_state[STEPS]
    for position, step in enumerate(steps):
        _step_editor(position, step, len(steps))
    if not steps:
        st.caption("No transforms: the grid shows the originals.")
    by_category: dict[str, list[str]] = {}
    for name, spec in TRANSFORMS.items():
        by_category.setdefault(spec.category, []).append(name)
    choice, add = st.columns([3, 1], vertical_alignment="bottom")
    choice.selectbox(
        "Add a transform",
        [n for names in by_category.values() for n in names],
        format_func=lambda n: f"{n}  ({TRANSFORMS[n].category})",  # options are plain text, never Markdown
        key=keys.AUG_ADD_CHOICE,
    )
    add.button("Add", key=keys.AUG_ADD, on_click=_add, args=(keys.AUG_ADD_CHOICE,), width="stretch")
    return current_pipeline()


def import_widget() -> None:
    """Upload an exported pipeline (JSON or YAML) to restore the editor; each upload is applied once. Its size is
    checked before it is decoded (``MAX_IMPORT_CHARS``; a UTF-8 character is at least one byte)."""
    imported = st.file_uploader("Import a pipeline (JSON or YAML)", type=["json", "yaml", "yml"], key=keys.AUG_IMPORT)
    if imported is None or st.session_state.get(keys.AUG_IMPORTED_ID) == imported.file_id:
        return
    parse = pipeline_from_json if imported.name.lower().endswith(".json") else pipeline_from_yaml
    try:
        if imported.size > MAX_IMPORT_CHARS * 4:
            raise PipelineError(f"the file is {imported.size:,} bytes; an exported pipeline is far smaller")
        load_pipeline(parse(imported.getvalue().decode("utf-8", "replace")))
        st.session_state[keys.AUG_IMPORTED_ID] = imported.file_id
        st.success(md("Imported {file}.", file=shorten(imported.name)))
    except CamlibError as error:
        st.error(md("Cannot import {file}: {error}", file=shorten(imported.name), error=error))


def export_widgets(pipeline: Pipeline) -> None:
    """Download the pipeline as JSON, YAML (Albumentations' own serialisation) or a runnable Python snippet."""
    try:
        snippet = pipeline_to_python(pipeline)
        a, b, c = st.columns(3)
        a.download_button("JSON", pipeline_to_json(pipeline), "pipeline.json", "application/json", key=keys.AUG_DL_JSON)
        b.download_button("YAML", pipeline_to_yaml(pipeline), "pipeline.yaml", "application/yaml", key=keys.AUG_DL_YAML)
        c.download_button("Python", snippet, "pipeline.py", "text/x-python", key=keys.AUG_DL_PY)
        with st.expander("Python snippet"):
            st.code(snippet, language="python")
    except CamlibError as error:
        st.caption(md("Export is disabled until the pipeline is valid: {error}", error=error))
