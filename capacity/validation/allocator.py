"""A second instrument for real CPU runs: the CPU allocator's own count of live bytes.

MemTracker (a TorchDispatchMode) sees the tensors that the operators it intercepts return.
It cannot see inside an operator: a composite op that runs as one call (cross_entropy under
torch.inference_mode) or a kernel that allocates scratch tensors internally frees them
before returning, unseen. torch.profiler with profile_memory=True records every allocation
and free of c10's CPU allocator instead (c10/core/CPUAllocator.cpp, ProfiledCPUMemoryReporter),
whichever code makes it. Their running sum, from a start before the model is built (so that
every block freed later was allocated while recording), is the allocator's live bytes.

    with CpuAllocatorPeak() as alloc:
        ... build, run step 1 ...
        with alloc.region():
            ... steps 2..N ...
    alloc.rise_bytes()   # the highest live bytes in the region, less those at its start
"""

from __future__ import annotations

import contextlib

from torch.profiler import ProfilerActivity, profile, record_function

_MARK = "capacity: measured region"


class CpuAllocatorPeak:
    def __init__(self):
        self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
        self._events = None

    def __enter__(self) -> "CpuAllocatorPeak":
        self._prof.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._prof.__exit__(*exc)

    @contextlib.contextmanager
    def region(self):
        """The measured region (one per recording)."""
        with record_function(_MARK):
            yield

    def _timeline(self):
        events = list(self._prof.profiler.kineto_results.events())
        marks = [e for e in events if e.name() == _MARK]
        if len(marks) != 1:
            raise RuntimeError(f"allocator: expected one measured region, found {len(marks)}")
        memory = sorted(((e.start_ns(), n, e.nbytes()) for n, e in enumerate(events)
                         if e.name() == "[memory]" and e.device_type().name == "CPU"))
        return marks[0].start_ns(), marks[0].end_ns(), memory

    def rise_bytes(self) -> int:
        """max(live bytes in the region) − live bytes at its start."""
        start, end, memory = self._timeline()
        live, at_start, peak = 0, None, None
        for t, _, nbytes in memory:
            if t >= start and at_start is None:
                at_start = peak = live
            live += nbytes
            if start <= t <= end:
                peak = max(peak, live)
        if at_start is None:
            return 0
        return peak - at_start
