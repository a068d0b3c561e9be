"""The rule every producer follows when a trial fails: running out of memory is a measurement
(the row says so, with the allocator's first line), anything else is that row's error."""

from __future__ import annotations


def is_oom(err: BaseException) -> bool:
    import torch  # here, not at the top: the runner's parent process never needs torch (issue 26)

    if isinstance(err, (torch.OutOfMemoryError, MemoryError)):
        return True
    return isinstance(err, RuntimeError) and "can't allocate memory" in str(err)


def failure(err: BaseException) -> dict:
    """The row fields that record `err`: oom and oom_message, or error."""
    if is_oom(err):
        return {"oom": True, "oom_message": str(err).split("\n")[0][:300]}
    return {"error": f"{type(err).__name__}: {err}"}
