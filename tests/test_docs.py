"""The README is the front door and docs/ the manual: their commands, links and code stay true."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _fenced(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_readme_is_a_front_door() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines: move the manual to docs/"


def test_readme_commands_are_the_ones_ci_runs() -> None:
    run, test = _fenced(README.read_text(encoding="utf-8"), "bash")[:2]
    assert run.strip() == "pip install -r requirements.txt && streamlit run app.py"
    assert test.strip() == "pip install -r requirements-dev.txt && python -m pytest"
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").replace(" -q ", " ")
    assert test.strip() in ci, "CI must run the README's test command"
    for requirement in re.findall(r"-r (\S+)", run + test):
        assert (ROOT / requirement).is_file(), requirement
    assert (ROOT / "app.py").is_file()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_relative_link_resolves(page: Path) -> None:
    targets = [t for t in LINK.findall(page.read_text(encoding="utf-8")) if not re.match(r"[a-z]+:", t)]
    broken = [t for t in targets if not t.startswith("#") and not (page.parent / t.split("#")[0]).exists()]
    assert broken == []


def test_every_manual_page_is_linked_from_the_readme() -> None:
    linked = {(README.parent / t).resolve() for t in LINK.findall(README.read_text(encoding="utf-8"))}
    assert [p.name for p in PAGES[1:] if p.resolve() not in linked] == []


@pytest.mark.slow
def test_readme_python_example_runs_as_written() -> None:
    (example,) = _fenced(README.read_text(encoding="utf-8"), "python")
    scope: dict[str, object] = {}
    exec(compile(example, "README.md", "exec"), scope)  # the project's own example, not a user's file
    maps = scope["result"].maps["bn2"]
    assert maps.shape == (1, 224, 224) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() == 0.0 and maps.max() == pytest.approx(1.0, abs=1e-6)


def _layout_block() -> str:
    text = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    return _fenced(text.split("## Layout", 1)[1], "")[0]


def _tracked_python(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts and p.name != "__init__.py")


def test_the_layout_section_names_every_module() -> None:
    """docs/architecture.md's layout names every module of ui/, app_pages/ and benchmarks/ by file name, and every
    camlib module and package by name, so a newcomer finds each one from there."""
    block = _layout_block()
    files = [p for folder in ("ui", "app_pages", "benchmarks") for p in _tracked_python(folder)]
    missing = [str(p.relative_to(ROOT)) for p in files if not re.search(rf"\b{re.escape(p.name)}\b", block)]
    camlib = {p.stem for p in (ROOT / "camlib").glob("*.py") if p.name not in ("__init__.py", "__main__.py")}
    camlib |= {p.parent.name for p in (ROOT / "camlib").glob("*/__init__.py")}
    missing += [f"camlib.{name}" for name in sorted(camlib) if not re.search(rf"\b{name}\b", block)]
    assert not missing, f"docs/architecture.md's layout does not name: {missing}"


def test_the_layout_section_names_no_missing_file() -> None:
    block = _layout_block()
    existing = {
        p.name for folder in ("ui", "app_pages", "benchmarks", "camlib", "tests") for p in _tracked_python(folder)
    }
    existing |= {p.name for p in ROOT.glob("*.py")}
    gone = sorted(set(re.findall(r"\b\w+\.py\b", block)) - existing)
    assert not gone, f"docs/architecture.md's layout names files that do not exist: {gone}"
