"""camlib.parsing.parse_int: one strict grammar for every integer read from untrusted text, checked against Python's
own ``int()`` on the strings both accept, and against every Unicode character that ``str.isdigit()``,
``str.isdecimal()`` or ``str.isnumeric()`` calls a digit."""

from __future__ import annotations

import sys
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from camlib.batch import job as batch_job
from camlib.batch import shard as batch_shard
from camlib.cifar import CLASS_NAMES
from camlib.errors import CamlibError, InputError, PipelineError
from camlib.parsing import MAX_INT_DIGITS, int_or_none, parse_int

# Every code point Python calls a digit or a number, other than ASCII 0-9: superscripts (the "²"), circled
# and parenthesised digits, other scripts' decimal digits (Arabic-Indic, Devanagari, Thai, full-width...), the
# mathematical bold/monospace digits, fractions and Roman numerals.
NUMERIC_LOOKALIKES = [
    chr(c)
    for c in range(sys.maxunicode + 1)
    if not 0xD800 <= c <= 0xDFFF
    and (chr(c).isdigit() or chr(c).isdecimal() or chr(c).isnumeric())
    and chr(c) not in "0123456789"
]


def test_the_lookalike_family_is_the_one_python_defines():
    """The family is large and holds each kind: some that ``int()`` refuses (superscripts) and some it accepts."""
    assert len(NUMERIC_LOOKALIKES) > 1500
    refused_by_int, accepted_by_int = [], []
    for c in NUMERIC_LOOKALIKES:
        try:
            int(c)
        except ValueError:
            refused_by_int.append(c)
        else:
            accepted_by_int.append(c)
    assert {"²", "³", "¹", "①", "½", "Ⅻ"} <= set(refused_by_int)
    assert {"٣", "५", "３", "𝟏", "๓"} <= set(accepted_by_int)


@pytest.mark.bad_input(73)
@pytest.mark.parametrize("digit", NUMERIC_LOOKALIKES[::7] + ["²", "٣", "３", "𝟏"])
def test_every_non_ascii_digit_is_refused_typed_alone_and_inside_a_number(digit):
    for text in (digit, f"1{digit}", f"{digit}0", f"-{digit}"):
        with pytest.raises(InputError, match=r"class must be a whole number in 0\.\.9 written in the digits 0-9"):
            parse_int(text, "class", minimum=0, maximum=9)


def test_all_lookalikes_refused():
    """Every member of the family, not a sample: ``isdigit()`` would have let the first kind through to ``int()``."""
    for c in NUMERIC_LOOKALIKES:
        with pytest.raises(InputError):
            parse_int(c, "x")


@pytest.mark.bad_input(73)
@pytest.mark.parametrize(
    "text",
    ["", "-", "+1", " 1", "1 ", "\t1", "1\n", "1_000", "1.0", "1e3", "0x10", "0b1", "--1", "1-", "one", "1,2", "\x001"],
)
def test_what_int_accepts_or_isdigit_misreads_is_refused(text):
    with pytest.raises(InputError, match="written in the digits 0-9"):
        parse_int(text, "index")


@pytest.mark.bad_input(73)
@pytest.mark.parametrize("digits", [MAX_INT_DIGITS + 1, 4_300, 4_301, 100_000, 5_000_000])
def test_huge_numbers_are_refused_by_their_length_before_any_conversion(digits):
    """Past Python's 4,300-digit limit ``int()`` raises a plain ValueError; here the declared length is refused first,
    in time independent of the digits (a ``len``), and the message does not repeat the value."""
    text = "9" * digits
    start = time.perf_counter()
    with pytest.raises(InputError) as caught:
        parse_int(text, "class", minimum=0)
    assert time.perf_counter() - start < 0.05
    assert f"{digits:,} characters" in str(caught.value) and len(str(caught.value)) < 200
    with pytest.raises(InputError):
        parse_int("-" + text, "class")


def test_the_longest_accepted_number_equals_int():
    text = "9" * MAX_INT_DIGITS
    assert parse_int(text, "n") == int(text) == 10**MAX_INT_DIGITS - 1
    assert parse_int("-" + text, "n") == -(10**MAX_INT_DIGITS - 1)


