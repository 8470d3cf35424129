"""Compiling ahead: programs a fit will need next, compiled on another core while the fit's own compiles.

A first fit of a new model spends most of its time in XLA compiling the
optimizer's program, on one core. The programs that come after it (the
solve that builds the fitted model, the derivatives behind the summary's
Satterthwaite df) depend only on the shapes of the data, which are known
before the fit starts. Under :func:`compile_ahead` they are compiled in a
background thread once the optimizer's program has been traced and lowered
(:func:`release`, which the optimizer calls at that point): XLA then
compiles both at once without holding Python's lock, while tracing, which
needs it, is not slowed by a second thread. jax's ``lower(...).compile()``
and the later call share one cache: the call compiles nothing.

The thread never outlives the block: leaving it joins the thread, so no
compilation runs behind the caller's back and results do not depend on it.
An error in the thread is dropped (the later call compiles, and raises if it
must). Off with ``JAXLMM_COMPILE_AHEAD=off``, and where Python sees a single
core.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Callable, Iterator

from ._config import x64_enabled

Task = tuple[Callable, tuple, dict]

_slot = threading.local()  # the Ahead that release() starts, per thread


def enabled() -> bool:
    """Whether :func:`compile_ahead` compiles anything: more than one core, unless ``JAXLMM_COMPILE_AHEAD=off``."""
    if os.environ.get("JAXLMM_COMPILE_AHEAD", "").lower() in ("off", "0", "false", "no"):
        return False
    return (os.cpu_count() or 1) > 1


class Ahead:
    """Programs to compile in a background thread: started by :meth:`start`, joined by :meth:`wait`."""

    def __init__(self, tasks: list[Task]):
        self.tasks = list(tasks)
        self.thread: threading.Thread | None = None
        self.errors: list[BaseException] = []
        self.compiled = 0

    def _run(self) -> None:
        if not x64_enabled():  # float64 held on by a context of the caller's thread only: nothing to share
            return
        for fun, args, kwargs in self.tasks:
            try:
                fun.lower(*args, **kwargs).compile()
                self.compiled += 1
            except Exception as e:  # noqa: BLE001 (the call itself will compile, and raise if it must)
                self.errors.append(e)

    def start(self) -> None:
        """Start the thread (once)."""
        if self.thread is None and self.tasks:
            self.thread = threading.Thread(target=self._run, name="jaxlmm-compile-ahead", daemon=True)
            self.thread.start()

    def wait(self) -> None:
        """Return once the compilations have ended."""
        if self.thread is not None:
            self.thread.join()


@contextlib.contextmanager
def compile_ahead(tasks: list[Task]) -> Iterator[Ahead]:
    """A block in which ``fun.lower(*args, **kwargs)`` is compiled for each (fun, args, kwargs) of
    ``tasks``, in order, in a background thread that :func:`release` starts; the block's end waits
    for it (a block that never released them compiles nothing ahead). ``fun`` is a ``jax.jit`` or
    :func:`jaxlmm._config.lean_jit` function."""
    ahead = Ahead(tasks if enabled() else [])
    outer = getattr(_slot, "ahead", None)
    _slot.ahead = ahead
    try:
        yield ahead
    finally:
        _slot.ahead = outer
        ahead.wait()


def pending() -> bool:
    """Whether an enclosing :func:`compile_ahead` block has programs not yet released."""
    ahead = getattr(_slot, "ahead", None)
    return ahead is not None and ahead.thread is None and bool(ahead.tasks)


def release() -> None:
    """Start the background compilation of the enclosing :func:`compile_ahead` block, if any (once)."""
    ahead = getattr(_slot, "ahead", None)
    if ahead is not None:
        ahead.start()
