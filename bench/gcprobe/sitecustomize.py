"""Loaded by the servers under test (bench/bench.py puts this folder on PYTHONPATH).

Writes one line per garbage collection of generation 2, and per collection of any
generation that took 1 ms or more, to the file named by NUMD_BENCH_GC_LOG:
``<unix time> <generation> <milliseconds>``. A collection runs on the reactor
thread and stops it, so these are reactor stalls measured from inside.
"""

import gc
import os
import time

_path = os.environ.get("NUMD_BENCH_GC_LOG")
if _path:
    _out = open(_path, "a", buffering=1)
    _start = [0.0]

    def _gc_callback(phase: str, info: dict) -> None:
        if phase == "start":
            _start[0] = time.perf_counter()
            return
        ms = (time.perf_counter() - _start[0]) * 1000
        if ms >= 1.0 or info["generation"] == 2:
            _out.write(f"{time.time():.3f} {info['generation']} {ms:.2f}\n")

    gc.callbacks.append(_gc_callback)
