"""``--db`` values: the embedded store or a Redis address; the Redis password and key prefix."""

from __future__ import annotations

from pathlib import Path

import pytest

from numd.store.redis.address import (
    DEFAULT_PREFIX,
    PASSWORD_ENV,
    RedisConfig,
    RedisConfigError,
    SentinelAddress,
    TcpAddress,
    UnixAddress,
    check_prefix,
    parse_db,
    read_password,
    redis_config,
)


@pytest.mark.parametrize(
    "value", ["numd.db", ":memory:", "/var/lib/numd/numd.db", "data/x.db", "C:/numd.db", "a:b.db"]
)
def test_paths_are_the_embedded_store(value: str) -> None:
    """A path (even one with a colon in it) or :memory: keeps the embedded store."""
    assert parse_db(value) is None


@pytest.mark.parametrize(
    ("value", "address"),
    [
        ("redis://127.0.0.1:6379/0", TcpAddress("127.0.0.1", 6379, 0)),
        ("redis://redis.example:6380/15", TcpAddress("redis.example", 6380, 15)),
        ("redis://localhost", TcpAddress("localhost", 6379, 0)),
        ("redis://localhost/", TcpAddress("localhost", 6379, 0)),
        ("redis://localhost:7000", TcpAddress("localhost", 7000, 0)),
        ("redis://[::1]:6379/2", TcpAddress("::1", 6379, 2)),
        ("REDIS://Host/3", TcpAddress("host", 6379, 3)),
        ("redis://numd@host:6379/1", TcpAddress("host", 6379, 1, username="numd")),
        ("rediss://redis.example:6380/4", TcpAddress("redis.example", 6380, 4, tls=True)),
        ("rediss://redis.example", TcpAddress("redis.example", 6379, 0, tls=True)),
        ("unix:///run/redis/redis.sock", UnixAddress("/run/redis/redis.sock", 0)),
        ("unix:///run/redis/redis.sock?db=7", UnixAddress("/run/redis/redis.sock", 7)),
        ("unix:///run/my%20redis.sock", UnixAddress("/run/my redis.sock", 0)),
        ("unix://numd@/run/redis.sock", UnixAddress("/run/redis.sock", 0, username="numd")),
        (
            "redis+sentinel://h1:26379,h2:26380/mymaster/3",
            SentinelAddress((("h1", 26379), ("h2", 26380)), "mymaster", 3),
        ),
        (
            "redis+sentinel://h1,[::1]:5000,h3/mymaster",
            SentinelAddress((("h1", 26379), ("::1", 5000), ("h3", 26379)), "mymaster", 0),
        ),
        (
            "redis+sentinel://h1/my%2Dmaster",
            SentinelAddress((("h1", 26379),), "my-master", 0),
        ),
        ("redis://n%40d@host/0", TcpAddress("host", 6379, 0, username="n@d")),
        (
            "redis+sentinel://numd@h1/mymaster/0",
            SentinelAddress((("h1", 26379),), "mymaster", 0, username="numd"),
        ),
    ],
)
def test_accepted_redis_addresses(value: str, address: object) -> None:
    """Every accepted Redis form parses into its typed address, defaults filled in."""
    assert parse_db(value) == address


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("redis:/host/0", "--db: 'redis:/host/0': expected redis://..."),
        ("unix:/run/redis.sock", "--db: 'unix:/run/redis.sock': expected unix://..."),
        (
            "redis+cluster://h/0",
            "--db: 'redis+cluster://h/0': unknown scheme redis+cluster://; use one of "
            "redis://, rediss://, unix://, redis+sentinel://",
        ),
        (
            "rediss+sentinel://h/m",
            "--db: 'rediss+sentinel://h/m': unknown scheme rediss+sentinel://; use one of "
            "redis://, rediss://, unix://, redis+sentinel://",
        ),
        ("redis://[::1/0", "--db: 'redis://[::1/0': not a valid URL"),
        ("redis://", "--db: 'redis://': no host; expected redis://host:port/N"),
        ("rediss://:6379/0", "--db: 'rediss://:6379/0': no host; expected rediss://host:port/N"),
        ("redis://h:x/0", "--db: 'redis://h:x/0': the port is not a number from 1 to 65535"),
        (
            "redis://h:70000/0",
            "--db: 'redis://h:70000/0': the port is not a number from 1 to 65535",
        ),
        ("redis://h:0/0", "--db: 'redis://h:0/0': the port is not a number from 1 to 65535"),
        (
            "redis://h/x",
            "--db: 'redis://h/x': database 'x' is not a number (expected /N, e.g. /0)",
        ),
        (
            "redis://h/-1",
            "--db: 'redis://h/-1': database '-1' is not a number (expected /N, e.g. /0)",
        ),
        (
            "redis://h/0/1",
            "--db: 'redis://h/0/1': database '0/1' is not a number (expected /N, e.g. /0)",
        ),
        (
            "redis://h/0?db=1",
            "--db: 'redis://h/0?db=1': no ?query is accepted; the database number is the path: /N",
        ),
        ("redis://h/0#x", "--db: 'redis://h/0#x': a #fragment means nothing here"),
        (
            "unix://redis.sock",
            "--db: 'unix://redis.sock': expected an absolute socket path: "
            "unix:///path/to/redis.sock",
        ),
        ("unix:///", "--db: 'unix:///': the path names a directory, not a socket"),
        ("unix:///run/", "--db: 'unix:///run/': the path names a directory, not a socket"),
        (
            "unix:///r.sock?db=x",
            "--db: 'unix:///r.sock?db=x': database 'x' is not a number (expected /N, e.g. /0)",
        ),
        (
            "unix:///r.sock?timeout=1",
            "--db: 'unix:///r.sock?timeout=1': the only query accepted is ?db=N",
        ),
        (
            "unix:///r.sock?db=1&db=2",
            "--db: 'unix:///r.sock?db=1&db=2': the only query accepted is ?db=N",
        ),
        ("unix:///r.sock?db", "--db: 'unix:///r.sock?db': expected ?db=N"),
        (
            "redis+sentinel:///m/0",
            "--db: 'redis+sentinel:///m/0': no sentinel; expected "
            "redis+sentinel://h1:26379,h2:26379/MASTERNAME/N",
        ),
        (
            "redis+sentinel://h1,,h2/m",
            "--db: 'redis+sentinel://h1,,h2/m': sentinel '' has no host",
        ),
        (
            "redis+sentinel://h1:x/m",
            "--db: 'redis+sentinel://h1:x/m': sentinel 'h1:x': the port is not a number "
            "from 1 to 65535",
        ),
        (
            "redis+sentinel://h1:0/m",
            "--db: 'redis+sentinel://h1:0/m': the port is not a number from 1 to 65535",
        ),
        (
            "redis+sentinel://h1",
            "--db: 'redis+sentinel://h1': no master name; expected "
            "redis+sentinel://hosts/MASTERNAME/N",
        ),
        (
            "redis+sentinel://h1/m/0/1",
            "--db: 'redis+sentinel://h1/m/0/1': expected /MASTERNAME or /MASTERNAME/N "
            "after the sentinels",
        ),
        (
            "redis+sentinel://h1/m/",
            "--db: 'redis+sentinel://h1/m/': expected /MASTERNAME or /MASTERNAME/N "
            "after the sentinels",
        ),
        (
            "redis+sentinel://h1/m/x",
            "--db: 'redis+sentinel://h1/m/x': database 'x' is not a number (expected /N, e.g. /0)",
        ),
        (
            "redis+sentinel://h1/m%20x",
            "--db: 'redis+sentinel://h1/m%20x': master name 'm x' has spaces or control characters",
        ),
        (
            "redis+sentinel://h1/m?db=1",
            "--db: 'redis+sentinel://h1/m?db=1': no ?query is accepted; the database number is "
            "the last path part",
        ),
    ],
)
def test_malformed_redis_values_name_the_value(value: str, message: str) -> None:
    """A value with a Redis scheme that does not fit it is refused, naming the value and the fix."""
    with pytest.raises(RedisConfigError) as caught:
        parse_db(value)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    ("value", "shown"),
    [
        ("redis://:secret@host:6379/0", "redis://***@host:6379/0"),
        ("redis://numd:secret@host/0", "redis://***@host/0"),
        ("rediss://:secret@host/0", "rediss://***@host/0"),
        ("unix://:secret@/run/redis.sock", "unix://***@/run/redis.sock"),
        ("redis+sentinel://:secret@h1,h2/m/0", "redis+sentinel://***@h1,h2/m/0"),
        ("redis://:@host/0", "redis://***@host/0"),
    ],
)
def test_password_in_url_is_refused(value: str, shown: str) -> None:
    """A URL with a password is refused, saying to use the file or the variable, the password masked."""
    with pytest.raises(RedisConfigError) as caught:
        parse_db(value)
    assert str(caught.value) == (
        f"--db: {shown!r} carries a password; put it in --redis-password-file or "
        f"${PASSWORD_ENV} instead (a command line is visible to every local user)"
    )
    assert "secret" not in str(caught.value)


