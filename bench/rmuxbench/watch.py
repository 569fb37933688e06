"""
Watching the proxies from /proc: resident memory (sampled in a thread, so
that peaks can be read for any time window) and CPU time.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Dict, List, Optional


def procStatus(pid: int, field_: str) -> Optional[int]:
    """
    A field of /proc/PID/status in kB (VmRSS, VmHWM), or None if the
    process is gone.
    """
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith(field_ + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def processTree(pid: int) -> List[int]:
    """
    A process and its descendants: should rmux fork workers, their memory
    and CPU are rmux's too.
    """
    pids, index = [pid], 0
    while index < len(pids):
        try:
            tasks = os.listdir("/proc/%d/task" % pids[index])
        except OSError:
            tasks = []
        for task in tasks:
            try:
                with open("/proc/%d/task/%s/children" % (pids[index], task)) as f:
                    pids += [int(child) for child in f.read().split()]
            except (OSError, ValueError):
                pass
        index += 1
    return pids


def treeRssKb(pid: int) -> Optional[int]:
    """
    The resident memory of a process and its descendants, summed (shared
    pages of forked children count once per process, so with workers this
    overstates), or None if the process is gone.
    """
    sizes = [procStatus(p, "VmRSS") for p in processTree(pid)]
    return sum(size for size in sizes if size is not None) if sizes[0] is not None else None


def cpuSeconds(pid: int) -> Optional[float]:
    """
    User plus system CPU time so far of a process and its live descendants.
    """
    total = None
    for p in processTree(pid):
        try:
            with open("/proc/%d/stat" % p) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        total = (total or 0) + (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


class RssSampler:
    """
    Samples the resident memory of the proxies (with their children) every
    50 ms in a thread, and answers for the peak in any time window: a case,
    or one run.  VmHWM alone is the peak since the process started, which
    after the 1 MB values of case d says nothing about case e.
    """

    def __init__(self, interval: float = 0.05):
        self.interval = interval
        self.samples: Dict[int, List[tuple]] = {}  # pid -> [(monotonic, kB)]
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self.thread.start()

    def watch(self, pid: int):
        with self.lock:
            self.samples.setdefault(pid, [])

    def sampleNow(self, pid: int) -> Optional[int]:
        """
        Take a sample at once (at the edges of a run shorter than the
        polling interval) and return it.
        """
        rss = treeRssKb(pid)
        if rss is not None:
            with self.lock:
                self.samples.setdefault(pid, []).append((time.monotonic(), rss))
        return rss

    def peakKb(self, pid: int, start: float, end: float) -> Optional[int]:
        with self.lock:
            sizes = [kb for t, kb in self.samples.get(pid, []) if start <= t <= end]
        return max(sizes) if sizes else None

    def _run(self):
        while not self.stopping.wait(self.interval):
            with self.lock:
                pids = list(self.samples)
            for pid in pids:
                self.sampleNow(pid)

    def stop(self):
        self.stopping.set()
        self.thread.join(2)
