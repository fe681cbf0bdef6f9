"""A second instrument for real CPU runs: the CPU allocator's own count of live bytes.

MemTracker (a TorchDispatchMode) sees the tensors that the operators it intercepts return.
It cannot see inside an operator: a composite op that runs as one call (cross_entropy under
torch.inference_mode) or a kernel that allocates scratch tensors internally frees them
before returning, unseen. torch.profiler with profile_memory=True records every allocation
and free of c10's CPU allocator instead (c10/core/CPUAllocator.cpp, ProfiledCPUMemoryReporter),
whichever code makes it. Their running sum, from a start before the model is built (so that
every block freed later was allocated while recording), is the allocator's live bytes.

The profiler records the allocator's events and the region's marker only: it is enabled
with the scope of record_function (USER_SCOPE) alone, so that no operator is recorded
(torch.profiler.profile records every op, which the allocator's count never reads, at a
cost in every measured step and at the end), without shapes, stacks or flops. The memory
events come from the allocator itself whatever the scopes
(torch/csrc/autograd/profiler_kineto.cpp, KinetoThreadLocalState::reportMemoryUsage, which
records them whenever profile_memory is set), so the count is the same.

    with CpuAllocatorPeak() as alloc:
        ... build, run step 1 ...
        with alloc.region():
            ... steps 2..N ...
    alloc.rise_bytes()   # the highest live bytes in the region, less those at its start
"""

from __future__ import annotations

import contextlib

from torch._C._profiler import RecordScope, _ExperimentalConfig
from torch.autograd import (ProfilerActivity, ProfilerConfig, ProfilerState, _disable_profiler, _enable_profiler,
                            _prepare_profiler)
from torch.profiler import record_function

_MARK = "capacity: measured region"


class CpuAllocatorPeak:
    def __init__(self):
        self._config = ProfilerConfig(ProfilerState.KINETO, False, True, False, False, False,
                                      _ExperimentalConfig())   # (shapes, memory, stack, flops, modules)
        self._results = None

    def __enter__(self) -> "CpuAllocatorPeak":
        _prepare_profiler(self._config, {ProfilerActivity.CPU})
        _enable_profiler(self._config, {ProfilerActivity.CPU}, {RecordScope.USER_SCOPE})
        return self

    def __exit__(self, *exc) -> None:
        self._results = _disable_profiler()

    @contextlib.contextmanager
    def region(self):
        """The measured region (one per recording)."""
        with record_function(_MARK):
            yield

    def _timeline(self):
        events = list(self._results.events())
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
