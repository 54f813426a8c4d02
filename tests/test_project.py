"""Project-level checks: camlib stays free of Streamlit, the server config keeps its protections, requirements pins."""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # imports every camlib module in a fresh interpreter (seconds)
def test_camlib_never_imports_streamlit() -> None:
    # rglob: camlib has subpackages (camlib.augment), whose modules are imported and read too
    modules = sorted(
        ".".join(p.relative_to(ROOT / "camlib").with_suffix("").parts)
        for p in (ROOT / "camlib").rglob("*.py")
        if p.stem != "__init__"
    )
    code = (
        "import sys, importlib\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module('camlib.' + name)\n"
        "print(sorted(m for m in sys.modules if m == 'streamlit' or m.startswith('streamlit.')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={"NO_ALBUMENTATIONS_UPDATE": "1", "PATH": "/usr/bin:/bin"} | _python_env(),
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", f"camlib imported streamlit: {out.stdout}"
    # And statically: no import statement names streamlit anywhere in camlib.
    for path in (ROOT / "camlib").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "streamlit" for a in node.names), path
            if isinstance(node, ast.ImportFrom):
                assert (node.module or "").split(".")[0] != "streamlit", path


def _python_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("HOME", "PYTHONPATH", "PATH", "TORCH_HOME", "LANG")}


@pytest.mark.bad_input(61)
def test_streamlit_config_keeps_protections() -> None:
    from camlib.models import MAX_CHECKPOINT_BYTES

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    server = config["server"]
    assert server["enableXsrfProtection"] is True
    assert server["enableCORS"] is True
    # Row 61 asks for a small cap; registry checkpoints reach 600 MB and the server has one cap for every upload, so
    # the cap is exactly the checkpoint cap, and the image cap is checked in the browser and in camlib (next test).
    assert server["maxUploadSize"] * 1024 * 1024 == MAX_CHECKPOINT_BYTES <= 600 * 1024 * 1024
    assert server["maxMessageSize"] <= 50
    assert config["client"]["showErrorDetails"] in ("type", "none", False)


def test_upload_caps_match_camlib() -> None:
    """Images stay at 20 MB although the server takes 600 MB checkpoints: ``decode_image`` checks the bytes before any
    decoding (tests/test_imaging.py), and each uploader's own limit is checked in tests/test_app_cam.py."""
    from camlib.imaging import MAX_UPLOAD_BYTES, decode_image

    assert MAX_UPLOAD_BYTES == 20 * 1024 * 1024
    assert inspect.signature(decode_image).parameters["max_bytes"].default == MAX_UPLOAD_BYTES


def test_requirements_pins() -> None:
    runtime = (ROOT / "requirements.txt").read_text().splitlines()
    for pin in ("torch==2.14.1", "torchvision==0.29.1", "albumentations==2.0.8"):
        assert pin in runtime
    names = [
        line.split("==")[0].split(">=")[0].strip().lower() for line in runtime if line and not line.startswith("#")
    ]
    assert "opencv-python-headless" in names and "opencv-python" not in names


@pytest.mark.bad_input(20)
def test_no_unsafe_html_in_ui() -> None:
    for path in [ROOT / "app.py", *(ROOT / "app_pages").glob("*.py"), *(ROOT / "ui").rglob("*.py")]:
        assert "unsafe_allow_html=True" not in path.read_text(), path


def test_no_pages_folder_beside_the_entry_point() -> None:
    """Streamlit runs an app with a ``pages/`` folder beside its entry point as a v1 multipage app until app.py has
    run once (``PagesManager.uses_pages_directory``): a first visit to a sub-page link on a fresh server got the
    auto-generated navigation and lost app.py's frame. The pages live in ``app_pages/``, named by ``st.Page``."""
    from streamlit.runtime.pages_manager import PagesManager

    assert not (ROOT / "pages").exists()
    PagesManager.uses_pages_directory = None
    try:
        PagesManager(str(ROOT / "app.py"))
        assert PagesManager.uses_pages_directory is False
    finally:
        PagesManager.uses_pages_directory = None
    source = (ROOT / "app.py").read_text(encoding="utf-8")
    assert all(f'st.Page("app_pages/{p.name}"' in source for p in (ROOT / "app_pages").glob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """The top-level names of every module ``path`` imports (absolute imports, anywhere in the file)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_test_modules_share_code_through_helpers_only() -> None:
    """A test module imports no other test module and not conftest.py (pytest loads both itself, and a second import
    runs a module twice under two names): shared test code lives in tests/helpers/, shared fixtures in conftest.py."""
    tests = ROOT / "tests"
    test_modules = {p.stem for p in tests.glob("test_*.py")}
    assert {"test_project", "test_cam"} <= test_modules  # the scan sees the test modules
    offending = {}
    for path in sorted([*tests.glob("*.py"), *(tests / "helpers").glob("*.py")]):
        wrong = _imported_modules(path) & (test_modules | {"conftest", "tests"})
        if wrong:
            offending[str(path.relative_to(ROOT))] = sorted(wrong)
    assert offending == {}
    # shared code has no other place to hide: next to the test modules there is only conftest.py
    assert sorted(p.name for p in tests.glob("*.py") if not p.name.startswith("test_")) == ["conftest.py"]
