"""The result store every page's computed results go through: ``st.cache_data`` functions whose body is ``handed()``,
filled with ``store`` and read with ``probe``. A result is computed outside the cached function, so a progress bar
drawn while computing is never replayed on a hit, and only finished results are stored. Also the cache key of an
image (``image_key``) and the time an unused result is kept (``CACHE_TTL``).
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import timedelta

import numpy as np

# Results nobody asked for in this long are dropped, whatever max_entries allows. A timedelta, not "2h": Streamlit
# parses a TTL string with pandas, whose import costs 0.4 s on a page (the gallery) that needs nothing else of it.
CACHE_TTL = timedelta(hours=2)


class _NotCached(Exception):  # noqa: N818 - a signal between probe and the stores, never shown
    """Raised inside a store (``handed``) when a probe finds nothing: exceptions are not cached, so nothing is
    stored."""


_handoff = threading.local()  # probe: bool; value: what a store call puts in its cache


def image_key(image: np.ndarray) -> str:
    """A short key of an image's pixels (shape, dtype and a BLAKE2b digest), hashed once per call instead of once per
    cache lookup: a 25 MP upload is 75 MB."""
    return (
        f"{image.shape}:{image.dtype}:{hashlib.blake2b(np.ascontiguousarray(image).data, digest_size=16).hexdigest()}"
    )


def probe(function: Callable, *args: object, **kwargs: object) -> object | None:
    """What ``function`` (an ``st.cache_data`` store whose body is ``handed()``) holds for these arguments, or None."""
    _handoff.probe = True
    try:
        return function(*args, **kwargs)
    except _NotCached:
        return None
    finally:
        _handoff.probe = False


def store(function: Callable, value: object, *args: object, **kwargs: object) -> None:
    """Put ``value`` in ``function``'s cache under these arguments."""
    _handoff.value = value
    try:
        function(*args, **kwargs)
    finally:
        _handoff.value = None


def handed() -> object:
    """The body of every store: a probe finds nothing (``_NotCached``, which is not cached); a store returns the value
    handed over (computed outside, so no element drawn while computing is ever replayed)."""
    if getattr(_handoff, "probe", False):
        raise _NotCached
    value = getattr(_handoff, "value", None)
    if value is None:
        raise _NotCached  # called directly: nothing to store
    return value
