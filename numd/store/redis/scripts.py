"""The Lua scripts that change numd's state in Redis, each change atomic with its change-stream entry.

Every change (merge, clear, register, disconnect, report, give) is one ``EVALSHA`` of
one script that applies it and appends an entry to the change stream (``XADD`` with
``MAXLEN ~`` trimming), so an instance that follows the stream never sees a change
without its entry or an entry without its change. Scripts rather than
``MULTI``/``EXEC``: a script can check before it writes (an ID's lease, a member
collision) and refuse with nothing applied, and txredisapi's ``multi()`` misreads
``OK`` with hiredis and ``charset=None``.

The scripts start with ``#!lua`` (Redis 7.0 or later): Redis then refuses a script
that may write as a whole when memory is full (``maxmemory`` with ``noeviction``)
instead of failing at its first write with part of the change applied. The lease
renewal alone is marked ``allow-oom``: it only extends expiry times.

Values never become Lua numbers (Redis's Lua keeps doubles, exact only to 2^53): the
sorted list's members are bytes (`encoding`), client numbers and times travel as
decimal strings, and scripts only store and compare them. Every argument is encoded
to bytes here, because txredisapi would format a float with 6 decimals.

Keys, under the deployment's prefix (``numd:`` by default):

- ``values``: the sorted list, a sorted set with every score 0 (`encoding`);
- ``changes``: the change stream;
- ``clients``: the known client IDs, a sorted set scored by ID;
- ``client:N``: client N's registry hash: ``number``, ``last_given`` (absent until
  the first give), ``last_seen``, ``connected`` (``1``/``0``) and ``instance`` (the
  instance it last registered on), the fields of `numd.service.ClientRecord`;
- ``lease:N``: client N's ownership lease, the ID of the instance where it is live,
  expiring after the lease time unless that instance renews it.

The lease, not the hash's ``connected``, says whether an ID is live: an instance that
dies leaves its clients marked connected until they register elsewhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from twisted.internet.defer import Deferred, FirstError, gatherResults, maybeDeferred
from twisted.python.failure import Failure

from numd.service import MAX_CLIENT_ID, MIN_CLIENT_ID, ClientRecord, IdInUse
from numd.store.redis.address import DEFAULT_PREFIX
from numd.store.redis.lua import SCRIPTS, Script

DEFAULT_LEASE_TIME = 10.0
"""Seconds an ID stays owned by an instance that stopped renewing its lease (it died)."""
DEFAULT_STREAM_MAXLEN = 10_000
"""About how many entries the change stream keeps (``MAXLEN ~``); older ones are trimmed.

Enough for a copy that fell a few seconds behind to catch up (a copy that lost its
connection loads a snapshot anyway); with arrays of 1,000 values, about 170 MB of Redis
at most (about 17 bytes a merged value)."""
RENEW_BATCH = 1000
"""Most leases one renewal script call extends (a script blocks Redis while it runs)."""


class LeaseLost(Exception):
    """This instance no longer holds the client's lease: it expired, or another instance took it."""


class MemberCollision(Exception):
    """A member of a merge is in the sorted list already (two encoders drew the same tag).

    Nothing was applied: retag the encoder and merge the values again.
    """


class RedisConnection(Protocol):
    """What the scripts need of a Redis connection: txredisapi's, made with ``charset=None``
    and ``convertNumbers=False`` so that replies stay bytes."""

    def execute_command(self, *args: bytes) -> Deferred[Any]:
        """Send one command; fire with its reply, or fail with Redis's error."""


@dataclass(frozen=True)
class Keys:
    """The Redis keys of one numd deployment, all under its prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def values(self) -> bytes:
        """The sorted list."""
        return self._key("values")

    @property
    def changes(self) -> bytes:
        """The change stream."""
        return self._key("changes")

    @property
    def instances(self) -> bytes:
        """The instances alive (a sorted set scored by when each stops being alive, in ms)."""
        return self._key("instances")

    @property
    def instance_info(self) -> bytes:
        """What each instance alive said of itself (a hash by instance name)."""
        return self._key("instance-info")

    @property
    def clients(self) -> bytes:
        """The known client IDs (a sorted set scored by ID)."""
        return self._key("clients")

    def client(self, client_id: int) -> bytes:
        """Client `client_id`'s registry hash."""
        return self._key(f"client:{client_id}")

    def lease(self, client_id: int) -> bytes:
        """Client `client_id`'s ownership lease."""
        return self._key(f"lease:{client_id}")

    def _key(self, name: str) -> bytes:
        return (self.prefix + name).encode()


