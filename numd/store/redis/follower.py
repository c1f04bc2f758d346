"""A local copy of the shared state in Redis, kept up to date from the change stream.

Every numd instance on Redis keeps a `NumberService` that mirrors the shared
sorted list and registry: replies, API pages and the dashboard read it, as they
read the embedded state. The `Follower` keeps it up to date:

1. **Snapshot.** It reads the sorted list and the registry in chunks, each one
   read-only script call (`SNAPSHOT`) that returns the chunk's members
   concatenated into one string (txredisapi parses about 10 us per member, so a
   list of 10^6 read member by member would take 10 s; one string takes one
   copy) and its clients one line each, together with the change stream's last
   entry ID and its count of entries ever added, taken atomically with the
   chunk. Chunks follow each other by member (``BYLEX`` after the last member
   read) and by client ID, not by rank, so a merge between two chunks shifts
   nothing. No single call blocks Redis for long (about 10 ms): a script that
   returned a list of 10^6 whole would block every instance for about 0.9 s
   (measured here).

   Chunks read at different times are made exact by the stream: the entries
   between the first call's ID and the last one's are read (``XRANGE``), and a
   member merged between call i-1 and call i is added only if it sorts at or
   below the last member read before call i (later chunks read it otherwise).
   Client entries set absolute values, so replaying them in order over the
   clients as read gives the registry as of the last call. A clear in between,
   or entries trimmed away before they were read, make it start over; after
   `SNAPSHOT_ATTEMPTS` it reads everything in one call.

2. **Follow.** From the snapshot's entry on, it reads the stream with
   ``XREAD BLOCK`` (at most `count` entries a call) on a connection of its own,
   and applies each entry to the service.

3. **Gaps.** Right behind each ``XREAD``, on the same connection, goes a
   read-only script (`STREAM_STATE`) answering how many entries the stream ever
   added and how many it holds. Redis runs it after the ``XREAD`` has read (a
   blocked client's next command waits), so if the oldest entry still held is
   later than the next one this copy needs, entries it never read were trimmed:
   it loads a snapshot again. (It may also be trimmed just after the read: the
   copy then reloads without need, which only happens to a copy about a stream's
   length behind.) It also reloads after every reconnection (`RedisClient.epoch`):
   Redis may have restarted and lost, or been restored to, other data. From a
   gap or a lost connection until the reload is done `Follower.ready` is false
   (for ``/readyz``); the copy goes on serving what it holds.

**Applying.** Entries go through the service's public methods, so that its
observers (the array reply cache, the dashboard) see each change: merge,
clear, register, report, disconnect, and give. Fields the entry carries and the
method would take from elsewhere are set on the service's own record (an ID the
copy has not seen gets its record first): a register's start number before the
call, ``last_seen`` (the writing instance's time, so every copy holds the same)
right after it. ``give`` draws its number from the service's random source, the
only way in for a given number, so for that one call the source is one that
draws the entry's number. (A method that records a number given elsewhere would
be cleaner; `NumberService` has none yet.) A snapshot replaces the state with
`NumberService.restore`, then clears and merges the list through the service and
registers or disconnects each client whose record changed, so observers drop
what they cached; a client Redis no longer knows (it lost its data) is dropped
without a word to them.

**Exactly once.** Changes are applied only from the stream, never where they are
made: an instance that changes the state through `numd.store.redis.scripts` does
not touch its own copy, and its change reaches the copy as every other
instance's does, once. To answer a client only when its change shows in this
instance's very next reply, wait for `Follower.wait_applied` with the entry ID
the script returned.
"""

from __future__ import annotations

import heapq
from itertools import count as counter

from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeoutError
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.service import NumberService
from numd.store.redis.connection import RedisClient, RedisUnavailable
from numd.store.redis.scripts import Keys, StreamEntry, parse_entries
from numd.store.redis.snapshot import (
    CLIENT_OPS,
    DEFAULT_CHUNK,
    DEFAULT_CLIENT_CHUNK,
    REGISTER_MANY_OP,
    SNAPSHOT_ATTEMPTS,
    STREAM_STATE,
    UPDATE_OP,
    EntryId,
    Snapshot,
    SnapshotReader,
    SnapshotSpoilt,
    parse_id,
    parse_registrations,
    parse_updates,
    record_fields,
    values_of,
)

