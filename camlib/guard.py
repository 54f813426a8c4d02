"""Safe use of a model that is shared by many sessions.

``model_guard(model)`` holds a per-model re-entrant lock, switches every module to eval mode and restores each
module's own ``training`` flag on exit, even when the body raises.

``eval_mode(model)`` is what camlib's forwards use. A model whose modules are all in eval mode already (every model
the app caches) needs no change, so the lock is taken only to check that and the body runs concurrently with other
sessions: camlib's hooks act only for the thread that registered them (``owned_by_this_thread``), so another session's
forward passes through them unchanged, and a slow computation in one session never blocks another. A model with any
module in training mode is switched under the lock, which is then held for the whole body (``model_guard``). Code
outside camlib must not switch a shared model's modes while it is in use.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Iterator
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


def owned_by_this_thread() -> Callable[[], bool]:
    """A predicate that is True only in the calling thread: hooks check it so they act for their own session only."""
    owner = threading.get_ident()
    return lambda: threading.get_ident() == owner


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[bool]:
    """Run the body with ``model`` in eval mode; yields True when the lock is held for the whole body.

    Raises ``InputError`` when ``model`` is not a ``torch.nn.Module``."""
    with model_lock(model):
        all_eval = not any(module.training for module in model.modules())
    if all_eval:
        yield False
        return
    with model_guard(model):
        yield True


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
