"""ui/text.py: user-controlled text reaches the page only as literal text; and a project check that every Streamlit
call that renders Markdown gets its text from ``md``/``escape`` (or a plain literal), never from an f-string."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest

from ui.text import FIELD_LIMIT, NAME_LIMIT, WORD_JOINER, escape, html_text, md, shorten

REPO = Path(__file__).resolve().parents[1]
PUNCTUATION = "\\`*_{}[]()<>#+-.!|~:$&@/"
HOSTILE = [
    "[x](https://example.invalid/) ![t](https://example.invalid/t.png).png",
    "<img src=x onerror=alert(1)>.png",
    "$\\href{https://example.invalid}{x}$.png",
    ":red[x] :smile: :material/home:.png",
    "www.example.invalid a@b.invalid https://example.invalid",
    "a &amp; b &lt; *em* __u__ `c` ~~s~~ | t | # h",
    "\\[not](escaped)\\\\",
    "".join(PUNCTUATION) * 3,
]


def _unescape(text: str) -> str:
    """What the reader sees: backslash escapes resolved, invisible word joiners gone."""
    return re.sub(r"\\(.)", r"\1", text).replace(WORD_JOINER, "")


def _unescaped_specials(text: str) -> list[int]:
    """Positions of Markdown punctuation not preceded by an escaping backslash."""
    found, k = [], 0
    while k < len(text):
        if text[k] == "\\":
            k += 2
            continue
        if text[k] in PUNCTUATION:
            found.append(k)
        k += 1
    return found


@pytest.mark.bad_input(20)
@pytest.mark.parametrize("text", HOSTILE)
def test_escape_leaves_no_live_markdown_and_round_trips(text: str) -> None:
    escaped = escape(text)
    assert _unescaped_specials(escaped) == []
    assert _unescape(escaped) == text  # CommonMark resolves each backslash escape to the character: the same text


def test_escape_exact_values() -> None:
    assert escape("[x](https://e.invalid).png") == "\\[x\\]\\(https\\:\u2060\\/\\/e\\.invalid\\)\\.png"
    assert escape("<b>&amp;</b>") == r"\<b\>\&amp;\<\/b\>"
    assert escape("$x$ :red[y]") == r"\$x\$ \:red\[y\]"
    assert escape("\\") == "\\\\"
    assert escape("plain words 123") == "plain words 123"
    assert escape(3.5) == r"3\.5"


@pytest.mark.bad_input(20)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("https://e.invalid", "https\\:\u2060\\/\\/e\\.invalid"),
        ("HTTP://e.invalid", "HTTP\\:\u2060\\/\\/e\\.invalid"),
        ("www.e.invalid", "www\u2060\\.e\\.invalid"),
        ("WWW.e.invalid", "WWW\u2060\\.e\\.invalid"),
        ("mailto:me@e.invalid", "mailto\\:me\\@\u2060e\\.invalid"),
        ("a: b/c www", "a\\: b\\/c www"),  # no autolink shape: no joiner
    ],
)
def test_autolinks_are_broken_by_an_invisible_word_joiner(text: str, expected: str) -> None:
    # GFM finds autolinks in the text after escapes are resolved, so escaping alone would leave them live.
    assert escape(text) == expected


@pytest.mark.bad_input(20)
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("photo\u202egnp.exe", "photo\ufffdgnp\\.exe"),  # RTL override: shown as a replacement character
        ("a\u2066b\u2069c\u200fd", "a\ufffdb\ufffdc\ufffdd"),
        ("one\ntwo\r\nthree\rfour\u2028five", "one two three four five"),  # no new Markdown block
        ("nul\x00bell\x07", "nul\ufffdbell\ufffd"),
    ],
)
def test_controls_and_line_breaks_are_neutralised(text: str, expected: str) -> None:
    assert escape(text) == expected


def test_shorten_keeps_start_and_end() -> None:
    assert shorten("short.png") == "short.png"
    long = "a" * 4000 + ".png"
    cut = shorten(long)
    assert len(cut) == NAME_LIMIT and cut.endswith("aaaa.png") and cut.startswith("a" * 79) and "…" in cut
    for limit in (2, 3, 10, 121):
        assert len(shorten("x" * 500, limit)) == limit
    assert escape(long, limit=50) == escape(shorten(long, 50))


@pytest.mark.bad_input(20)
def test_long_words_and_fields_are_shortened() -> None:
    word = "n" * 4096 + ".png"
    assert escape(word) == escape(shorten(word)) and len(_unescape(escape(word))) == NAME_LIMIT
    assert escape(f"unknown transform '{word}' in step 2") == escape(f"unknown transform '{shorten(word)}' in step 2")
    assert escape("x" * NAME_LIMIT) == "x" * NAME_LIMIT  # at the limit: kept
    spaced = "word " * 1000
    assert escape(spaced) == spaced[:-1] + " "  # words are short: nothing cut without a limit
    assert len(md("{e}", e=spaced)) == FIELD_LIMIT and md("{e}", e="ok") == "ok"


def test_md_escapes_fields_not_the_template_nor_numbers() -> None:
    assert md("**{name}** {p:.1%} {n:,} {k}", name="_a_", p=np.float32(0.25), n=10000, k=7) == (
        r"**\_a\_** 25.0% 10,000 7"
    )
    assert md("{flag}", flag=True) == "True"
    assert md("Cannot import {file}: {error}", file="[x](y).json", error=ValueError("bad *value*")) == (
        r"Cannot import \[x\]\(y\)\.json: bad \*value\*"
    )


def test_html_text_for_plotly() -> None:
    assert html_text('<a href="https://e.invalid">x</a> & co') == (
        '&lt;a href="https://e.invalid"&gt;x&lt;/a&gt; &amp; co'
    )
    assert html_text("cat") == "cat"
    assert html_text("x\u202ey") == "x\ufffdy"


# --- the project check ---------------------------------------------------------------------------------------------

# Streamlit calls whose text (first argument, or these keywords) is rendered as Markdown.
MARKDOWN_CALLS = {
    "markdown",
    "caption",
    "info",
    "success",
    "warning",
    "error",
    "toast",
    "write",
    "title",
    "header",
    "subheader",
    "expander",
    "image",
    "progress",
    "button",
    "download_button",
    "selectbox",
    "multiselect",
    "radio",
    "slider",
    "number_input",
    "text_input",
    "toggle",
    "checkbox",
    "file_uploader",
    "color_picker",
    "popover",
    "metric",
}
TEXT_KEYWORDS = {"label", "body", "caption", "text", "help"}
SOURCES = sorted([REPO / "app.py", *REPO.glob("app_pages/*.py"), *REPO.glob("ui/**/*.py")])


def _unsafe_text(node: ast.expr) -> bool:
    """Text built by hand: an f-string with fields, string concatenation or %, ``.format(...)`` or ``str(...)``."""
    if isinstance(node, ast.JoinedStr):
        return any(isinstance(part, ast.FormattedValue) for part in node.values)
    if isinstance(node, ast.BinOp):
        return True
    if isinstance(node, ast.Call):
        func = node.func
        return (isinstance(func, ast.Attribute) and func.attr == "format") or (
            isinstance(func, ast.Name) and func.id == "str"
        )
    return False


def markdown_calls_built_by_hand(source: str) -> list[int]:
    """Line numbers of Markdown-rendering calls whose text is not a literal nor from ``md``/``escape``."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if not (
            isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MARKDOWN_CALLS
        ):
            continue
        texts = node.args[:1] + [k.value for k in node.keywords if k.arg in TEXT_KEYWORDS]
        if any(_unsafe_text(text) for text in texts):
            lines.append(node.lineno)
    return lines


@pytest.mark.bad_input(20)
@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_markdown_message_goes_through_md(path: Path) -> None:
    source = path.read_text()
    assert markdown_calls_built_by_hand(source) == [], f"{path.name}: build these messages with ui.text.md"
    assert "unsafe_allow_html" not in source


def test_the_project_check_finds_hand_built_messages() -> None:
    source = (
        'st.error(f"Cannot import {name}")\n'
        'st.caption("a " + name)\n'
        'col.image(png, caption=f"{name}")\n'
        'st.info("{}".format(name))\n'
        "st.error(str(error))\n"
        'st.error(md("Cannot import {name}", name=name))\n'
        'st.caption("literal")\n'
        'st.warning(f"literal without fields")\n'
        'st.image(png, caption=md("{n}", n=name))\n'
    )
    assert markdown_calls_built_by_hand(source) == [1, 2, 3, 4, 5]
