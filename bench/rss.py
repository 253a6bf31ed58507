"""Peak resident memory of a process, as the benchmarks report it.

VmHWM from /proc/<pid>/status: the high-water mark of the process's own address space, which starts
afresh at exec. Not getrusage's ru_maxrss: Linux carries that over fork and exec, so a benchmark's
child started by a big parent reports the parent's size (at a million messages a "route process" of
9 GB was the generating parent's). Without /proc, the kernel's ru_maxrss for this process is all
there is.
"""

from __future__ import annotations

import resource
from pathlib import Path


def peak_rss_mb(pid: int | str = "self") -> float:
    """VmHWM of pid (default: this process) in MiB; 0.0 for a process that is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 if pid == "self" else 0.0
