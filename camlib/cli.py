"""What camlib's command-line entry points (``python -m camlib.train``, ``python -m camlib.batch``) share: how a
run ends. A ``CamlibError`` is one line on stderr and exit status 2 (a usage error, as argparse's); Ctrl-C is one
line saying how to resume and status 130 (128 + SIGINT, the shell's convention); anything else is a bug and keeps
its traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

from camlib.errors import CamlibError

T = TypeVar("T")

EXIT_ERROR = 2
EXIT_INTERRUPTED = 130


def run_command(work: Callable[[], T], *, resume: str) -> tuple[int, T | None]:
    """``(0, work())``, or ``(EXIT_ERROR, None)`` after printing ``error: <message>`` for a ``CamlibError``, or
    ``(EXIT_INTERRUPTED, None)`` after printing ``interrupted: <resume>`` on Ctrl-C."""
    try:
        return 0, work()
    except CamlibError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR, None
    except KeyboardInterrupt:
        print(f"interrupted: {resume}", file=sys.stderr)
        return EXIT_INTERRUPTED, None
