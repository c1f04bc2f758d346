"""`twistd numd`'s options: every default, every check, and what a bad value says."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.python import usage

from numd.options import Options, endpoint_is_loopback

TOKEN = "s3cret-token"

DEFAULTS = {
    "no-message-log": 0,
    "allow-remote": 0,
    "legacy-routes": 0,
    "message-log": "numd-messages.log",
    "message-log-max-bytes": 10 * 1024 * 1024,
    "message-log-files": 5,
    "db": "numd.db",
    "redis-password-file": None,
    "redis-prefix": "numd:",
    "lease-time": 10.0,
    "redis-startup": "wait",
    "redis": None,
    "sync": "everysec",
    "seed": None,
    "quiet-time": 0.1,
    "reply-cap": 64 * 1024,
    "max-token-length": 32 * 1024,
    "max-clients": 12_000,
    "idle-timeout": 120.0,
    "write-stall-timeout": 30.0,
    "connection-budget": 1024 * 1024,
    "takeover-time": 5.0,
    "api-listen": "tcp:8080:interface=127.0.0.1",
    "max-body": 64 * 1024,
    "request-timeout": 10.0,
    "api-max-connections": 256,
    "access-log": None,
    "api-token-file": None,
    "legacy-array-listen": None,
    "legacy-array-max-bytes": 16 * 1024,
    "legacy-array-max-clients": 1000,
    "legacy-array-idle-timeout": None,
    "listen": ["tcp:2004:interface=127.0.0.1:backlog=4096"],
    "allowed-host": [],
    "cors-origin": [],
    "api-token": None,
}
"""Every option of ``twistd numd`` with no arguments, as parsed."""


def parse(*args: str) -> Options:
    """Parsed options, as twistd would parse them."""
    options = Options()
    options.parseOptions(list(args))
    return options


def parse_in(tmp_path: Path, *args: str) -> Options:
    """Options as twistd parses them, with the message log in `tmp_path` and no database file."""
    return parse("--message-log", str(tmp_path / "m.log"), "--db", ":memory:", *args)


@pytest.fixture(autouse=True)
def no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """$NUMD_API_TOKEN of whoever runs the tests never leaks into the options."""
    monkeypatch.delenv("NUMD_API_TOKEN", raising=False)


def test_every_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no arguments the options are exactly the documented defaults (the whole dict)."""
    monkeypatch.chdir(tmp_path)
    assert dict(parse()) == DEFAULTS


