"""Safe, serialised use of a model that is shared by many sessions.

``model_guard(model)`` holds a per-model re-entrant lock, switches every module to eval mode and restores each
module's own ``training`` flag on exit, even when the body raises. Hooks registered inside the guard must be removed
inside it (camlib does so in ``finally`` blocks), so no other session ever sees them.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from camlib.errors import InputError

_LOCKS: weakref.WeakKeyDictionary[nn.Module, threading.RLock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """Return the lock that serialises hook registration and mode changes on ``model``.

    Raises ``InputError`` when ``model`` is not a ``torch.nn.Module``."""
    if not isinstance(model, nn.Module):
        raise InputError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[model] = lock
        return lock


@contextmanager
def model_guard(model: nn.Module) -> Iterator[nn.Module]:
    """Lock ``model``, put it in eval mode, and restore every module's ``training`` flag afterwards.

    Raises ``InputError`` when ``model`` is not a ``torch.nn.Module``."""
    with model_lock(model):
        modes = [(module, module.training) for module in model.modules()]
        model.eval()
        try:
            yield model
        finally:
            for module, training in modes:
                module.training = training
