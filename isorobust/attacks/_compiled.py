"""torch.compile for the attacks' elementwise arithmetic, eager as the fallback.

An attack step on a small model is mostly elementwise work over input-sized rows (projections, clipping,
bookkeeping): eager PyTorch runs each operation as its own pass and allocates its result, while a compiled
function fuses a chain of them into one loop. ``compiled(fn)`` compiles ``fn`` once per process with
dynamic shapes (the batch shrinks as samples break); if compiling fails (no C++ compiler, an unsupported
device), it says so once and every later call runs ``fn`` eagerly. Compiling costs seconds (about 20 s
cold on a 2-core CPU, 3 s once torch's cache under /tmp holds it), so attacks use it only where the
work is large: AutoAttack's FAB-T on a whole test set, not a unit test's few images.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

_compiled: dict[Callable, Callable] = {}
_failed: set[Callable] = set()


def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` compiled (once per process), falling back to ``fn`` itself if compiling fails."""
    if fn not in _compiled:
        _compiled[fn] = torch.compile(fn, dynamic=True)

    def call(*args: Any, **kwargs: Any) -> Any:
        if fn in _failed:
            return fn(*args, **kwargs)
        try:
            return _compiled[fn](*args, **kwargs)
        except Exception as error:  # torch raises its compiler's errors at the first call
            log.warning("torch.compile failed for %s (%s: %s); running it eagerly", fn.__qualname__,
                        type(error).__name__, str(error).splitlines()[0] if str(error) else "")
            _failed.add(fn)
            return fn(*args, **kwargs)

    return call