def test_every_option_given(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each option given lands under its own name, converted, and changes nothing else."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "token").write_text("t0ken\n")
    options = parse(
        "--no-message-log", "--allow-remote", "--legacy-routes",
        "--message-log", "m.log", "--message-log-max-bytes", "1000", "--message-log-files", "2",
        "--db", "d.db", "--sync", "always", "--redis-password-file", "pw",
        "--redis-prefix", "other:", "--lease-time", "3", "--redis-startup", "exit", "--seed", "7", "--quiet-time", "0.25",
        "--reply-cap", "100", "--max-token-length", "64", "--max-clients", "3",
        "--idle-timeout", "9", "--write-stall-timeout", "1.5", "--connection-budget", "600000",
        "--takeover-time", "1", "--api-listen", "tcp:8081:interface=0.0.0.0", "--max-body", "10",
        "--request-timeout", "2", "--api-max-connections", "4", "--access-log", "a.log",
        "--api-token-file", "token", "--legacy-array-listen", "tcp:6000:interface=127.0.0.1",
        "--legacy-array-max-bytes", "32", "--legacy-array-max-clients", "5",
        "--legacy-array-idle-timeout", "30",
        "--listen", "tcp:2005:interface=127.0.0.1", "--listen", "unix:numd.sock",
        "--allowed-host", "Numd.Example", "--allowed-host", "*",
        "--cors-origin", "https://ui.example",
    )  # fmt: skip
    assert dict(options) == {
        "no-message-log": 1,
        "allow-remote": 1,
        "legacy-routes": 1,
        "message-log": "m.log",
        "message-log-max-bytes": 1000,
        "message-log-files": 2,
        "db": "d.db",
        "redis-password-file": "pw",
        "redis-prefix": "other:",
        "lease-time": 3.0,
        "redis-startup": "exit",
        "redis": None,
        "sync": "always",
        "seed": 7,
        "quiet-time": 0.25,
        "reply-cap": 100,
        "max-token-length": 64,
        "max-clients": 3,
        "idle-timeout": 9.0,
        "write-stall-timeout": 1.5,
        "connection-budget": 600_000,
        "takeover-time": 1.0,
        "api-listen": "tcp:8081:interface=0.0.0.0",
        "max-body": 10,
        "request-timeout": 2.0,
        "api-max-connections": 4,
        "access-log": "a.log",
        "api-token-file": "token",
        "legacy-array-listen": "tcp:6000:interface=127.0.0.1",
        "legacy-array-max-bytes": 32,
        "legacy-array-max-clients": 5,
        "legacy-array-idle-timeout": 30.0,
        "listen": ["tcp:2005:interface=127.0.0.1:backlog=4096", "unix:numd.sock"],
        "allowed-host": ["numd.example", "*"],
        "cors-origin": ["https://ui.example"],
        "api-token": "t0ken",
    }


def test_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no options numd listens on 127.0.0.1:2004 and logs to numd-messages.log."""
    monkeypatch.chdir(tmp_path)
    options = parse()
    assert options["listen"] == ["tcp:2004:interface=127.0.0.1:backlog=4096"]
    assert options["message-log"] == "numd-messages.log"
    assert options["seed"] is None
    assert options["quiet-time"] == 0.1
    assert options["reply-cap"] == 65536
    assert options["max-token-length"] == 32768
    assert options["max-clients"] == 12_000
    assert options["idle-timeout"] == 120.0
    assert options["write-stall-timeout"] == 30.0


def test_listen_is_repeatable(tmp_path: Path) -> None:
    """--listen may be given several times; every endpoint is used."""
    options = parse(
        "--listen",
        "tcp:2005:interface=127.0.0.1",
        "--listen",
        "tcp:2006:interface=127.0.0.1",
        "--message-log",
        str(tmp_path / "m.log"),
        "--seed",
        "3",
        "--quiet-time",
        "0.25",
    )
    assert options["listen"] == [
        "tcp:2005:interface=127.0.0.1:backlog=4096",
        "tcp:2006:interface=127.0.0.1:backlog=4096",
    ]
    assert (options["seed"], options["quiet-time"]) == (3, 0.25)


@pytest.mark.parametrize(
    "args,message",
    [
        (["--listen", "nonsense:1"], "bad endpoint"),
        (["--quiet-time", "0"], "quiet-time"),
        (["--quiet-time", "soon"], "quiet-time"),
        (["--reply-cap", "10"], "reply-cap"),
        (["--seed", "x"], "seed"),
        (["--message-log", "/nonexistent/dir/m.log"], "not writable"),
    ],
)
def test_bad_options_are_usage_errors(args: list[str], message: str) -> None:
    """A bad value is a clear usage error, not a traceback at start."""
    with pytest.raises(usage.UsageError, match=message):
        parse(*args)


def test_api_max_connections_option(tmp_path: Path) -> None:
    """--api-max-connections defaults to 256 and must be a positive integer."""
    log = ["--message-log", str(tmp_path / "m.log")]
    assert parse(*log)["api-max-connections"] == 256
    assert parse(*log, "--api-max-connections", "3")["api-max-connections"] == 3
    for bad in ("0", "many"):
        with pytest.raises(usage.UsageError, match="api-max-connections"):
            parse(*log, "--api-max-connections", bad)


def test_api_option_defaults(tmp_path: Path) -> None:
    """By default the API listens on 127.0.0.1:8080 with a 64 KiB body cap; the legacy parts are off."""
    options = parse_in(tmp_path)
    assert options["api-listen"] == "tcp:8080:interface=127.0.0.1"
    assert options["max-body"] == 65536
    assert not options["legacy-routes"]
    assert options["legacy-array-listen"] is None
    assert options["legacy-array-max-bytes"] == 16384


@pytest.mark.parametrize(
    "args,message",
    [
        (["--api-listen", "nonsense:1"], "bad endpoint"),
        (["--legacy-array-listen", "tcp:notaport"], "bad endpoint"),
        (["--max-body", "0"], "max-body"),
        (["--max-body", "lots"], "max-body"),
        (["--legacy-array-max-bytes", "1"], "legacy-array-max-bytes"),
    ],
)
def test_bad_api_options_are_usage_errors(tmp_path: Path, args: list[str], message: str) -> None:
    """A bad endpoint or limit is a usage error naming the problem, not a traceback at start."""
    with pytest.raises(usage.UsageError, match=message):
        parse_in(tmp_path, *args)


# 10. Loopback by default; beyond it a token or --allow-remote


def test_listeners_default_to_loopback(tmp_path: Path) -> None:
    """Both listeners bind 127.0.0.1 by default and need nothing more."""
    options = parse_in(tmp_path)
    assert options["listen"][0].startswith("tcp:2004:interface=127.0.0.1")
    assert options["api-listen"] == "tcp:8080:interface=127.0.0.1"
    assert options["api-token"] is None


@pytest.mark.parametrize(
    "args,complaint",
    [
        (["--api-listen", "tcp:8080"], "set an API token"),
        (["--api-listen", "tcp:8080:interface=0.0.0.0"], "set an API token"),
        (["--listen", "tcp:2004"], "no authentication"),
        (["--legacy-array-listen", "tcp:6000:interface=0.0.0.0"], "no authentication"),
    ],
)
def test_remote_listener_without_protection_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], complaint: str
) -> None:
    """A non-loopback listener without a token (or --allow-remote) stops start-up with a clear message."""
    monkeypatch.delenv("NUMD_API_TOKEN", raising=False)
    with pytest.raises(usage.UsageError, match=complaint):
        parse_in(tmp_path, *args)
    parse_in(tmp_path, *args, "--allow-remote")


def test_api_token_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A token from --api-token-file or $NUMD_API_TOKEN lets the API listen beyond loopback."""
    monkeypatch.delenv("NUMD_API_TOKEN", raising=False)
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    options = parse_in(tmp_path, "--api-listen", "tcp:8080", "--api-token-file", str(token_file))
    assert options["api-token"] == TOKEN
    monkeypatch.setenv("NUMD_API_TOKEN", "from-env")
    assert parse_in(tmp_path, "--api-listen", "tcp:8080")["api-token"] == "from-env"


def test_token_is_never_a_command_line_value(tmp_path: Path) -> None:
    """There is no option that takes the token itself, and a bad token file is a clear error."""
    with pytest.raises(usage.UsageError):
        parse_in(tmp_path, "--api-token", TOKEN)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(usage.UsageError, match="must hold one token"):
        parse_in(tmp_path, "--api-token-file", str(tmp_path / "empty"))
    with pytest.raises(usage.UsageError, match="cannot read"):
        parse_in(tmp_path, "--api-token-file", str(tmp_path / "missing"))


@pytest.mark.parametrize(
    "description,loopback",
    [
        ("tcp:2004:interface=127.0.0.1", True),
        ("tcp:2004:interface=127.0.0.1:backlog=4096", True),
        ("tcp6:80:interface=\\:\\:1", True),
        ("tcp:1:interface=localhost", True),
        ("unix:/tmp/numd.sock", True),
        ("tcp:2004", False),
        ("tcp:80:interface=0.0.0.0", False),
        ("tcp:1:interface=10.0.0.1", False),
        ("systemd:domain=INET:index=0", False),
    ],
)
def test_endpoint_is_loopback(description: str, loopback: bool) -> None:
    """Which endpoint strings listen on loopback only (an unknown kind counts as remote)."""
    assert endpoint_is_loopback(description) is loopback


def test_a_redis_db_is_parsed_with_its_password_file_and_prefix(tmp_path: Path) -> None:
    """``--db redis://...`` picks Redis: the address, the password from its file, the prefix."""
    (tmp_path / "pw").write_text("s3cret\n")
    options = parse(
        "--message-log", str(tmp_path / "m.log"),
        "--db", "redis://127.0.0.1:6390/2", "--redis-password-file", str(tmp_path / "pw"),
        "--redis-prefix", "blue:",
    )  # fmt: skip
    config = options["redis"]
    assert (config.address.host, config.address.port, config.address.db) == ("127.0.0.1", 6390, 2)
    assert (config.password, config.prefix) == ("s3cret", "blue:")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--db", "redis://:pw@127.0.0.1/0"], "carries a password"),
        (["--db", "redis://127.0.0.1/0", "--redis-prefix", "a b"], "--redis-prefix"),
        (
            ["--db", "redis://127.0.0.1/0", "--redis-password-file", "/nonexistent/pw"],
            "cannot read",
        ),
        (["--db", "redis://127.0.0.1/0", "--lease-time", "0"], "--lease-time"),
        (["--db", "redis://127.0.0.1/0", "--redis-startup", "later"], "--redis-startup"),
        (["--db", "redis-tls://127.0.0.1/0"], "unknown scheme"),
    ],
)
def test_redis_option_mistakes_are_usage_errors(
    tmp_path: Path, args: list[str], message: str
) -> None:
    """A password on the command line, a bad prefix, file, lease time or policy: a usage error."""
    with pytest.raises(usage.UsageError, match=re.escape(message)):
        parse("--message-log", str(tmp_path / "m.log"), *args)