@dataclass(frozen=True)
class Applied:
    """A change to the sorted list that Redis applied: its stream entry and how many values."""

    entry: bytes
    """The change stream entry's ID."""
    count: int
    """Values merged, or values the list held before a clear."""


@dataclass(frozen=True)
class Registered:
    """A registration that Redis applied."""

    entry: bytes
    number: int
    """The start number: the last number the ID reported on any instance (0 if new)."""


@dataclass(frozen=True)
class ClientUpdate:
    """What changed of one client on this instance since its last update."""

    client_id: int
    number: int | None = None
    """The last number it reported, or None."""
    given: int | None = None
    """The last even/odd number it was given, or None."""
    bye: bool = False
    """Whether its connection here ended."""


@dataclass(frozen=True)
class Updated:
    """A batch of client updates that Redis applied."""

    entries: list[bytes]
    """The change-stream entries written (none if nothing was applied)."""
    lost: list[int]
    """The IDs whose leases this instance no longer holds: their updates were not applied
    (a disconnect of an ID still marked connected here was)."""


@dataclass(frozen=True)
class StreamEntry:
    """One entry of the change stream."""

    entry: bytes
    fields: dict[bytes, bytes]

    @property
    def op(self) -> str:
        """What changed: merge, clear, register, disconnect, report or give."""
        return self.fields[b"op"].decode()

    @property
    def instance(self) -> str:
        """The instance that made the change."""
        return self.fields[b"instance"].decode()


def parse_entries(reply: Sequence[Sequence[Any]]) -> list[StreamEntry]:
    """The entries of an ``XRANGE``/``XREVRANGE`` reply (bytes)."""
    entries = []
    for entry, flat in reply:
        fields = dict(zip(flat[::2], flat[1::2], strict=True))
        entries.append(StreamEntry(entry, fields))
    return entries


def parse_client(client_id: int, flat: Sequence[bytes]) -> ClientRecord | None:
    """The record in client `client_id`'s registry hash (an ``HGETALL`` reply), or None if empty."""
    if not flat:
        return None
    fields = dict(zip(flat[::2], flat[1::2], strict=True))
    last_given = fields.get(b"last_given")
    return ClientRecord(
        client_id,
        number=int(fields[b"number"]),
        last_given=None if last_given is None else int(last_given),
        connected=fields.get(b"connected") == b"1",
        last_seen=float(fields[b"last_seen"]),
    )


