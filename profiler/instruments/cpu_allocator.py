"""The CPU allocator's own record of a trial, from torch.profiler's allocation events (the `cpu`
mode's peaks), and the two ranges of a measured trial it reads them in."""

from __future__ import annotations


class CPUAllocatorRecord:
    """The CPU allocator's running total while profiling, from torch.profiler's allocation events.

    Start it before the model is built: the total only counts what was allocated since.
    """

    def __enter__(self):
        # autograd's profiler, the one torch.profiler.profile wraps: the wrapper's start asks
        # hasattr(torch, "_inductor"), which imports inductor and dynamo (3.5 s of a 2-core job's 18)
        from torch.autograd.profiler import profile

        self._prof = profile(use_kineto=True, profile_memory=True)
        self._prof.__enter__()
        return self

    def __exit__(self, *exc):
        from torch._C._profiler import _EventType

        self._prof.__exit__(*exc)
        self.totals: list[tuple[int, int, int]] = []  # (time ns, allocator total, this allocation)
        self.ranges: dict[str, tuple[int, int]] = {}
        stack = list(self._prof.kineto_results.experimental_event_tree())
        while stack:
            node = stack.pop()
            stack.extend(node.children)
            if node.tag == _EventType.Allocation:
                fields = node.extra_fields
                self.totals.append((node.start_time_ns, fields.total_allocated, fields.alloc_size))
            elif node.name.startswith("wtacrs::"):
                self.ranges[node.name] = (node.start_time_ns, node.end_time_ns)
        self.totals.sort()
        return False

    @property
    def start_total(self) -> int:
        """The allocator's total when the record started."""
        if not self.totals:
            return 0
        # The allocator's counter also holds memory that was freed while no profiler listened.
        _, first_total, first_size = self.totals[0]
        return first_total - first_size

    def peak(self, within: str | None = None, since: CPUAllocatorRecord | None = None) -> int:
        """Peak bytes above what was allocated when the record started (or when `since`, an
        earlier record, did: the allocator's total is the process's, so records compare)."""
        if not self.totals:
            return 0
        baseline = (since or self).start_total
        lo, hi = self.ranges[within] if within else (-1, 2**63)
        return max((total for t, total, _ in self.totals if lo <= t <= hi), default=baseline) - baseline


FIRST_STEP, STEADY = "wtacrs::first_step", "wtacrs::steady"  # the ranges CPUAllocatorRecord.peak reads
