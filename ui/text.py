"""The one place where text a user controls is made safe to show: file names, imported pipeline contents, checkpoint
key names inside error messages, class names.

Streamlit renders Markdown (links, images, LaTeX, ``:red[...]`` directives, emoji shortcodes) in ``st.markdown``,
``st.caption``, ``st.info/success/warning/error``, widget labels, expander titles and image captions; Plotly renders a
subset of HTML (``<a href>``, ``<b>``...) in axis labels and hover text. Every message with a user-controlled part is
built with ``md`` (Markdown) or ``html_text`` (Plotly), so such a part always reaches the page as literal text.
"""

from __future__ import annotations

import html
import numbers
import re
import string
from typing import Any

# CommonMark: "Any ASCII punctuation character may be backslash-escaped" (spec 0.31, section 2.4). The backslash
# itself first; '$' (remark-math), ':' (Streamlit's :red[...] / :material/...: directives) and '<', '>', '&' (HTML and
# entities) included.
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&@/])")
# Line breaks would start new Markdown blocks; bidi overrides (U+202A-E, U+2066-9) and other controls let a name
# display differently from what it is (e.g. "photo\u202egnp.exe" shows as "photoexe.png").
_CONTROLS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029]+")
NAME_LIMIT = 120  # characters of a file name (or of any unbroken word) shown; longer ones are shortened in the middle
FIELD_LIMIT = 1000  # characters of one ``md`` field (an error message that quotes a user's 4 KB value, say)
# GFM autolinks are found in the text *after* escapes are resolved (mdast-util-gfm-autolink-literal), so "https\:\/\/"
# still becomes a link: a WORD JOINER (U+2060, invisible) after "https:", after "www" and after "@" breaks the pattern.
_AUTOLINK = re.compile(r"(\\:)(?=\\/\\/)|(?i:(www))(?=\\\.)|(\\@)")
WORD_JOINER = "\u2060"
_LONG_WORD = re.compile(rf"\S{{{NAME_LIMIT + 1},}}")


def shorten(text: str, limit: int = NAME_LIMIT) -> str:
    """``text`` cut to at most ``limit`` characters by an ellipsis in the middle (start and extension stay)."""
    if len(text) <= limit:
        return text
    head = (limit - 1) * 2 // 3
    return f"{text[:head]}…{text[len(text) - (limit - 1 - head) :]}"


def escape(value: Any, *, limit: int | None = None) -> str:
    """``str(value)`` as Markdown that renders literally (no links, images, LaTeX, directives, HTML or emphasis).

    Every Markdown punctuation character is backslash-escaped, and an invisible WORD JOINER breaks GFM's autolinks
    (``https://``, ``www.``, e-mail addresses).

    Control and bidi characters become U+FFFD, line breaks become spaces, words longer than ``NAME_LIMIT`` are
    shortened (``shorten``), and so is the whole text to ``limit`` characters when given; then it is escaped.
    """
    text = _CONTROLS.sub("\ufffd", _LINE_BREAKS.sub(" ", str(value)))
    text = _LONG_WORD.sub(lambda word: shorten(word.group()), text)
    if limit is not None:
        text = shorten(text, limit)
    return _AUTOLINK.sub(lambda m: m.group() + WORD_JOINER, _MARKDOWN_SPECIAL.sub(r"\\\1", text))


class _EscapingFormatter(string.Formatter):
    def format_field(self, value: Any, format_spec: str) -> str:
        formatted = super().format_field(value, format_spec)
        if isinstance(value, numbers.Number) and not isinstance(value, bool):
            return formatted  # a formatted number carries no markup
        return escape(formatted, limit=FIELD_LIMIT)


_FORMATTER = _EscapingFormatter()


def md(template: str, /, **fields: Any) -> str:
    """Markdown from a trusted ``template`` (``str.format`` syntax) whose every field is escaped after formatting.

    Example: ``md("Cannot import {name}.", name="[x](https://a.invalid)")`` gives
    ``Cannot import \\[x\\]\\(https\\:\\/\\/a\\.invalid\\).``, which renders as ``Cannot import [x](https://a.invalid).``

    Numbers are formatted as usual (``{p:.1%}``) and left as they are; other fields are cut to ``FIELD_LIMIT``
    characters. Pass file names through ``shorten`` first.
    """
    return _FORMATTER.vformat(template, (), fields)


def html_text(value: Any) -> str:
    """``str(value)`` for Plotly labels and hover text: HTML-escaped, so ``<a href>`` and friends show literally."""
    return html.escape(_CONTROLS.sub("\ufffd", str(value)), quote=False)
