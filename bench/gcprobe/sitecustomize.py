"""Loaded by the servers under test (bench/bench.py puts this folder on PYTHONPATH).

Two probes, both measured from inside the server and written to files named by
environment variables, one line per event:

- NUMD_BENCH_GC_LOG: every garbage collection of generation 2, and every
  collection of any generation that took 1 ms or more:
  ``<unix time> <generation> <milliseconds>``. A collection runs on the reactor
  thread and stops it.
- NUMD_BENCH_STALL_LOG: every reactor callback that ran for 2 ms or more:
  ``<unix time> <kind> <milliseconds>``, where kind is ``io`` (one socket's
  read or write event, with everything the server did for it) or ``timers``
  (one pass over the timed calls that were due, thread results included). These
  are the reactor stalls: while one runs, no other client is served. Wall time
  (two perf_counter calls per callback, about 0.1 us); it also counts the server
  being descheduled on a busy machine, so it is an upper bound.
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

_stall_path = os.environ.get("NUMD_BENCH_STALL_LOG")
if _stall_path:
    from twisted.internet import base, posixbase

    _stalls = open(_stall_path, "a", buffering=1)
    _clock = time.perf_counter

    def _timed(kind: str, method):  # type: ignore[no-untyped-def]
        def timed(*args, **kwargs):  # type: ignore[no-untyped-def]
            started = _clock()
            try:
                return method(*args, **kwargs)
            finally:
                ms = (_clock() - started) * 1000
                if ms >= 2.0:
                    _stalls.write(f"{time.time():.3f} {kind} {ms:.2f}\n")

        return timed

    posixbase._PollLikeMixin._doReadOrWrite = _timed("io", posixbase._PollLikeMixin._doReadOrWrite)
    base.ReactorBase.runUntilCurrent = _timed("timers", base.ReactorBase.runUntilCurrent)