@pytest.mark.parametrize(
    "value", ["redis://u:se/cret@h/0", "redis://h/0?password=secret", "unix:///r.sock?auth=secret"]
)
def test_other_messages_mask_secrets(value: str) -> None:
    """However the value is malformed, a password in it never reaches the message."""
    with pytest.raises(RedisConfigError) as caught:
        parse_db(value)
    assert "secret" not in str(caught.value) and "cret" not in str(caught.value)


@pytest.mark.parametrize("value", [DEFAULT_PREFIX, "numd-staging:", "a", "{numd}:", "ünï:"])
def test_prefix_accepted(value: str) -> None:
    """A non-empty prefix without spaces is kept as given."""
    assert check_prefix(value) == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "--redis-prefix: must not be empty"),
        (
            "numd prod:",
            "--redis-prefix: 'numd prod:' has spaces or control characters; use e.g. numd:",
        ),
        ("numd:\t", "--redis-prefix: 'numd:\\t' has spaces or control characters; use e.g. numd:"),
        ("a\x00", "--redis-prefix: 'a\\x00' has spaces or control characters; use e.g. numd:"),
    ],
)
def test_prefix_refused(value: str, message: str) -> None:
    """An empty prefix, or one with spaces or control characters, is refused with a message."""
    with pytest.raises(RedisConfigError) as caught:
        check_prefix(value)
    assert str(caught.value) == message


