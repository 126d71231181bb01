"""One OS thread per process that runs every torch call of the services in it.

torch's CPU kernels parallelise with OpenMP, and OpenMP keeps a separate team of worker
threads for every thread that calls into it. A gRPC server hands requests to a pool of
threads, so without this each of them grows its own team, and the idle teams spin on the same
cores as the busy one: measured here, a SmolLM2 decode step took about 85 ms inside the gRPC
target service against 49 ms in a plain loop. Running all model work of a process on one
thread keeps one team (and, on CUDA, one current stream). Target and draft services in one
process (the in-process stack) share the same thread. Loading and weight packing belong on it
too: a main thread that ran torch once keeps an idle team of its own, and that alone made a
SmolLM2 decode step on the model thread take 47 ms instead of 22 ms.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class ModelThread:
    """Runs callables one at a time on a single dedicated thread, in submission order."""

    def __init__(self, name: str = "specd-model") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)
        self._ident: int | None = None
        self._executor.submit(self._remember).result()

    def _remember(self) -> None:
        self._ident = threading.get_ident()

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call ``fn(*args, **kwargs)`` on the model thread and return (or raise) its result.

        A call made from the model thread itself runs directly (no deadlock when one service
        calls another in the same process).
        """
        if threading.get_ident() == self._ident:
            return fn(*args, **kwargs)
        return self._executor.submit(fn, *args, **kwargs).result()

    def post(self, fn: Callable[[], object]) -> None:
        """Queue ``fn`` on the model thread without waiting for it (run now when already on it).

        For work whose caller waits on something else (a verify call waits on its own result,
        which any queued drain may deliver, not on the drain it queued).
        """
        if threading.get_ident() == self._ident:
            fn()
        else:
            self._executor.submit(fn)

    def enqueue(self, fn: Callable[[], object]) -> None:
        """Queue ``fn`` at the back of the model thread's queue without waiting, from any thread
        (the model thread included: what is queued before ``fn`` runs first)."""
        self._executor.submit(fn)


_SHARED: ModelThread | None = None
_SHARED_LOCK = threading.Lock()


def model_thread() -> ModelThread:
    """The process-wide model thread, started on first use."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = ModelThread()
        return _SHARED
