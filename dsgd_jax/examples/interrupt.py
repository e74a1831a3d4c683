"""Ctrl-C that stops a run at the next step boundary, never in the middle of XLA.

Python raises ``KeyboardInterrupt`` wherever the interpreter happens to be when
SIGINT arrives: inside a garbage-collection callback of XLA it is swallowed (the
run goes on), inside a compilation or a host transfer the process can crash.
:func:`stop_at_step_boundary` installs a handler that only sets a flag; the
training loop calls :func:`check` between steps and raises :class:`Interrupted`
there, after which the command lines wait for pending checkpoint writes, print
one line and exit with 130. A second Ctrl-C stops at once, as the default
handler would.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["Interrupted", "check", "requested", "stop_at_step_boundary"]


class Interrupted(Exception):
    """Raised by :func:`check` at a step boundary after Ctrl-C."""


_flag = threading.Event()


def requested() -> bool:
    """Whether Ctrl-C was pressed since the handler was installed."""
    return _flag.is_set()


def check() -> None:
    """Raises :class:`Interrupted` if Ctrl-C was pressed (a no-op otherwise)."""
    if _flag.is_set():
        raise Interrupted("interrupted by Ctrl-C")


@contextlib.contextmanager
def stop_at_step_boundary() -> Iterator[None]:
    """Within the block, Ctrl-C sets the flag :func:`check` reads; a second one raises
    ``KeyboardInterrupt`` at once. Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _flag.is_set():
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        _flag.set()
        print(
            "\nCtrl-C: stopping at the next step (press it again to stop at once).",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, handler)
    _flag.clear()
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _flag.clear()
