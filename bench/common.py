"""Shared helpers: timing, the machine line, and one JSON result per benchmark."""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime


def best_of(fn: Callable[[], object], repeat: int = 3) -> float:
    """Fastest wall time of ``repeat`` runs: the least disturbed by the rest of the machine."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def machine_line() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} cores, {cpu}, Python {platform.python_version()}"


def emit(name: str, rows: list[dict]) -> None:
    """Print one JSON line that bench.run_all collects."""
    print(json.dumps({"benchmark": name, "rows": rows, "peak_rss_mb": round(peak_rss_mb(), 1),
                      "date": datetime.now(UTC).strftime("%Y-%m-%d"), "machine": machine_line()}))
    sys.stdout.flush()
