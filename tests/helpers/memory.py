"""Peak memory of a script run in a fresh interpreter (``run_python``), for the tests whose bound is memory: decoding
(tests/test_imaging.py, tests/test_preprocessing.py) and batch inputs (tests/test_batch.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Run through an intermediate interpreter: a process started directly from this one inherits this one's peak RSS as
# its own ru_maxrss (Linux keeps the high-water mark across exec), which would hide what the script allocates.
_TRAMPOLINE = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"

# For measuring scripts: the baseline after imports, refused if an earlier peak would hide the work's own.
RSS_BASELINE = """
import resource
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
rss = int(next(line for line in open("/proc/self/status") if line.startswith("VmRSS")).split()[1])
assert baseline - rss < 50 * 1024, f"peak {baseline} KiB before the work, RSS {rss} KiB: the measure would be blind"
"""


def run_python(script: str, *args: object, timeout: float = 300) -> str:
    """Run ``script`` in a fresh interpreter and return its stdout.

    ``MALLOC_MMAP_THRESHOLD_``: glibc serves blocks of 64 kB and more from fresh mappings, which the peak RSS counts
    (by default it would reuse heap that the imports freed, hundreds of MB after ``import torch``, and hide them).
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    done = subprocess.run(
        [sys.executable, "-c", _TRAMPOLINE, sys.executable, "-c", script, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
        timeout=timeout,
        check=False,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


DECODE_SCRIPT = (
    """
import json, sys, time
from camlib.imaging import decode_image
data = open(sys.argv[1], "rb").read()
"""
    + RSS_BASELINE
    + """
start = time.perf_counter()
decoded = decode_image(data)
seconds = time.perf_counter() - start
extra = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - baseline) / 1024
print(json.dumps({"shape": list(decoded.pixels.shape), "notes": decoded.notes, "extra_mb": extra, "s": seconds,
                  "mean": decoded.pixels.reshape(-1, 3).mean(axis=0).tolist()}))
"""
)
