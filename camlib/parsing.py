"""Strict parsing of numbers written in untrusted text: URL query values, file names, command-line and import fields.

``str.isdigit()`` and ``int()`` disagree with each other and with what a user means: ``"²".isdigit()`` is True but
``int("²")`` raises; ``int()`` accepts ``" 7 "``, ``"+7"``, ``"1_000"`` and other scripts' digits (``"٣"`` is 3);
and past ``sys.get_int_max_str_digits()`` (4,300 by default) it raises, after reading the whole string. Every parser
of untrusted text in camlib and the pages goes through ``parse_int``: one grammar, one typed error, and a length cap
checked before any conversion, so the cost is bounded by the declared number of digits.
"""

from __future__ import annotations

import re

from camlib.contracts import require_int
from camlib.errors import CamlibError, InputError

MAX_INT_DIGITS = 30  # digits accepted at most: above any index or seed camlib reads (2**64 has 20)
_INTEGER = re.compile(r"-?[0-9]+")  # [0-9] is ASCII only: no other script's digits, no superscripts
_SHOWN = 40  # characters of a refused value quoted in the message


def _quote(text: str) -> str:
    """``text`` as ``repr`` shows it, cut to ``_SHOWN`` characters (a refused value can be megabytes long)."""
    return repr(text) if len(text) <= _SHOWN else f"{text[:_SHOWN]!r}... ({len(text):,} characters)"


def parse_int(
    text: object,
    name: str,
    *,
    minimum: int | None = None,
    maximum: int | None = None,
    error: type[CamlibError] = InputError,
) -> int:
    """The integer ``text`` writes, in ``[minimum, maximum]`` (either bound may be None: unbounded).

    The grammar is an optional ``-`` and 1 to ``MAX_INT_DIGITS`` ASCII digits ``0-9``, nothing else: no sign ``+``,
    no spaces, no underscores, no other Unicode digits (superscripts, Arabic-Indic, full-width), no decimal point.
    The length is checked before the conversion, so a 100,000-digit value costs a ``len``, and never meets
    Python's 4,300-digit limit on ``int()``.

    Args:
        text: the value as read (a ``str``; anything else is refused).
        name: what the value is, for the message (e.g. ``"class"``, ``"--class"``).
        minimum, maximum: inclusive bounds.
        error: the ``CamlibError`` subclass to raise (the caller's domain: ``PipelineError`` for the Lab, ...).

    Raises:
        ``error`` (``InputError`` by default): not a string, not in the grammar, too many digits, or out of bounds;
        the message names ``name``, quotes the value (cut to 40 characters) and says what is accepted.
    """
    if not isinstance(text, str):
        raise error(f"{name} must be a whole number written in digits, got {type(text).__name__}")
    bounds = f"{'' if minimum is None else minimum}..{'' if maximum is None else maximum}"
    digits = len(text) - text.startswith("-")
    if digits > MAX_INT_DIGITS:
        raise error(f"{name} must be a whole number in {bounds}, got {digits:,} characters (at most {MAX_INT_DIGITS})")
    if not _INTEGER.fullmatch(text):
        raise error(f"{name} must be a whole number in {bounds} written in the digits 0-9, got {_quote(text)}")
    return require_int(int(text), name, minimum=minimum, maximum=maximum, error=error)


def int_or_none(text: object, *, minimum: int | None = None, maximum: int | None = None) -> int | None:
    """``parse_int(text, ...)``, or None where it raises: for text that may name an integer or something else (a
    folder that is a class index or a class name, ``--class 3`` or ``--class predicted``)."""
    try:
        return parse_int(text, "value", minimum=minimum, maximum=maximum)
    except InputError:
        return None
