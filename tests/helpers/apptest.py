"""What the AppTest tests (tests/test_app_*.py, tests/test_ui_*.py) share: the app's entry script, the time a run of
it may take on a busy 2-core machine, and the CAM Explorer's "Explaining class ..." line."""

from __future__ import annotations

import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

REPO = Path(__file__).resolve().parents[2]
APP = str(REPO / "app.py")
# A bound on a hung run, not a speed test: a cold CAM or grid on a shared 2-core machine takes up to a minute.
TIMEOUT = 300


def explained(at: AppTest) -> str:
    """The "Explaining class ..." line without its timing (which says whether the CAM came from the cache)."""
    line = next(m.value for m in at.markdown if m.value.startswith("**Explaining class"))
    return re.sub(r" (in \d+ ms|from the cache \(first computed in \d+ ms\)) on ", " on ", line)