def test_password_from_file(tmp_path: Path) -> None:
    """The password file's one line is the password (its newline dropped); it wins over the variable."""
    path = tmp_path / "redis-password"
    path.write_text("s3cret word\n", encoding="utf-8")
    assert read_password(str(path), {PASSWORD_ENV: "other"}) == "s3cret word"


def test_password_from_environment() -> None:
    """Without a file, the password comes from $NUMD_REDIS_PASSWORD; unset or blank means none."""
    assert read_password(None, {PASSWORD_ENV: "  s3cret\n"}) == "s3cret"
    assert read_password(None, {PASSWORD_ENV: "  "}) is None
    assert read_password(None, {}) is None


def test_password_file_errors(tmp_path: Path) -> None:
    """A missing, empty or multi-line password file is refused, naming the file."""
    missing = tmp_path / "missing"
    with pytest.raises(RedisConfigError, match=f"--redis-password-file: cannot read {missing}: "):
        read_password(str(missing))
    empty = tmp_path / "empty"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(RedisConfigError) as caught:
        read_password(str(empty))
    assert str(caught.value) == f"--redis-password-file: {empty} is empty"
    two = tmp_path / "two"
    two.write_text("a\nb\n", encoding="utf-8")
    with pytest.raises(RedisConfigError) as caught:
        read_password(str(two))
    assert str(caught.value) == f"--redis-password-file: {two} must hold one line"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(RedisConfigError, match=f"--redis-password-file: cannot read {binary}: "):
        read_password(str(binary))


def test_redis_config(tmp_path: Path) -> None:
    """The options together: embedded store gives None; Redis gives address, password and prefix."""
    assert redis_config("numd.db", environ={PASSWORD_ENV: "x"}) is None
    assert redis_config("redis://h/1", environ={}) == RedisConfig(TcpAddress("h", 6379, 1))
    path = tmp_path / "pw"
    path.write_text("pw\n", encoding="utf-8")
    assert redis_config("unix:///r.sock", str(path), "app:", environ={}) == RedisConfig(
        UnixAddress("/r.sock"), "pw", "app:"
    )
    with pytest.raises(RedisConfigError, match="--redis-prefix"):
        redis_config("redis://h/1", prefix="a b", environ={})
