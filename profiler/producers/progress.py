"""What this process is measuring right now, for progress that names the step in progress.

A producer says `announce("tracing batch 32 (2 of 4)")` before a long step; the runner's
heartbeat (a thread, not the measuring one) repeats the latest announcement with its elapsed
time every few seconds, so a 14-second trace is never silent. Process state: one listener."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

_lock = threading.Lock()
_listener: Callable[[str], None] | None = None
_current: tuple[str, float] | None = None  # (message, when it was announced)


def listen(listener: Callable[[str], None] | None) -> None:
    """Send announcements to `listener` (None: nowhere)."""
    global _listener, _current
    with _lock:
        _listener, _current = listener, None


def announce(message: str) -> None:
    global _current
    with _lock:
        _current = (message, time.monotonic())
        listener = _listener
    if listener is not None:
        listener(message)


def current() -> str | None:
    """The latest announcement with how long it has run ('tracing batch 32 (2 of 4), 10 s')."""
    with _lock:
        if _current is None:
            return None
        message, since = _current
    return f"{message}, {time.monotonic() - since:.0f} s"
