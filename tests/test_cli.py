"""Tests of camlib.cli: how camlib's commands end (exit status and the one line on stderr)."""

from __future__ import annotations

import pytest

from camlib.cli import EXIT_ERROR, EXIT_INTERRUPTED, run_command
from camlib.errors import InputError


def test_a_finished_run_returns_zero_and_the_result() -> None:
    assert run_command(lambda: 41 + 1, resume="again") == (0, 42)


def test_a_camlib_error_is_one_line_and_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    def fail() -> None:
        raise InputError("--epochs must be in 1..1000, got 0")

    assert run_command(fail, resume="again") == (EXIT_ERROR, None) == (2, None)
    assert capsys.readouterr().err == "error: --epochs must be in 1..1000, got 0\n"


def test_ctrl_c_says_how_to_resume_with_status_130(capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted() -> None:
        raise KeyboardInterrupt

    assert run_command(interrupted, resume="run it again") == (EXIT_INTERRUPTED, None) == (130, None)
    assert capsys.readouterr().err == "interrupted: run it again\n"


def test_a_bug_keeps_its_traceback() -> None:
    def bug() -> None:
        raise ZeroDivisionError("not a camlib error")

    with pytest.raises(ZeroDivisionError):
        run_command(bug, resume="again")
