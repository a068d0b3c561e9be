"""The storage tracker's peak and the composition at it (issue 29)."""

import gc

import torch

from profiler.instruments.tracker import StorageTracker

MIB = 2**20


def test_the_breakdown_is_taken_at_the_peak_not_within_a_tolerance_of_it():
    """Step 1's activations make a peak; after them the optimizer state (0.05% of it) is made and the
    next step's activations reach that peak again plus the state. The old rule re-took its snapshot
    only when the peak grew 0.1% and so reported step 1's composition, without the state."""
    tracker = StorageTracker()
    with tracker:
        params = torch.empty(64 * MIB, dtype=torch.uint8)
        tracker.mark([params], "parameters")
        tracker.reset_peak()
        step1 = torch.empty(64 * MIB, dtype=torch.uint8)
        tracker.saved(step1)
        del step1
        gc.collect()
        state = torch.empty(64 * 1024, dtype=torch.uint8)  # 0.05% of the peak
        tracker.mark([state], "optimizer_state")
        step2 = torch.empty(64 * MIB, dtype=torch.uint8)
        tracker.saved(step2)
        scratch = torch.empty(512, dtype=torch.uint8)  # the very top, then freed: it is "other"
        del scratch, step2
        gc.collect()
    assert tracker.peak == 128 * MIB + 64 * 1024 + 512
    breakdown = tracker.peak_breakdown()
    assert breakdown == {
        "parameters": 64 * MIB,
        "gradients": 0,
        "optimizer_state": 64 * 1024,
        "activations": 64 * MIB,
        "other": 512,
    }
    assert sum(breakdown.values()) == tracker.peak


def test_the_peak_is_now_when_nothing_was_freed_since():
    tracker = StorageTracker(block=512)
    with tracker:
        tracker.reset_peak()
        a = torch.empty(1000, dtype=torch.uint8)
        tracker.saved(a)
        b = torch.empty(10, dtype=torch.uint8)
    assert tracker.peak == 1024 + 512
    assert tracker.peak_breakdown()["activations"] == 1024
    assert sum(tracker.peak_breakdown().values()) == tracker.peak
    del a, b


def test_a_resized_storage_counts_at_its_new_size_and_a_shrink_leaves_the_peak():
    """FSDP frees and re-allocates a parameter's storage with UntypedStorage.resize_ (RankTracker)."""
    tracker = StorageTracker()
    with tracker:
        tracker.reset_peak()
        t = torch.empty(1000, dtype=torch.uint8)
        tracker.mark([t], "parameters")
        key = t.untyped_storage()._cdata
        tracker.resized(key, 3000)
        tracker.resized(key, 0)
        other = torch.empty(2000, dtype=torch.uint8)
    assert tracker.peak == 3000 and tracker.current == 2000
    assert tracker.peak_breakdown() == {
        "parameters": 3000,
        "gradients": 0,
        "optimizer_state": 0,
        "activations": 0,
        "other": 0,
    }
    del t, other


def test_only_the_measured_device_counts():
    tracker = StorageTracker(block=512, device_type="cuda")
    with tracker:
        tracker.reset_peak()
        kept = torch.empty(4096)  # a CPU tensor on a cuda run: not device memory
    assert tracker.peak == 0 and sum(tracker.peak_breakdown().values()) == 0
    del kept
