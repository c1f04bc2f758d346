"""The Lua scripts' sources (`numd.store.redis.lua`): each is named by the SHA1 Redis gives it,
starts with ``#!lua`` (so Redis refuses a writing script whole when memory is full), and only
the lease renewal may run when memory is full."""

from __future__ import annotations

import hashlib

from numd.store.redis.lua import SCRIPTS


def test_each_script_is_called_by_the_sha1_of_its_source() -> None:
    """EVALSHA names a script by the SHA1 of its exact bytes."""
    for script in SCRIPTS.values():
        assert script.sha == hashlib.sha1(script.source).hexdigest().encode()


def test_every_script_is_a_function_flagged_script() -> None:
    """Every script has the ``#!lua`` header; only ``renew`` carries ``allow-oom``."""
    assert set(SCRIPTS) == {
        "merge",
        "clear",
        "register",
        "renew",
        "disconnect",
        "report",
        "give",
        "update",
        "heartbeat",
        "register-many",
    }
    for name, script in SCRIPTS.items():
        first_line = script.source.split(b"\n", 1)[0]
        assert first_line.startswith(b"#!lua")
        assert (b"allow-oom" in first_line) == (name == "renew")
