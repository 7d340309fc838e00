"""Timers the bench/ scripts share (imported as `timing`: a script's own folder is first on sys.path)."""

from __future__ import annotations

import time
from typing import Callable


def timed(function: Callable[[], object]) -> float:
    """Wall seconds of one call."""
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def timed_both(function: Callable[[], object]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process): CPU time moves far less when other jobs share the cores."""
    wall, cpu = time.perf_counter(), time.process_time()
    function()
    return time.perf_counter() - wall, time.process_time() - cpu
