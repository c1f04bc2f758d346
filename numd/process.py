"""Process policy: how the daemon's process is tuned, apart from what it serves.

Two things about the whole process, not about any one listener, that the
daemon applies when it starts:

- the open-file limit: each connection holds a descriptor, so the soft limit is
  raised to the hard one and checked against the sum of every listener's cap
  (`check_open_files`); a limit too low would make connections past it fail to
  be accepted, and the warning says so before a client finds out;
- the garbage collector: full collections walk every object the daemon holds,
  on the reactor thread, and Python's defaults made them stall every client for
  tens of milliseconds (`CollectionTuning`).

Both touch process-wide state (the rlimit, the `gc` module), so they are kept
here, where a test can call them directly, and out of the wiring in
`numd.tap`.
"""

from __future__ import annotations

import gc
import resource

from twisted.logger import Logger

_log = Logger()

NEW_OBJECTS_GC = 200
"""Container allocations (net) that start a generation-0 collection (Python's default is 700)."""
YOUNG_GC_AFTER = 1
"""Generation-0 collections between two generation-1 ones (Python's default is 10)."""
FULL_GC_AFTER = 5000
"""Generation-1 collections between two full ones (Python's default is 10)."""
RESERVED_FILES = 64
"""Open files numd needs besides its client connections (listeners, logs, store)."""


def check_open_files(
    max_clients: int, *, api_max_connections: int = 0, legacy_max_clients: int = 0
) -> int:
    """Raise the open-file soft limit to the hard limit; warn if it cannot fit every listener's cap.

    The caps are `max_clients` (counter protocol), `api_max_connections` (HTTP
    API) and `legacy_max_clients` (the legacy array listener, 0 when it is
    off), plus `RESERVED_FILES`. Returns the soft limit now in force.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as e:
            _log.warn(
                "cannot raise the open-file limit from {soft} to {hard}: {e}",
                soft=soft,
                hard=hard,
                e=e,
            )
    caps = [("--max-clients", max_clients), ("--api-max-connections", api_max_connections),
            ("--legacy-array-max-clients", legacy_max_clients)]  # fmt: skip
    connections = max_clients + api_max_connections + legacy_max_clients
    needed = connections + RESERVED_FILES
    if soft != resource.RLIM_INFINITY and soft < needed:
        _log.warn(
            "{caps} need about {needed} open files but the limit is {soft}: connections "
            "past about {usable} in all will fail to be accepted",
            caps=" + ".join(f"{option} {cap}" for option, cap in caps if cap),
            max_clients=max_clients,
            api_max_connections=api_max_connections,
            legacy_max_clients=legacy_max_clients,
            needed=needed,
            soft=soft,
            usable=max(soft - RESERVED_FILES, 0),
        )
    return soft


class CollectionTuning:
    """Keeps full garbage collections rare and short while the daemon runs.

    A full collection walks every object the daemon holds, on the reactor
    thread: with 10,000 clients it stalls every client for 50-100 ms (measured
    by the bench). The registry and the list loaded at start-up live as long
    as the process, so `tune` freezes them out of those passes; and a full pass is
    considered after `FULL_GC_AFTER` generation-1 passes, so it comes every few
    minutes, not several times a minute. Young passes are kept small: one per
    `NEW_OBJECTS_GC` new containers instead of 700, and generation 1 after every
    `YOUNG_GC_AFTER` + 1 of them instead of 11. While the list grows by
    1,000-value arrays, about one new sublist of 1,000-2,000 values survives per
    array, and a young pass walks every value of the young ones: with Python's
    defaults one took 21-29 ms after a bulk load of 10^6 values, now about 5 ms.
    Reference counting still frees everything that is not in a cycle at once.

    `restore` undoes both, so a test process (or anything started after the
    daemon stops) gets Python's collector back as it was.
    """

    def __init__(self) -> None:
        self._saved_thresholds: tuple[int, int, int] | None = None

    def tune(self) -> None:
        """Collect once, freeze what survives, and set numd's thresholds (the old ones are kept)."""
        gc.collect()
        gc.freeze()
        self._saved_thresholds = gc.get_threshold()
        gc.set_threshold(NEW_OBJECTS_GC, YOUNG_GC_AFTER, FULL_GC_AFTER)

    def restore(self) -> None:
        """Unfreeze, and put back the thresholds `tune` replaced (if it ran)."""
        gc.unfreeze()
        if self._saved_thresholds is not None:
            gc.set_threshold(*self._saved_thresholds)
            self._saved_thresholds = None
