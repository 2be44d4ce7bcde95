"""Per-task peak memory of the dedup shuffle tasks, measured with tracemalloc.

tracemalloc counts every Python object and every numpy buffer a task allocates (numpy reports its
allocations to it), so `traced()` gives the task's own peak above what the process held when the
task started: data, not the interpreter, the imported modules or garbage left by earlier tasks in
a reused worker. Used by the bucket, components and cluster tasks; the dedup benchmark reports the
median, p95 and max over tasks.
"""

from __future__ import annotations

import tracemalloc
from contextlib import contextmanager


class Peak:
    bytes: int = 0


@contextmanager
def traced():
    """`with traced() as peak: ...` then `peak.bytes`. Nested use (already tracing) measures from the
    current level and leaves the outer trace running."""
    outer = tracemalloc.is_tracing()
    if outer:
        tracemalloc.reset_peak()
    else:
        tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    peak = Peak()
    try:
        yield peak
    finally:
        peak.bytes = max(0, tracemalloc.get_traced_memory()[1] - start)
        if not outer:
            tracemalloc.stop()