@pytest.mark.parametrize(
    ("text", "low", "high", "ok"),
    [("0", 0, 9, True), ("9", 0, 9, True), ("10", 0, 9, False), ("-1", 0, 9, False), ("-5", -5, None, True),
     ("007", 0, 9, True), ("99999", 0, 5_000, False), ("-0", 0, 0, True)],
)  # fmt: skip
def test_bounds_are_inclusive_and_named(text, low, high, ok):
    if ok:
        assert parse_int(text, "index", minimum=low, maximum=high) == int(text)
    else:
        with pytest.raises(InputError, match=rf"index must be in {low}\.\.{'' if high is None else high}, got"):
            parse_int(text, "index", minimum=low, maximum=high)


@pytest.mark.parametrize("value", [3, 3.0, b"3", None, ["3"], True])
def test_non_strings_are_refused(value):
    with pytest.raises(InputError, match="must be a whole number written in digits"):
        parse_int(value, "x")


def test_the_callers_error_class_is_raised():
    with pytest.raises(PipelineError, match="seed"):
        parse_int("²", "seed", error=PipelineError)


def test_a_long_refused_value_is_quoted_short():
    with pytest.raises(InputError) as caught:
        parse_int("x" * MAX_INT_DIGITS, "x")
    assert len(str(caught.value)) < 160


@pytest.mark.bad_input(73, kind="HYP")
@given(st.text(max_size=60))
def test_any_unicode_text_gives_int_or_a_typed_error(text):
    """Random Unicode: the result is Python's ``int()`` of an ASCII-digit string, or a ``CamlibError``, never another
    exception."""
    try:
        value = parse_int(text, "x", minimum=-(10**9), maximum=10**9)
    except CamlibError:
        return
    body = text[1:] if text.startswith("-") else text
    assert body and all(c in "0123456789" for c in body)
    assert value == int(text)


@pytest.mark.bad_input(73, kind="HYP")
@given(st.integers(min_value=-(10**MAX_INT_DIGITS) + 1, max_value=10**MAX_INT_DIGITS - 1))
def test_every_integer_written_by_str_reads_back(n):
    assert parse_int(str(n), "n") == n


@pytest.mark.bad_input(73, kind="HYP")
@given(st.from_regex(r"\A-?[0-9]{1,40}\Z"), st.integers(-50, 50), st.integers(-50, 50))
def test_bounds_agree_with_int_on_the_grammar(text, low, high):
    digits = len(text.lstrip("-"))
    try:
        value = parse_int(text, "x", minimum=low, maximum=high)
    except InputError:
        assert digits > MAX_INT_DIGITS or not low <= int(text) <= high
    else:
        assert digits <= MAX_INT_DIGITS and low <= value == int(text) <= high


@pytest.mark.parametrize(
    ("text", "expected"),
    [("3", 3), ("0", 0), ("9", 9), ("10", None), ("²", None), ("٣", None), ("cat", None), (" 3", None),
     ("9" * 5000, None), ("-1", None)],
)  # fmt: skip
def test_int_or_none_is_parse_int_without_the_error(text, expected):
    assert int_or_none(text, minimum=0, maximum=9) == expected


@pytest.mark.bad_input(73)
@pytest.mark.parametrize("target", ["²", "٣", "３", "+3", "3_0", "3.0", "9" * 5_000])
def test_the_batch_command_line_refuses_a_class_isdigit_or_int_would_take(tmp_path, target):
    """``--class`` is checked with ``parse_int``'s grammar before any work: ``"²"`` used to pass ``isdigit()`` and
    stop the run with an untyped ``ValueError`` in ``int()``; ``"٣"`` became class 3."""
    config = batch_job.parse_args(["--images", str(tmp_path), "--out", str(tmp_path / "out"), "--class", target])
    with pytest.raises(InputError, match="--class must be predicted, true or an index"):
        batch_job._check_config(config)
    config = batch_job.parse_args(["--images", str(tmp_path), "--out", str(tmp_path / "out"), "--class", "3"])
    batch_job._check_config(config)  # the ASCII index still passes


@pytest.mark.bad_input(73)
@pytest.mark.parametrize(
    ("folder", "label"),
    [("3", 3), ("cat", 3), ("CAT", 3), ("9", 9), ("10", None), ("²", None), ("٣", None), ("३", None),
     ("03", 3), ("9" * 5_000, None)],
)  # fmt: skip
def test_a_batch_folder_name_is_a_class_name_or_a_strict_index(folder, label):
    assert batch_shard._label_of(folder, CLASS_NAMES) == label
