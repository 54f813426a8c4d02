"""The bad-input catalogue (``../shared/docs/bad-inputs.md``) and the tests agree: every row has a test of each kind
its "Test" column names.

A test claims rows with ``@pytest.mark.bad_input(row, ...)`` (optionally ``kind="HTTP"`` or ``kind=("WS", "HTTP")``
when the test is not of its file's kind). A test's kind comes from its file: ``test_browser*.py`` is PW (Playwright),
``test_app_*.py`` AT (AppTest), ``test_server*.py`` WS (WebSocket sessions against ``streamlit run``),
``test_soak*.py`` SOAK, anything else U; a test decorated with hypothesis's ``@given`` is HYP as well.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
CATALOGUE = TESTS.parents[1] / "shared" / "docs" / "bad-inputs.md"
KINDS = ("U", "AT", "PW", "WS", "HTTP", "SOAK", "HYP", "PL", "threads")

# Kinds the catalogue names that a test of another kind stands for, and why.
EQUIVALENT = {
    "threads": ("U", "thread tests are plain pytest modules: `threading.Barrier` workers on one shared object"),
}
# Rows whose behaviour is scheduled for a later issue; nothing else may be listed here.
PENDING: dict[int, str] = {}


def catalogue_rows(text: str) -> dict[int, set[str]]:
    """Row number -> the test kinds its "Test" column names (notes in parentheses or brackets are qualifiers)."""
    rows: dict[int, set[str]] = {}
    for line in text.splitlines():
        match = re.match(r"^\|\s*(\d+)\s*\|", line)
        if not match:
            continue
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        column = re.sub(r"\([^)]*\)|\[[^\]]*\]|`[^`]*`", " ", cells[3])
        rows[int(match.group(1))] = {word for word in re.split(r"[\s+/,]+", column) if word in KINDS}
    return rows


def _file_kind(path: Path) -> str:
    name = path.name
    if name.startswith("test_browser"):
        return "PW"
    if name.startswith("test_app_"):
        return "AT"
    if name.startswith("test_server"):
        return "WS"
    if name.startswith("test_soak"):
        return "SOAK"
    return "U"


def _bad_input_marks(decorators: list[ast.expr]) -> list[ast.Call]:
    return [
        d
        for d in decorators
        if isinstance(d, ast.Call) and isinstance(d.func, ast.Attribute) and d.func.attr == "bad_input"
    ]


def _is_given(decorator: ast.expr) -> bool:
    func = decorator.func if isinstance(decorator, ast.Call) else decorator
    return (isinstance(func, ast.Name) and func.id == "given") or (
        isinstance(func, ast.Attribute) and func.attr == "given"
    )


def _literal_kinds(mark: ast.Call, default: str) -> set[str]:
    for keyword in mark.keywords:
        if keyword.arg == "kind":
            value = ast.literal_eval(keyword.value)
            return {value} if isinstance(value, str) else set(value)
    return {default}


def marked_tests(folder: Path = TESTS) -> dict[int, dict[str, list[str]]]:
    """Row -> kind -> the test ids that claim it, read statically from every test module's decorators."""
    claims: dict[int, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(folder.glob("test_*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        functions: list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]] = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                functions.append((node.name, node))
            elif isinstance(node, ast.ClassDef):
                functions += [
                    (f"{node.name}::{n.name}", n)
                    for n in node.body
                    if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
        for name, function in functions:
            if not name.split("::")[-1].startswith("test"):
                continue
            hypothesis = any(_is_given(d) for d in function.decorator_list)
            for mark in _bad_input_marks(function.decorator_list):
                kinds = _literal_kinds(mark, _file_kind(path)) | ({"HYP"} if hypothesis else set())
                for arg in mark.args:
                    row = ast.literal_eval(arg)
                    for kind in kinds:
                        claims[row][kind].append(f"{path.name}::{name}")
    return claims


@pytest.fixture(scope="module")
def rows() -> dict[int, set[str]]:
    if not CATALOGUE.is_file():
        pytest.skip(f"the catalogue is not at {CATALOGUE}")
    return catalogue_rows(CATALOGUE.read_text(encoding="utf-8"))


def test_catalogue_parses_every_row_with_its_kinds(rows: dict[int, set[str]]) -> None:
    assert sorted(rows) == list(range(1, max(rows) + 1)), "row numbers are not 1..N"
    assert max(rows) >= 68
    assert all(rows.values()), [row for row, kinds in rows.items() if not kinds]
    # spot checks of the parser against the document as written
    assert rows[2] == {"U", "AT", "PW"}
    assert rows[5] == {"WS", "HTTP", "AT"}
    assert rows[47] == {"WS", "PL"}
    assert rows[64] == {"U"}  # "U vs pytorch-grad-cam + reshape"
    assert rows[68] == {"threads", "PW"}


def test_parser_reads_kinds_not_notes() -> None:
    text = (
        '| 1 | a | b | U (generate with `Image.new("1", big)`) + SOAK | - |\n'
        "| 2 | a | b | WS/HTTP script + AT  | - |\n| x | not a row | | PW | |\n"
        "| 3 | a | b | U + AT [verified AppTest accepts reversed] | - |\n"
    )
    assert catalogue_rows(text) == {1: {"U", "SOAK"}, 2: {"WS", "HTTP", "AT"}, 3: {"U", "AT"}}


def test_marks_name_existing_rows_and_known_kinds(rows: dict[int, set[str]]) -> None:
    claims = marked_tests()
    assert set(claims) <= set(rows), f"marks name rows the catalogue does not have: {sorted(set(claims) - set(rows))}"
    used = {kind for by_kind in claims.values() for kind in by_kind}
    assert used <= set(KINDS), used - set(KINDS)


def test_every_row_has_a_test(rows: dict[int, set[str]]) -> None:
    claims = marked_tests()
    missing = [row for row in sorted(rows) if row not in claims and row not in PENDING]
    assert missing == [], f"catalogue rows without a @pytest.mark.bad_input test: {missing}"


def test_every_kind_the_test_column_names_is_covered(rows: dict[int, set[str]]) -> None:
    claims = marked_tests()
    gaps = []
    for row, kinds in sorted(rows.items()):
        if row in PENDING:
            continue
        have = set(claims.get(row, {}))
        for kind in sorted(kinds):
            if kind not in have and not (kind in EQUIVALENT and EQUIVALENT[kind][0] in have):
                gaps.append(f"row {row}: no {kind} test")
    assert gaps == [], "\n".join(gaps)


def test_pending_rows_are_only_the_declared_later_issue_and_still_untested() -> None:
    assert PENDING == {}, "every row has its tests; a row may be pending only on an open issue that covers it"
    claims = marked_tests()
    assert [row for row in PENDING if row in claims] == [], "a pending row has tests now: drop it from PENDING"


def test_static_reader_finds_marks_on_functions_and_methods_with_kinds(tmp_path: Path) -> None:
    (tmp_path / "test_browser_x.py").write_text(
        "import pytest\n@pytest.mark.bad_input(4, 6)\ndef test_a(): pass\n"
        "@pytest.mark.bad_input(6, kind='HTTP')\ndef test_b(): pass\n"
        "class TestC:\n    @pytest.mark.bad_input(22)\n    def test_d(self): pass\n"
        "@pytest.mark.bad_input(9)\ndef helper(): pass\n"
    )
    (tmp_path / "test_y.py").write_text(
        "import pytest\nfrom hypothesis import given\n@given(x=None)\n@pytest.mark.bad_input(34)\ndef test_e(x): pass\n"
    )
    claims = marked_tests(tmp_path)
    assert {row: {k: sorted(v) for k, v in by_kind.items()} for row, by_kind in claims.items()} == {
        4: {"PW": ["test_browser_x.py::test_a"]},
        6: {"PW": ["test_browser_x.py::test_a"], "HTTP": ["test_browser_x.py::test_b"]},
        22: {"PW": ["test_browser_x.py::TestC::test_d"]},
        34: {"U": ["test_y.py::test_e"], "HYP": ["test_y.py::test_e"]},
    }