class StateScripts:
    """numd's changes to the shared state, each one script call on `redis`.

    `instance` names this numd instance (unique among those sharing the Redis, and
    new on each start): it owns the leases of the clients connected to it. Each
    method returns a Deferred that fires once Redis has applied the change, or fails
    with what Redis refused (`IdInUse`, `LeaseLost`, `MemberCollision`, or the
    connection's own error). Scripts are loaded by `load`, and loaded again if Redis
    has forgotten them (a restart, ``SCRIPT FLUSH``).
    """

    def __init__(
        self,
        redis: RedisConnection,
        instance: str,
        keys: Keys | None = None,
        stream_maxlen: int = DEFAULT_STREAM_MAXLEN,
    ) -> None:
        if not instance or any(c.isspace() for c in instance):
            raise ValueError(f"instance name {instance!r} must be non-empty, without spaces")
        self._redis = redis
        self.instance = instance
        self._instance = instance.encode()
        self.keys = keys if keys is not None else Keys()
        self._maxlen = str(int(stream_maxlen)).encode()

    def load(self) -> Deferred[None]:
        """Load every script into Redis's script cache (``SCRIPT LOAD``)."""
        loads = [self._load(script) for script in SCRIPTS.values()]
        return gatherResults(loads, consumeErrors=True).addCallback(lambda _: None)

    def merge(self, members: Sequence[bytes]) -> Deferred[Applied]:
        """Add encoded `members` (`encoding.MemberEncoder`) to the sorted list, all or none."""
        if len(set(members)) != len(members):
            raise ValueError("a merge repeats a member")
        d = self._run("merge", [self.keys.values, self.keys.changes], [*members])
        return d.addCallback(lambda reply: Applied(reply[0], int(reply[1])))

    def clear(self) -> Deferred[Applied]:
        """Empty the sorted list."""
        d = self._run("clear", [self.keys.values, self.keys.changes], [])
        return d.addCallback(lambda reply: Applied(reply[0], int(reply[1])))

    def register(
        self, client_id: int, now: float, lease_time: float = DEFAULT_LEASE_TIME
    ) -> Deferred[Registered]:
        """Register `client_id` here with a lease of `lease_time` seconds; fire with its start number.

        Fails with `IdInUse` while any instance holds the ID's lease.
        """
        keys = self.keys
        d = self._run(
            "register",
            [keys.lease(client_id), keys.client(client_id), keys.clients, keys.changes],
            [_client_id(client_id), _milliseconds(lease_time), _seconds(now)],
            subject=client_id,
        )
        return d.addCallback(lambda reply: Registered(reply[0], int(reply[1])))

    def register_many(
        self, client_ids: Sequence[int], now: float, lease_time: float = DEFAULT_LEASE_TIME
    ) -> Deferred[list[int | None]]:
        """Register several clients here, each as `register` does, in as few script calls as
        `RENEW_BATCH` allows; fire with each one's start number, or None where the ID is in
        use (its lease held by some instance)."""
        ids = list(client_ids)
        keys = self.keys
        ms, seconds = _milliseconds(lease_time), _seconds(now)
        calls: list[Deferred[Any]] = []
        for start in range(0, len(ids), RENEW_BATCH):
            batch = ids[start : start + RENEW_BATCH]
            batch_keys = [keys.changes, keys.clients]
            for client_id in batch:
                batch_keys += [keys.lease(client_id), keys.client(client_id)]
            args = [ms, seconds, *map(_client_id, batch)]
            calls.append(self._run("register-many", batch_keys, args))
        d = gather(calls)
        return d.addCallback(
            lambda replies: [int(n) if n else None for reply in replies for n in reply[1:]]
        )

    def renew(
        self, client_ids: Sequence[int], lease_time: float = DEFAULT_LEASE_TIME
    ) -> Deferred[list[int]]:
        """Extend this instance's leases of `client_ids`; fire with those it no longer holds.

        Renew only the IDs whose connections are alive and talking: a silent one's
        lease then runs out, and another instance may take the ID over.
        """
        ids = list(client_ids)
        ms = _milliseconds(lease_time)
        calls: list[Deferred[list[int]]] = []
        for start in range(0, len(ids), RENEW_BATCH):
            batch = ids[start : start + RENEW_BATCH]
            d = self._run("renew", [self.keys.lease(i) for i in batch], [ms], stream=False)
            calls.append(d.addCallback(_pick, batch))
        d = gather(calls)
        return d.addCallback(lambda lists: [i for lost in lists for i in lost])

    def update(self, changes: Sequence[ClientUpdate], now: float) -> Deferred[Updated]:
        """Apply several clients' reports, given numbers and disconnects, one entry per call.

        At most `RENEW_BATCH` clients go in one script call. Updates of IDs whose
        lease this instance no longer holds are skipped and named in `Updated.lost`.
        """
        keys = self.keys
        calls: list[Deferred[Any]] = []
        for start in range(0, len(changes), RENEW_BATCH):
            batch = changes[start : start + RENEW_BATCH]
            batch_keys: list[bytes] = [keys.changes]
            args: list[bytes] = [_seconds(now)]
            for change in batch:
                batch_keys += [keys.lease(change.client_id), keys.client(change.client_id)]
                args += [
                    _client_id(change.client_id),
                    b"" if change.number is None else _integer(change.number),
                    b"" if change.given is None else _integer(change.given),
                    b"1" if change.bye else b"0",
                ]
            calls.append(self._run("update", batch_keys, args))
        d = gather(calls)

        def updated(replies: list[Any]) -> Updated:
            entries = [reply[0] for reply in replies if reply[0]]
            lost = [int(i) for reply in replies for i in reply[1]]
            return Updated(entries, lost)

        return d.addCallback(updated)

    def heartbeat(self, info: bytes, ttl: float) -> Deferred[list[bytes]]:
        """Say this instance is alive for `ttl` seconds (0: it is leaving), with `info` (JSON);
        fire with the info of every instance alive."""
        keys = [self.keys.instances, self.keys.instance_info]
        ms = b"0" if ttl == 0 else _milliseconds(ttl)
        return self._run("heartbeat", keys, [ms, info], stream=False)

    def disconnect(self, client_id: int, now: float) -> Deferred[bytes | None]:
        """Free `client_id`'s lease if this instance holds it and mark it disconnected.

        Fires with the stream entry's ID, or None if the ID was not live here (its
        lease taken over by another instance): then nothing changed.
        """
        keys = self.keys
        d = self._run(
            "disconnect",
            [keys.lease(client_id), keys.client(client_id), keys.changes],
            [_client_id(client_id), _seconds(now)],
        )
        return d.addCallback(lambda entry: entry or None)

    def report(self, client_id: int, number: int, now: float) -> Deferred[bytes]:
        """Record `number` as `client_id`'s number; fails with `LeaseLost` unless it is live here."""
        return self._client_change("report", client_id, number, now)

    def give(self, client_id: int, number: int, now: float) -> Deferred[bytes]:
        """Record `number` as given to `client_id`; fails with `LeaseLost` unless it is live here."""
        return self._client_change("give", client_id, number, now)

    def _client_change(self, name: str, client_id: int, number: int, now: float) -> Deferred[bytes]:
        keys = self.keys
        return self._run(
            name,
            [keys.lease(client_id), keys.client(client_id), keys.changes],
            [_client_id(client_id), _integer(number), _seconds(now)],
            subject=client_id,
        )

    def _load(self, script: Script) -> Deferred[None]:
        d = maybeDeferred(self._redis.execute_command, b"SCRIPT", b"LOAD", script.source)

        def check(sha: bytes) -> None:
            if sha != script.sha:
                raise RuntimeError(
                    f"Redis names the {script.name} script {sha!r}, not {script.sha!r}"
                )

        return d.addCallback(check)

    def _run(
        self,
        name: str,
        keys: list[bytes],
        args: list[bytes],
        stream: bool = True,
        subject: object = None,
    ) -> Deferred[Any]:
        """EVALSHA script `name` (loading it again if Redis forgot it); map its refusals.

        Change scripts get the stream's length and this instance's name before `args`;
        a refusal names `subject` (the client ID).
        """
        script = SCRIPTS[name]
        head = [self._maxlen, self._instance] if stream else [self._instance]
        command = [b"EVALSHA", script.sha, str(len(keys)).encode(), *keys, *head, *args]
        d = maybeDeferred(self._redis.execute_command, *command)

        def reload(failure: Failure) -> Deferred[Any] | Failure:
            if not _error_text(failure).startswith("NOSCRIPT"):
                return failure
            again = self._load(script)
            return again.addCallback(lambda _: self._redis.execute_command(*command))

        return d.addErrback(reload).addErrback(_refusal, subject)


