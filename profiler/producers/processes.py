"""What every process the profiler starts (a method's child, a rank) does first."""

from __future__ import annotations


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a measurement outliving a worker
    killed -9, or a local worker outliving `serve`)."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
