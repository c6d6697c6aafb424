"""Helpers shared by the benchmark workers: timing, peak memory, prompts."""

from __future__ import annotations

import re
import resource
import statistics
import time
from typing import Callable

SOURCE = "lofi piano with warm drums"
TARGETS = ("lofi guitar with warm drums", "lofi organ with warm drums", "lofi synth with warm drums",
           "lofi violin with warm drums", "lofi flute with warm drums", "lofi harp with warm drums",
           "lofi cello with warm drums", "lofi bass with warm drums")
PLAIN = ("lofi piano with warm drums", "80s pop track with bassy drums and synth", "calm ambient pads",
         "fast techno beat", "jazz trio with upright bass", "orchestral strings", "rock guitar riff",
         "reggae groove")

GUIDANCE = 3.0
TOP_K = 250


def targets(n: int) -> list[str]:
    return [TARGETS[i % len(TARGETS)] for i in range(n)]


def plain_prompts(n: int) -> list[str]:
    return [PLAIN[i % len(PLAIN)] for i in range(n)]


def rows_for(workload: str, batch: int) -> int:
    """Decoder rows with CFG: edit = (source + batch targets) x 2, generate = batch x 2."""
    return 2 * (1 + batch) if workload == "edit" else 2 * batch


def repeat_timing(fn: Callable[[], None], *, warmup: int, repeats: int) -> dict:
    """Seconds of `fn` over `repeats` runs after `warmup` runs: min, median, all."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"min": min(times), "median": statistics.median(times), "all": times}


def loadavg() -> list[float]:
    """The 1, 5 and 15 minute load averages (/proc/loadavg): what else ran beside a timing."""
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def reset_peak_rss() -> bool:
    """Resets this process's peak resident set (VmHWM) on Linux; False where it cannot."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB since start or the last reset."""
    try:
        with open("/proc/self/status") as f:
            m = re.search(r"VmHWM:\s+(\d+)\s+kB", f.read())
        if m:
            return int(m.group(1)) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