def gather(calls: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """The results of `calls`, in order; or the first failure as it is (not a `FirstError`)."""
    d = gatherResults(calls, consumeErrors=True)

    def first(failure: Failure) -> Failure:
        error = failure.value
        return error.subFailure if isinstance(error, FirstError) else failure

    return d.addErrback(first)


def _pick(positions: list[int], ids: list[int]) -> list[int]:
    """The IDs at `positions` (counted from 1, as Lua does) of `ids`."""
    return [ids[i - 1] for i in positions]


def _error_text(failure: Failure) -> str:
    """The text of a Redis error reply, without the generic ``ERR `` that Redis puts before a
    script's own error."""
    text = str(failure.value)
    return text[4:] if text.startswith("ERR ") else text


_REFUSALS: dict[str, type[Exception]] = {
    "id-in-use": IdInUse,
    "lease-lost": LeaseLost,
    "member-collision": MemberCollision,
}


def _refusal(failure: Failure, subject: object) -> Failure:
    """`failure`, as numd's own exception (naming `subject`) if it is a script's refusal."""
    refusal = _REFUSALS.get(_error_text(failure).split(" ", 1)[0])
    if refusal is None:
        return failure
    return Failure(refusal() if subject is None else refusal(subject))


def _client_id(client_id: int) -> bytes:
    """A client ID as a script argument, checked against the range the service accepts."""
    if isinstance(client_id, bool) or not MIN_CLIENT_ID <= client_id <= MAX_CLIENT_ID:
        raise ValueError(f"client id {client_id!r} is outside {MIN_CLIENT_ID}-{MAX_CLIENT_ID}")
    return str(client_id).encode()


def _integer(number: int) -> bytes:
    """An integer as a script argument: decimal digits, never a float."""
    if isinstance(number, bool) or not isinstance(number, int):
        raise TypeError(f"{number!r} is not an integer")
    return str(number).encode()


def _seconds(now: float) -> bytes:
    """A reactor time as a script argument (repr keeps every digit; txredisapi would keep 6)."""
    return repr(float(now)).encode()


def _milliseconds(seconds: float) -> bytes:
    """A lease time as ``PX`` milliseconds (at least 1)."""
    ms = round(seconds * 1000)
    if ms < 1:
        raise ValueError(f"lease time {seconds!r} s is shorter than a millisecond")
    return str(ms).encode()
