"""The app process's long-lived objects out of Python's full garbage collections: reruns under load are not held up.

A generation-2 collection traverses every tracked object and holds the GIL, so every session's script waits for it;
with torch, Streamlit and a model in the server process that is hundreds of thousands of objects. ``gc.freeze()``
moves the objects alive at that moment to a permanent generation that those collections skip, so they traverse only
what the sessions create (``benchmarks/bench_load.py`` measures the effect on the 8-session method/layer p95).
"""

from __future__ import annotations

import gc
import threading

_lock = threading.Lock()
_model_loaded = False  # a model was loaded in this process (ui.models.get_model)
_freezes = 0  # 1: frozen after the imports; 2: and after the first model load


def note_model_load() -> None:
    """Called by ``ui.models.get_model`` after it loaded a model: the next ``freeze_at_run_start`` freezes it."""
    global _model_loaded
    _model_loaded = True


def freeze_at_run_start() -> bool:
    """Called by app.py at the start of every run: ``freeze_long_lived`` on the first run (after the imports) and on the
    first run after the first model load (the model, and the libraries its load imported, such as timm); True when it
    froze. Those two moments only: an object that is later garbage in a reference cycle is never collected once frozen,
    and the script runs in flight then (this one's namespace, at its start, holds little; other sessions' may hold
    more) are such cycles. Bounded: twice per process."""
    global _freezes
    with _lock:
        wanted = 2 if _model_loaded else 1
        if _freezes >= wanted:
            return False
        _freezes = wanted
    freeze_long_lived()
    return True


def freeze_long_lived() -> None:
    """A full collection, then ``gc.freeze()``: every object alive now moves to the collector's permanent generation,
    which its full (generation 2) collections no longer traverse. The collection first means no garbage is frozen. A
    frozen object is still freed when its reference count drops to zero, but one in a reference cycle is never
    collected: see ``freeze_at_run_start`` for when this runs (CPython's ``gc.freeze``)."""
    gc.collect()
    gc.freeze()
