"""Shared by the benchmarks: how busy the machine is while they measure.

Benchmarks on this 2-core machine share it with other work; llama.cpp slows down 10-100x
when another process computes, so a figure is only worth quoting with the load it was
measured under. The scripts put bench/ on sys.path themselves before importing this: they
are also run with `python -P`, which does not.
"""

from __future__ import annotations

import os
import time


def load_text() -> str:
    """The 1/5/15-minute load averages and the CPU count, for the printed report."""
    one, five, fifteen = os.getloadavg()
    return f"load {one:.2f}/{five:.2f}/{fifteen:.2f} (1/5/15 min) on {os.cpu_count()} CPUs"


class CpuMonitor:
    """How much of the machine processes other than the bench (and its children) use.

    `pids` are the processes doing the measured work (all their threads count); everything
    else is foreign. Before each call a bench can wait for a quiet machine, and every sample
    records the foreign CPU share during it, so disturbed samples can be counted.
    """

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids

    def snapshot(self) -> tuple[int, int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        total = sum(fields[:8])  # user..steal; guest time is already inside user
        busy = total - fields[3] - fields[4]  # minus idle and iowait
        ours = 0
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
                ours += int(stat[11]) + int(stat[12])  # utime + stime, all threads
            except (OSError, IndexError):
                pass
        return total, busy, ours

    @staticmethod
    def foreign(before: tuple[int, int, int], after: tuple[int, int, int]) -> float:
        """Share of all CPUs (0..1) used by foreign processes between two snapshots."""
        total = after[0] - before[0]
        if total <= 0:
            return 0.0
        return max(0.0, (after[1] - before[1]) - (after[2] - before[2])) / total

    def wait_quiet(self, threshold: float, timeout: float, window: float = 0.5) -> float:
        """Wait until others use less than `threshold` of the CPUs; returns seconds waited."""
        start = time.monotonic()
        while True:
            before = self.snapshot()
            time.sleep(window)
            if self.foreign(before, self.snapshot()) < threshold:
                return time.monotonic() - start - window
            if time.monotonic() - start > timeout:
                return time.monotonic() - start
