"""Session-state keys are named once, in ui/keys.py: no page or ui module passes a bare string as a widget ``key=``
or indexes ``st.session_state`` with one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([REPO / "app.py", *REPO.glob("app_pages/*.py"), *REPO.glob("ui/**/*.py")])
KEYS_MODULE = REPO / "ui" / "keys.py"
STATE_METHODS = {"get", "pop", "setdefault", "__contains__", "__getitem__", "__setitem__", "__delitem__"}


def _is_session_state(node: ast.AST) -> bool:
    """``st.session_state`` (or a bare ``session_state``)."""
    return (isinstance(node, ast.Attribute) and node.attr == "session_state") or (
        isinstance(node, ast.Name) and node.id == "session_state"
    )


def _is_string(node: ast.AST | None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str)


def bare_keys(source: str) -> list[tuple[int, str]]:
    """(line, what) for every bare string used as a session-state or widget key in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            for keyword in node.keywords:
                if keyword.arg == "key" and _is_string(keyword.value):
                    found.append((node.lineno, f"key={keyword.value.value!r}"))
            target = node.func
            if isinstance(target, ast.Attribute) and _is_session_state(target.value):
                if target.attr in STATE_METHODS and node.args and _is_string(node.args[0]):
                    found.append((node.lineno, f"session_state.{target.attr}({node.args[0].value!r})"))
                if target.attr == "update":
                    found.extend((node.lineno, f"session_state.update({k.arg}=...)") for k in node.keywords if k.arg)
        elif isinstance(node, ast.Subscript) and _is_session_state(node.value) and _is_string(node.slice):
            found.append((node.lineno, f"session_state[{node.slice.value!r}]"))
        elif (
            isinstance(node, ast.Compare)
            and _is_string(node.left)
            and any(_is_session_state(c) for c in node.comparators)
        ):
            found.append((node.lineno, f"{node.left.value!r} in session_state"))
    return found


def test_every_session_state_key_is_a_name_from_ui_keys() -> None:
    assert KEYS_MODULE in SOURCES and len(SOURCES) >= 8  # the scan sees the app, the pages and ui
    found = [
        f"{path.relative_to(REPO)}:{line}: {what}"
        for path in SOURCES
        if path != KEYS_MODULE
        for line, what in bare_keys(path.read_text())
    ]
    assert found == [], "bare session-state keys (name them in ui/keys.py):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "source",
    [
        'st.selectbox("Model", options, key="cam_model")',
        'st.session_state["cam_last_view"] = view',
        'x = st.session_state.get("gal_last_model")',
        'st.session_state.pop("cam_class", None)',
        'st.session_state.setdefault("aug_seed_input", 0)',
        'if "aug_last_drawn" not in st.session_state: pass',
        "st.session_state.update(aug_seed_input=1)",
    ],
)
def test_the_scan_finds_bare_keys(source: str) -> None:
    assert len(bare_keys(source)) == 1


def test_the_scan_accepts_named_and_built_keys() -> None:
    source = (
        "st.selectbox('Model', options, key=keys.GAL_MODEL)\n"
        "st.session_state[keys.CAM_LAST_VIEW] = view\n"
        "st.slider('a', key=f'{prefix}_alpha')\n"
        "st.multiselect('Layers', names, key=keys.cam_layers(model_key))\n"
    )
    assert bare_keys(source) == []


def test_ui_keys_values_are_unique() -> None:
    from ui import keys

    values = [v for name, v in vars(keys).items() if name.isupper() and isinstance(v, str)]
    assert len(values) == len(set(values))
