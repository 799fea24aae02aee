"""Peak memory while a block runs, sampled by a background thread (the benchmarks' and comparisons' figure)."""

from __future__ import annotations

import os
import sys
import threading


def resident_bytes() -> int:
    """Resident memory of this process and its children (an engine's server processes): psutil where installed,
    else this process only (Linux ``/proc/self/statm``, else the peak so far from ``getrusage``)."""
    try:
        import psutil
    except ImportError:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


class PeakMemory:
    """``with PeakMemory() as m:``: ``m.start_bytes`` and ``m.peak_bytes`` of :func:`resident_bytes`, and with CUDA
    (torch already imported and a device present) ``m.cuda_peak_bytes``, torch's peak allocated device memory."""

    def __init__(self, interval_s: float = 0.05):
        self.interval_s = interval_s
        self.start_bytes = self.peak_bytes = 0
        self.cuda_peak_bytes: int | None = None
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_bytes = max(self.peak_bytes, resident_bytes())

    def _cuda(self):
        torch = sys.modules.get("torch")  # never imported here just to look: a CUDA run has imported it already
        return torch if torch is not None and torch.cuda.is_available() else None

    def __enter__(self) -> PeakMemory:
        if (torch := self._cuda()) is not None:
            torch.cuda.reset_peak_memory_stats()
        self.start_bytes = self.peak_bytes = resident_bytes()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, resident_bytes())
        if (torch := self._cuda()) is not None:
            self.cuda_peak_bytes = torch.cuda.max_memory_allocated()
