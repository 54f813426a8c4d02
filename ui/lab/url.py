"""Shareable Augmentation Lab state: the pipeline, seed and grid settings live in the URL query (``st.query_params``),
so a link reproduces the grid.

``apply_link`` runs before the Lab's widgets are drawn and loads settings from the query on the session's first run
only (a link opened in a tab or pasted into one loads the page: a new session; a rerun's query may be stale, see
``ui.explorer.cam_url``); ``write_link`` puts the current
settings back after the grid is drawn. The CAM Explorer keeps its own query keys.
"""

from __future__ import annotations

import streamlit as st

from camlib.augment import Pipeline, pipeline_from_query, pipeline_to_query
from camlib.cifar import CLASS_NAMES
from camlib.errors import CamlibError, PipelineError
from camlib.parsing import parse_int
from ui import keys
from ui.lab import pipeline_editor
from ui.text import md

QUERY_KEYS = ("pipeline", "seed", "rows", "cols", "mode", "image", "classes", "split")
MODES = ("many", "one")
SPLITS = ("test", "train")


def _int(text: str, name: str, low: int, high: int) -> int:
    return parse_int(text, name, minimum=low, maximum=high, error=PipelineError)


def _load_pipeline(wanted: dict[str, str]) -> list[str]:
    problems = []
    try:
        seed = _int(wanted.get("seed", "0"), "seed", 0, pipeline_editor.SEED_MAX)
    except CamlibError as error:  # the pipeline still applies, with the seed it has now
        problems.append(str(error))
        seed = int(st.session_state.get(keys.AUG_SEED, 0))
    try:
        if "pipeline" in wanted:
            pipeline_editor.load_pipeline(pipeline_from_query(wanted["pipeline"], seed))
        else:
            st.session_state[keys.AUG_SEED] = st.session_state[keys.AUG_SEED_INPUT] = seed
    except CamlibError as error:
        problems.append(str(error))
    return problems


def _load_grid(wanted: dict[str, str]) -> list[str]:
    problems = []
    for name, key in (("rows", keys.AUG_ROWS), ("cols", keys.AUG_COLS)):
        try:
            if name in wanted:
                st.session_state[key] = _int(wanted[name], name, 1, 16)
        except CamlibError as error:  # each value on its own: a bad rows leaves a good cols applied
            problems.append(str(error))
    return problems


def _load_images(wanted: dict[str, str]) -> list[str]:
    if wanted.get("mode", "many") not in MODES or wanted.get("split", "test") not in SPLITS:
        return [f"mode must be one of {MODES} and split one of {SPLITS}"]
    classes = [c for c in wanted.get("classes", "").split(",") if c]
    if any(c not in CLASS_NAMES for c in classes):
        return [f"classes must be CIFAR-10 class names ({', '.join(CLASS_NAMES)})"]
    st.session_state[keys.AUG_MODE] = wanted.get("mode", "many")
    if "split" in wanted:  # a link made on CIFAR-10 (one made on a photo names no split)
        st.session_state[keys.AUG_IMAGES] = "CIFAR-10"
        st.session_state[keys.AUG_SPLIT] = wanted["split"]
        st.session_state[keys.AUG_CLASSES] = classes
    if "image" in wanted:
        try:
            st.session_state[keys.AUG_IMAGE_INDEX] = _int(wanted["image"], "image", 0, 59_999)
        except CamlibError as error:
            return [str(error)]
    return []


def check_image_index(count: int) -> None:
    """Refuse, with ``st.error``, an image index (from a link) beyond the ``count`` images of the chosen classes; the
    page then shows image 0, and says so, rather than silently."""
    index = st.session_state.get(keys.AUG_IMAGE_INDEX)
    if isinstance(index, int) and not 0 <= index < count:
        st.error(
            md(
                "Image {index} of the link is out of range: the chosen classes have {count} images (0..{last}). "
                "Showing image 0.",
                index=index,
                count=count,
                last=count - 1,
            )
        )
        st.session_state[keys.AUG_IMAGE_INDEX] = 0


def apply_link() -> None:
    """Load the Lab's settings from the URL query when they are new to this session; a bad value is shown with
    ``st.error`` and the rest of the link still applies."""
    if (
        keys.AUG_LINK in st.session_state
    ):  # once per session, as ui.explorer.cam_url: a rerun's stale query never comes back
        return
    wanted = {k: st.query_params[k] for k in QUERY_KEYS if k in st.query_params}
    if not wanted:
        return
    st.session_state[keys.AUG_LINK] = wanted
    problems = [problem for load in (_load_pipeline, _load_grid, _load_images) for problem in load(wanted)]
    if problems:
        st.error(md("Part of the link could not be applied: {problems}", problems="; ".join(problems)))


def write_link(pipeline: Pipeline, *, rows: int, cols: int, mode: str, image: int | None) -> None:
    """Put the current settings in the URL query (only the keys that changed); an invalid pipeline leaves it as is."""
    try:
        current = {"pipeline": pipeline_to_query(pipeline), "seed": str(int(pipeline.seed))}
    except CamlibError:
        return
    current |= {"rows": str(rows), "cols": str(cols), "mode": mode}
    if st.session_state.get(keys.AUG_IMAGES) == "CIFAR-10":
        current["split"] = str(st.session_state.get(keys.AUG_SPLIT, "test"))
        if st.session_state.get(keys.AUG_CLASSES):
            current["classes"] = ",".join(st.session_state[keys.AUG_CLASSES])
        if mode == "one" and image is not None:
            current["image"] = str(image)
    for key in QUERY_KEYS:
        if key not in current and key in st.query_params:
            del st.query_params[key]
        elif key in current and st.query_params.get(key) != current[key]:
            st.query_params[key] = current[key]
    st.session_state[keys.AUG_LINK] = current