DEFAULT_COUNT = 1000
"""Most entries one ``XREAD`` returns."""
DEFAULT_BLOCK = 1.0
"""Seconds one ``XREAD`` waits for new entries before it is sent again."""
DEFAULT_RETRY_DELAY = 0.1
"""Seconds before trying again after a failure while connected (doubling up to the max)."""
DEFAULT_MAX_RETRY_DELAY = 2.0
"""The longest wait between two attempts."""


class _Reload(Exception):
    """The copy must be loaded again: a gap in the stream, or a reconnection."""


class Follower(Service, SnapshotReader):
    """Keeps `service` equal to the shared state in Redis: a snapshot, then the change stream.

    `redis` is a connection of the follower's own (its ``XREAD BLOCK`` holds the
    connection while it waits). `clock` runs the retry delays and `wait_applied`'s
    timeouts. The follower runs while the service runs, and tries again, with
    backoff, whatever fails; `ready` says whether the copy is current.
    """

    log = Logger()
    name = "numd-redis-follower"

    def __init__(
        self,
        service: NumberService,
        redis: RedisClient,
        clock: IReactorTime,
        keys: Keys | None = None,
        count: int = DEFAULT_COUNT,
        block: float = DEFAULT_BLOCK,
        chunk: int = DEFAULT_CHUNK,
        client_chunk: int = DEFAULT_CLIENT_CHUNK,
        retry_delay: float = DEFAULT_RETRY_DELAY,
        max_retry_delay: float = DEFAULT_MAX_RETRY_DELAY,
    ) -> None:
        if min(count, chunk, client_chunk) < 1 or block <= 0:
            raise ValueError("count, chunk and client_chunk must be at least 1, block positive")
        self.service = service
        self.redis = redis
        self.keys = keys if keys is not None else Keys()
        self._clock = clock
        self.count = count
        self.block = block
        self.chunk = chunk
        self.client_chunk = client_chunk
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self._client_prefix = (self.keys.prefix + "client:").encode()
        self._last: bytes | None = None
        """The last entry applied (or the snapshot's); None when the copy must be loaded."""
        self._last_id: EntryId = (0, 0)
        self._added = 0
        """How many entries the stream had added up to `_last`."""
        self._epoch = -1
        """The connection (`RedisClient.epoch`) the copy was loaded and followed on."""
        self._loop: Deferred[None] | None = None
        self._run_id = 0
        """Which run of the loop may change the copy: cancelling a coroutine only stops it
        while it waits, not while it runs (as it does when a waiter it fired stops it)."""
        self._waiters: list[tuple[EntryId, int, Deferred[None]]] = []
        self._order = counter()
        self.loads = 0
        """Snapshots loaded (the first one, then one per reload)."""
        self.gaps = 0
        """Reloads because entries were trimmed before this copy read them."""
        self.applied = 0
        """Stream entries applied."""
        self.load_seconds = 0.0
        """How long the last snapshot took to read and apply."""

    # -- lifecycle ------------------------------------------------------------------

    def startService(self) -> None:
        """Load (or resume) and follow, until stopped."""
        super().startService()
        self._run_id += 1
        self._loop = ensureDeferred(self._run(self._run_id))
        self._loop.addErrback(self._ended)

    def stopService(self) -> None:
        """Stop following; the copy stays as it is, and resumes from there if started again."""
        super().stopService()
        self._run_id += 1  # a loop that is running right now (it fired a waiter) stops too
        loop, self._loop = self._loop, None
        if loop is not None:
            loop.cancel()
        waiters, self._waiters = self._waiters, []
        for _, _, d in waiters:
            if not d.called:
                d.errback(RedisUnavailable("the change stream is no longer followed"))

    def _ended(self, failure: Failure) -> None:
        if not failure.check(CancelledError):
            self.log.failure("the Redis follower stopped", failure)

    @property
    def ready(self) -> bool:
        """Whether the copy is loaded and is being kept current on a live connection."""
        return (
            bool(self.running)
            and self._last is not None
            and self.redis.connected
            and self._epoch == self.redis.epoch
        )

    @property
    def position(self) -> bytes | None:
        """The last change-stream entry the copy includes, or None before it is loaded."""
        return self._last

    # -- waiting for an entry ----------------------------------------------------------

    def wait_applied(self, entry: bytes, timeout: float | None = None) -> Deferred[None]:
        """Fire once the copy includes change-stream entry `entry` (at once if it does).

        Fails with `RedisUnavailable` after `timeout` seconds (default: the
        connection's command timeout) or when the follower stops.
        """
        target = parse_id(entry)
        if self._last is not None and self._last_id >= target:
            return succeed(None)
        if not self.running:
            return fail(RedisUnavailable("the change stream is not followed"))
        d: Deferred[None] = Deferred()
        heapq.heappush(self._waiters, (target, next(self._order), d))
        seconds = self.redis.timeout if timeout is None else timeout

        def late(failure: Failure) -> Failure:
            if failure.check(DeferredTimeoutError):
                return Failure(RedisUnavailable(f"entry {entry!r} not applied within {seconds} s"))
            return failure

        return d.addTimeout(seconds, self._clock).addErrback(late)

    def _release(self) -> None:
        """Fire the waiters whose entries the copy now includes."""
        waiters, last = self._waiters, self._last_id
        while waiters and waiters[0][0] <= last:
            _, _, d = heapq.heappop(waiters)
            if not d.called:
                d.callback(None)

    # -- the loop ----------------------------------------------------------------------

    async def _run(self, run: int) -> None:
        """Load, follow, and start over after any failure (with backoff while connected)."""
        delay = self.retry_delay
        while run == self._run_id:
            try:
                if not self.redis.connected:
                    await self.redis.when_connected()
                if self._last is None or self._epoch != self.redis.epoch:
                    await self._load(run)
                await self._follow(run)
                delay = self.retry_delay
                continue
            except CancelledError:
                raise
            except _Reload as e:
                self._still(run)
                self.log.warn("reloading the shared state: {why}", why=str(e))
                self._last = None
                continue
            except RedisUnavailable as e:
                self._still(run)
                if self.redis.refused is not None:
                    self.log.error("not following the shared state: {why}", why=str(e))
                    return
                self.log.warn("following the shared state: {why}", why=str(e))
                if not self.redis.connected:
                    continue  # when_connected waits for the next connection
            except Exception:
                self._still(run)
                self.log.failure("following the shared state failed; loading it again")
                self._last = None
            await deferLater(self._clock, delay, lambda: None)
            delay = min(delay * 2, self.max_retry_delay)

    def _still(self, run: int) -> None:
        """Raise CancelledError if run `run` of the loop was stopped."""
        if run != self._run_id:
            raise CancelledError()

    async def _follow(self, run: int) -> None:
        """Read the next entries (waiting up to `block` seconds for some) and apply them."""
        self._still(run)
        assert self._last is not None
        wait = self.block + self.redis.timeout
        key = self.keys.changes
        read = self.redis.execute_command(
            b"XREAD",
            b"COUNT",
            b"%d" % self.count,
            b"BLOCK",
            b"%d" % max(1, round(self.block * 1000)),
            b"STREAMS",
            key,
            self._last,
            timeout=wait,
        )
        # Sent behind the XREAD on the same connection: Redis answers it after the read.
        state = ensureDeferred(self._script(STREAM_STATE, [key], [], timeout=wait))
        try:
            reply = await read
        except BaseException:
            state.addErrback(lambda _: None)
            raise
        added, length = await state
        self._still(run)
        if self.redis.epoch != self._epoch:
            raise _Reload("reconnected to Redis")
        entries = parse_entries(reply[0][1]) if reply else []
        if added < self._added + len(entries):
            raise _Reload("the change stream is shorter than what was read (Redis lost data?)")
        if added - length + 1 > self._added + 1:
            self.gaps += 1
            raise _Reload(f"the change stream was trimmed past entry {self._last.decode()}")
        for entry in entries:
            self._apply(entry)
            self._last = entry.entry
            self._added += 1
            self.applied += 1
        if entries:
            self._last_id = parse_id(entries[-1].entry)
            self._release()

    # -- applying entries --------------------------------------------------------------

    def _apply(self, entry: StreamEntry) -> None:
        """Apply one change-stream entry to the service, telling its observers."""
        service = self.service
        op = entry.op
        if op == "merge":
            service.merge(values_of(entry.fields[b"members"]))
        elif op == "clear":
            service.clear()
        elif op in CLIENT_OPS:
            client_id = int(entry.fields[b"id"])
            record = service.record_for(client_id)
            last_seen = float(entry.fields[b"last_seen"])
            if op == "register":
                # The start number as the entry says; connected is set by register itself
                # (and a record still marked connected lost its instance's lease).
                record.number = int(entry.fields[b"number"])
                record.connected = False
                service.register(client_id)
            elif op == "report":
                service.report(client_id, int(entry.fields[b"number"]))
            elif op == "give":
                service.record_given(client_id, int(entry.fields[b"last_given"]))
            else:
                service.disconnect(client_id)
            record.last_seen = last_seen
        elif op == REGISTER_MANY_OP:
            last_seen = float(entry.fields[b"last_seen"])
            for client_id, start in parse_registrations(entry.fields[b"clients"]):
                record = service.record_for(client_id)
                record.number = start
                record.connected = False  # a record still marked connected lost its lease
                service.register(client_id)
                record.last_seen = last_seen
        elif op == UPDATE_OP:
            last_seen = float(entry.fields[b"last_seen"])
            for client_id, number, given, bye in parse_updates(entry.fields[b"clients"]):
                record = service.record_for(client_id)
                if number is not None:
                    service.report(client_id, number)
                if given is not None:
                    service.record_given(client_id, given)
                if bye:
                    service.disconnect(client_id)
                record.last_seen = last_seen
        else:
            self.log.warn("skipping change {entry} of unknown kind {op}", entry=entry.entry, op=op)

    # -- snapshots ---------------------------------------------------------------------

    async def _load(self, run: int) -> None:
        """Read a snapshot and make the service hold it."""
        start = self._clock.seconds()
        epoch = self.redis.epoch
        snapshot = None
        for attempt in range(SNAPSHOT_ATTEMPTS + 1):
            chunk = self.chunk if attempt < SNAPSHOT_ATTEMPTS else -1
            try:
                snapshot = await self.read_snapshot(chunk)
                break
            except SnapshotSpoilt as e:
                self.log.info("snapshot spoilt ({why}); reading it again", why=str(e))
        assert snapshot is not None
        self._still(run)
        if self.redis.epoch != epoch:
            raise _Reload("reconnected to Redis while reading a snapshot")
        self._apply_snapshot(snapshot)
        self._last = snapshot.entry
        self._last_id = parse_id(snapshot.entry)
        self._added = snapshot.added
        self._epoch = epoch
        self.loads += 1
        self.load_seconds = self._clock.seconds() - start
        self.log.info(
            "loaded the shared state: {values} values, {clients} clients, up to entry {entry}, "
            "in {calls} calls and {seconds:.3f} s",
            values=len(snapshot.values),
            clients=len(snapshot.clients),
            entry=snapshot.entry.decode(),
            calls=snapshot.calls,
            seconds=self.load_seconds,
        )
        self._release()

    def _apply_snapshot(self, snapshot: Snapshot) -> None:
        """Make the service hold `snapshot`, telling observers of the list and of each client
        whose record changed."""
        service = self.service
        before = {record.client_id: record_fields(record) for record in service.clients_page()}
        records = list(snapshot.clients.values())
        connected = [record.connected for record in records]
        service.restore([], records)  # tells nobody, marks everyone disconnected
        for record, was in zip(records, connected, strict=True):
            record.connected = was
        service.clear()
        if snapshot.values:
            service.merge(snapshot.values)
        for record in records:
            if before.get(record.client_id) != record_fields(record):
                last_seen = record.last_seen
                if record.connected:
                    record.connected = False
                    service.register(record.client_id)
                else:
                    service.disconnect(record.client_id)
                record.last_seen = last_seen
