"""Many users on one server: N concurrent sessions drive the CAM Explorer of one ``streamlit run app.py``.

Run from the repository root:  python benchmarks/bench_load.py [--sessions 1 4 8] [--reruns K] [--quick] [--think-s S]

One headless server on a free 127.0.0.1 port (tests/helpers/streamlit_ws.py) with ``CAMLIB_LOG_LEVEL=debug``, so that
``ui.server.run_log`` writes one line per script run with its session id and duration. After a warm-up visit (the model
loads once), for each N in ``--sessions``: N threads, each with its own protocol-level WebSocket session (as a browser
speaks to the server), open the CAM Explorer on their own sample photo, wait for each other, then send ``--reruns``
reruns one after another, each waiting for ``script_finished`` (closed loop; with ``--think-s S`` each session first
pauses S times a uniform draw in [0.5, 1.5], as a user reads the page before the next change):

    method change, overlay change, layer change, overlay change, ...

Method changes cycle through the gradient methods (Grad-CAM, Grad-CAM++, XGrad-CAM, HiResCAM, LayerCAM) and layer
changes through three target layers (the default one, and those at 3/4 and 1/2 of the candidate list), each session
from its own offset and on its own photo, so CAMs are mostly computed, not cached (the count of "from the cache"
answers is printed). Overlay changes alternate the opacity slider and the colormap; when
those widgets are drawn inside an ``st.fragment`` the rerun names that fragment, as the browser does.

Reported per N:
- server-side p50/p95 of the script-run duration, from the server's log lines (``ui.server.run_log``), for (a)
  method/layer changes and (b) overlay-only changes. A fragment rerun does not run app.py: its duration is logged only
  when the fragment's function is decorated with ``ui.server.run_log.timed_run``, otherwise it is reported as "not
  logged";
- the same percentiles as the client observed them (send to ``script_finished``), which include the client's own
  work (parsing every message of 8 sessions) on the same machine;
- errors: runs that did not finish successfully, exceptions or ``st.error`` alerts in the stream, failed clients and
  log lines whose outcome is an error;
- the server's RSS (``VmRSS``) after each N and its peak during it, and the growth from the first to the last N.

The goals are printed next to the figures: with 8 sessions p95 <= 1.5 s for method/layer changes and <= 300 ms for
overlay-only changes, 0 errors, RSS growth from 1 to 8 sessions < 400 MB.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import re
import sys
import tempfile
import threading
import time
from collections import defaultdict
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

from helpers.streamlit_ws import FINISHED_OK, Run, Server, Session, streamlit_server  # noqa: E402
from tqdm import tqdm  # noqa: E402

from camlib.cam import METHODS  # noqa: E402
from ui import keys  # noqa: E402

GRADIENT_METHODS = ("gradcam", "gradcam++", "xgradcam", "hirescam", "layercam")
PAGE = "CAM Explorer"
STEPS = ("method", "overlay", "layer", "overlay")  # the scripted sequence, repeated
GOAL_CHANGE_P95_S = 1.5  # method/layer change with 8 sessions
GOAL_OVERLAY_P95_S = 0.3  # overlay-only change
GOAL_RSS_GROWTH_MB = 400.0  # from 1 to 8 sessions
LINE = re.compile(
    r"run page='(?P<page>[^']*)' kind=(?P<kind>full|fragment) session='(?P<session>[^']*)' "
    r"outcome=(?P<outcome>\S+) duration_ms=(?P<ms>[\d.]+)"
)
ALPHA, COLORMAP, SAMPLE = f"{keys.CAM}_alpha", f"{keys.CAM}_colormap", f"{keys.CAM}_sample"
LAYERS_PREFIX = keys.cam_layers("")


@dataclass
class Step:
    kind: str  # "change" (method or layer) or "overlay"
    client_s: float
    fragment: bool  # sent as a fragment rerun
    cached: bool = False  # the CAM came from the cache


@dataclass
class SessionResult:
    session_id: str | None = None
    steps: list[Step] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    layers: list[str] = field(default_factory=list)  # the target layers it cycled through


def _failure(run: Run) -> str | None:
    if run.status not in FINISHED_OK:
        return f"script_finished status {run.status}"
    if run.exceptions or run.errors:
        return f"exceptions {run.exceptions}, errors {run.errors}"
    return None


def drive(
    server: Server, index: int, reruns: int, barrier: threading.Barrier, progress: tqdm, *, think_s: float = 0.0
) -> SessionResult:
    """One user: open the page on its own sample photo, wait for the others, then the scripted reruns, each after a
    pause of ``think_s`` times a uniform draw in [0.5, 1.5] (seeded by ``index``; none when ``think_s`` is 0)."""
    result, pauses = SessionResult(), random.Random(index)
    try:
        with Session(server) as session:
            first = session.rerun(timeout=300)
            samples = list(first.widgets[SAMPLE].options)
            layers_key = next(k for k in first.widgets if k.startswith(LAYERS_PREFIX))
            options = list(first.widgets[layers_key].options)
            default = list(first.widgets[layers_key].default) or [len(options) - 1]
            layers = [options[default[0]], options[(3 * len(options)) // 4], options[len(options) // 2]]
            result.layers = [layer.split("  [")[0] for layer in layers]
            colormaps = list(first.widgets[COLORMAP].options)
            labels = [METHODS[m].label for m in GRADIENT_METHODS]
            state = {SAMPLE: ("string_value", samples[index % len(samples)])}
            opened = session.rerun(state, timeout=300)  # the session's own photo, CAM computed at default settings
            if problem := _failure(opened):
                result.errors.append(f"open: {problem}")
            state |= {
                keys.CAM_METHOD: ("string_value", labels[0]),
                layers_key: ("string_array_value", [layers[0]]),
                ALPHA: ("double_array_value", [0.5]),
                COLORMAP: ("string_value", colormaps[0]),
            }
            result.session_id = session.session_id
            barrier.wait(timeout=600)
            for step in range(reruns):
                if think_s > 0:
                    time.sleep(think_s * pauses.uniform(0.5, 1.5))  # a user reading the page before the next change
                what, turn = STEPS[step % len(STEPS)], index + step // len(STEPS) + 1
                fragment = ""
                if what == "method":
                    state[keys.CAM_METHOD] = ("string_value", labels[turn % len(labels)])
                elif what == "layer":
                    state[layers_key] = ("string_array_value", [layers[turn % len(layers)]])
                elif (step // 2) % 2 == 0:  # overlay changes alternate: opacity, colormap
                    state[ALPHA] = ("double_array_value", [round(0.3 + 0.05 * (turn % 9), 2)])
                    fragment = session.fragment_of.get(ALPHA, "")
                else:
                    state[COLORMAP] = ("string_value", colormaps[turn % len(colormaps)])
                    fragment = session.fragment_of.get(COLORMAP, "")
                start = time.perf_counter()
                session.send_rerun(state, fragment_id=fragment)
                run = session.read_run(timeout=300)
                elapsed = time.perf_counter() - start
                cached = any("from the cache" in t for t in run.texts if t.startswith("Explaining class"))
                result.steps.append(Step("overlay" if what == "overlay" else "change", elapsed, bool(fragment), cached))
                if problem := _failure(run):
                    result.errors.append(f"rerun {step} ({what}): {problem}")
                progress.update()
    except Exception as error:  # noqa: BLE001 - counted and reported with the session number
        result.errors.append(f"session {index}: {type(error).__name__}: {error}")
    return result


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (None when there are no values)."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)]


def server_durations(log_text: str, results: list[SessionResult]) -> tuple[dict[str, list[float]], list[str], int]:
    """Server-side seconds per step kind, matched to each session's reruns in order, the log's error outcomes and
    the number of full reruns without a log line (a sign that the log and the reruns are out of step).

    Per session, the full-run lines of the page follow its full runs in order (the opening visit and the photo
    choice first), and the fragment-run lines its fragment reruns."""
    lines: dict[tuple[str, str], list[dict[str, str]]] = defaultdict(list)
    for match in LINE.finditer(log_text):
        line = match.groupdict()
        if line["kind"] == "fragment" or line["page"] == PAGE:
            lines[line["session"], line["kind"]].append(line)
    durations: dict[str, list[float]] = {"change": [], "overlay": []}
    errors, unmatched = [], 0
    for result in results:
        full = iter(lines[result.session_id or "", "full"][2:])
        fragments = iter(lines[result.session_id or "", "fragment"])
        for step in result.steps:
            line = next(fragments if step.fragment else full, None)
            if line is None:
                unmatched += not step.fragment
                continue
            if line["outcome"] != "ok":
                errors.append(f"server: {line['outcome']} in a {step.kind} rerun of session {result.session_id}")
            durations[step.kind].append(float(line["ms"]) / 1000)
    return durations, errors, unmatched


@dataclass
class Figures:
    sessions: int
    reruns: int
    server: dict[str, list[float]]
    client: dict[str, list[float]]
    fragment_overlays: bool
    cached: int
    changes: int
    errors: list[str]
    rss_mb: float
    peak_rss_mb: float
    seconds: float
    unmatched: int
    layers: list[str]


def measure(server: Server, sessions: int, reruns: int, think_s: float = 0.0) -> Figures:
    barrier = threading.Barrier(sessions)
    results: list[SessionResult] = [SessionResult() for _ in range(sessions)]
    start = time.monotonic()
    with tqdm(total=sessions * reruns, desc=f"{sessions} sessions", unit="rerun", leave=False) as progress:

        def run(index: int) -> None:
            results[index] = drive(server, index, reruns, barrier, progress, think_s=think_s)

        peak = server.run_sessions(run, sessions, daemon=True)
    elapsed = time.monotonic() - start
    time.sleep(0.5)  # the last log lines are written before script_finished; let the file catch up
    durations, log_errors, unmatched = server_durations(server.log.read_text(), results)
    steps = [s for r in results for s in r.steps]
    client = {kind: [s.client_s for s in steps if s.kind == kind] for kind in ("change", "overlay")}
    return Figures(
        sessions=sessions,
        reruns=reruns,
        server=durations,
        client=client,
        fragment_overlays=any(s.fragment for s in steps),
        cached=sum(s.cached for s in steps if s.kind == "change"),
        changes=len(client["change"]),
        errors=[e for r in results for e in r.errors] + log_errors,
        rss_mb=server.rss_mb(),
        peak_rss_mb=max(peak, server.rss_mb()),
        seconds=elapsed,
        unmatched=unmatched,
        layers=next((r.layers for r in results if r.layers), []),
    )


def _ms(values: list[float]) -> str:
    p50, p95 = percentile(values, 50), percentile(values, 95)
    return "-" if p50 is None else f"{p50 * 1000:.0f} / {p95 * 1000:.0f}"


def report(figures: list[Figures], baseline_rss: float) -> None:
    """Print the table and the goals, each marked met or MISSED."""
    labels = ", ".join(METHODS[m].label for m in GRADIENT_METHODS)
    print(f"\nMethods: {labels}; layers: {', '.join(figures[0].layers)}")
    print(f"Server RSS after the warm-up visit: {baseline_rss:.0f} MB\n")
    print(
        "| sessions | reruns | server p50 / p95 ms: method/layer | server: overlay-only | client-observed: "
        "method/layer | client-observed: overlay-only | CAMs from cache | errors | RSS after MB (peak) | wall s |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for f in figures:
        overlay_server = _ms(f.server["overlay"]) if f.server["overlay"] else "not logged (fragment)"
        print(
            f"| {f.sessions} | {f.sessions * f.reruns} | {_ms(f.server['change'])} | {overlay_server} | "
            f"{_ms(f.client['change'])} | {_ms(f.client['overlay'])} | {f.cached} of {f.changes} | {len(f.errors)} | "
            f"{f.rss_mb:.0f} ({f.peak_rss_mb:.0f}) | {f.seconds:.0f} |"
        )
    print(
        "\nclient-observed (includes client work on the same machine): send to script_finished, measured by the "
        "benchmark's threads, which parse every message of every session on the same CPU as the server."
    )
    if any(f.fragment_overlays for f in figures):
        print(
            "Overlay-only reruns were fragment reruns (the overlay widgets are inside st.fragment), as a browser "
            "sends them."
        )
    for f in figures:
        if f.unmatched:
            print(f"  warning ({f.sessions} sessions): {f.unmatched} full reruns had no server log line")
        for error in f.errors[:5]:
            print(f"  error ({f.sessions} sessions): {error}")

    last = figures[-1]
    n = last.sessions
    checks: list[tuple[str, float | None, float, str]] = [
        (f"method/layer p95, {n} sessions (server)", percentile(last.server["change"], 95), GOAL_CHANGE_P95_S, "s"),
        (f"overlay-only p95, {n} sessions (server)", percentile(last.server["overlay"], 95), GOAL_OVERLAY_P95_S, "s"),
        (f"overlay-only p95, {n} sessions (client)", percentile(last.client["overlay"], 95), GOAL_OVERLAY_P95_S, "s"),
        ("errors, all runs", float(sum(len(f.errors) for f in figures)), 0, ""),
    ]
    if len(figures) > 1:
        growth = last.rss_mb - figures[0].rss_mb
        name = f"RSS growth {figures[0].sessions} -> {last.sessions} sessions"
        checks.append((name, growth, GOAL_RSS_GROWTH_MB, "MB"))
    print("\nGoals:")
    for name, value, goal, unit in checks:
        if value is None:
            print(f"  {name}: not measured (goal <= {goal} {unit})")
            continue
        met = value <= goal if unit != "MB" else value < goal
        shown = f"{value:.3f} s" if unit == "s" else f"{value:.0f} {unit}".strip()
        bound = "<" if unit == "MB" else "<="
        print(f"  {name}: {shown} (goal {bound} {goal} {unit}) {'met' if met else 'MISSED'}".rstrip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[1, 4, 8], help="concurrent sessions, in order")
    parser.add_argument("--reruns", type=int, default=24, help="reruns per session after opening the page")
    parser.add_argument("--quick", action="store_true", help="smoke run: 4 reruns per session")
    parser.add_argument("--torch-threads", type=int, help="CAMLIB_TORCH_THREADS for the server (default: its own)")
    parser.add_argument(
        "--think-s",
        type=float,
        default=0.0,
        help="mean pause in s before each rerun, as a user reads the page (default 0: closed loop, each session "
        "sends its next rerun as soon as the last one finished)",
    )
    parser.add_argument("--log", type=Path, help="keep the server's log here (default: a temporary file)")
    args = parser.parse_args()
    reruns = 4 if args.quick else args.reruns
    if reruns < 1 or min(args.sessions) < 1:
        parser.error("--reruns and --sessions must be at least 1")
    if not sys.platform.startswith("linux"):
        parser.error("reads the server's memory from /proc (Linux only)")
    env = {"CAMLIB_LOG_LEVEL": "debug"}  # our timing lines only; Streamlit's own logs stay at info
    if args.torch_threads:
        env["CAMLIB_TORCH_THREADS"] = str(args.torch_threads)
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as stack:
        log = args.log or Path(tmp) / "server.log"
        print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; server log {log}")
        try:
            server = stack.enter_context(streamlit_server(env=env, log=log))
        except RuntimeError as error:
            print(f"error: the server did not start ({error})", file=sys.stderr)
            return 2
        with Session(server) as warm_up:
            if problem := _failure(warm_up.rerun(timeout=300)):
                print(f"error: the warm-up visit failed: {problem}", file=sys.stderr)
                return 2
        baseline = server.rss_mb()
        figures = [measure(server, n, reruns, args.think_s) for n in args.sessions]
        print(f"load average {os.getloadavg()[0]:.2f} at the end")
        report(figures, baseline)
    return 1 if any(f.errors for f in figures) else 0  # missed timing goals are reported, not an exit status


if __name__ == "__main__":
    sys.exit(main())
