"""How long the Misclassification page takes to open on a freshly started server (the target: after the first open,
any start opens the page in under 5 s).

Run from the repository root:  python benchmarks/bench_gallery_start.py [--starts 3] [--cold]

Each start launches a new ``streamlit run app.py`` (tests/helpers/streamlit_ws.py, headless, 127.0.0.1) and measures:

- server start: from launching the process until ``/_stcore/health`` answers (Python, Streamlit and the app's imports);
- page open: one protocol-level WebSocket session (as a browser speaks to the server) asks for the Misclassification
  page as its first run, as a browser opening ``/misclassifications`` does; the time from that request until
  ``script_finished``, with the page's accuracy line drawn and no error or exception. This is what the 5 s goal is
  measured on: it includes loading CIFAR-10, the model and the gallery's CAMs in the new process, and reading the
  gallery's on-disk predictions (``camlib.prediction_cache``), which the first open for these weights and data builds.

With ``--cold`` the first start uses an empty ``CAMLIB_CACHE_DIR`` (a temporary directory) and so pays for the
10,000 predictions; it is printed apart and the later starts reuse that directory. Without it the user's cache is
used, and the first start is a warm-up if that cache is empty. Needs CIFAR-10 (``CAMLIB_CIFAR10_ROOT`` or the app's
default root).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from helpers.streamlit_ws import Session, streamlit_server  # noqa: E402
from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402

GOAL_S = 5.0
PAGE_NAME = "misclassifications"  # the page's URL path (app.py: app_pages/misclassifications.py)


def open_page(session: Session) -> float:
    """Ask for the Misclassification page as the session's first run; seconds until it finished."""
    message = BackMsg()
    message.rerun_script.query_string = ""
    message.rerun_script.page_name = PAGE_NAME
    start = time.perf_counter()
    session.ws.send(message.SerializeToString())
    run = session.read_run(timeout=600)
    seconds = time.perf_counter() - start
    if not run.ok or run.errors:
        raise SystemExit(f"the page failed: status {run.status}, {run.exceptions} {run.errors}")
    if not any(text.startswith("Test accuracy") for text in run.texts):
        raise SystemExit(f"the page finished without its accuracy line: {run.texts[:5]}")
    return seconds


def one_start(env: dict[str, str], log: Path) -> tuple[float, float]:
    """(server start, page open) in seconds for one fresh server."""
    launched = time.perf_counter()
    with streamlit_server(env=env, log=log) as server:
        started = time.perf_counter() - launched
        with Session(server) as session:
            return started, open_page(session)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="measured starts after the first one")
    parser.add_argument("--cold", action="store_true", help="first start with an empty prediction cache")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        env = {"CAMLIB_CACHE_DIR": str(Path(scratch) / "cache")} if args.cold else {}
        log = Path(scratch) / "streamlit.log"
        first = one_start(env, log)
        label = "first start, empty prediction cache" if args.cold else "first start (warm-up)"
        print(f"{label}: server start {first[0]:.2f} s, page open {first[1]:.2f} s")
        figures = []
        for index in range(args.starts):
            figures.append(one_start(env, log))
            print(f"start {index + 1}: server start {figures[-1][0]:.2f} s, page open {figures[-1][1]:.2f} s")
    server_s = [f[0] for f in figures]
    page_s = [f[1] for f in figures]
    print(
        f"\nover {len(figures)} later starts: page open median {statistics.median(page_s):.2f} s, "
        f"max {max(page_s):.2f} s (goal < {GOAL_S:.0f} s: {'met' if max(page_s) < GOAL_S else 'MISSED'}); "
        f"server start median {statistics.median(server_s):.2f} s (the process, before any page)"
    )


if __name__ == "__main__":
    main()
