"""The state shared by several numd instances through Redis: `SharedState`.

A `SharedState` is a `NumberService` whose reads are those of a local copy (kept
up to date by a `Follower` from Redis's change stream) and whose changes go to
Redis, each one script call (`StateScripts`), never to the copy directly: a
change shows in the copy when its stream entry comes back, as every other
instance's changes do, exactly once and in Redis's order.

- **Merges, adds and clears** are answered once applied: `when_durable` fires
  when Redis has applied every change made since the last call *and* the copy
  includes them (`Follower.wait_applied`), so the very next reply or page on this
  instance shows them. Answers that show the list after a change are built then
  (`applies_later`).
- **Registration** takes the ID's lease in Redis (`claim`, a Deferred): the start
  number is the last one the ID reported on any instance; `IdInUse` while any
  instance holds the lease.
- **Reports, given numbers and disconnects** are not answered: they are gathered
  per client and sent in one script call per batch (one stream entry), a batch
  as soon as the previous one is answered, so at a low rate each goes at once and
  at a high rate they share calls. A disconnect, then a registration of the same
  ID, keep their order. While Redis is down they wait (at most one entry per ID)
  and go when it is back.
- **Leases** are renewed every third of the lease time for the IDs whose
  connections completed a token since the last renewal (`talking`): a silent
  connection's lease runs out and another instance may take its ID. IDs whose
  lease this instance lost are handed to `lease_lost`, which closes their
  connections.

Redis unreachable: changes fail with `StateUnavailable` (at once while
disconnected, within the command timeout otherwise), so nothing is acknowledged
that Redis did not apply.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterable, Sequence
from typing import Any, cast

from twisted.internet.defer import Deferred, fail, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from numd.service import (
    INT64_MAX,
    INT64_MIN,
    MAX_CLIENT_ID,
    MIN_CLIENT_ID,
    RANDOM_VALUE_MAX,
    RANDOM_VALUE_MIN,
    IdInUse,
    NumberService,
    Parity,
    StateUnavailable,
)
from numd.store.redis.connection import DEFAULT_CONNECT_TIMEOUT, RedisClient
from numd.store.redis.encoding import MemberEncoder
from numd.store.redis.follower import Follower
from numd.store.redis.scripts import (
    DEFAULT_LEASE_TIME,
    ClientUpdate,
    MemberCollision,
    StateScripts,
    Updated,
    gather,
)
from numd.store.redis.snapshot import parse_id
from numd.timers import cancel

MERGE_ATTEMPTS = 3
"""Merges tried with a new tag after a member collision (one in 2^64 per member)."""
UPDATE_INTERVAL = 0.02
"""Seconds between two batches of client updates: reports are never answered, so waiting this
long costs clients nothing and makes one script call (and one stream entry, which every
instance reads) carry the reports of many clients, even at a low rate."""
MAX_PENDING_CLAIMS = 1000
"""Registrations that may wait for Redis at once; past it a registration is refused at once
(``error:unavailable``; the client backs off) instead of queueing behind the others until
every one of them times out."""
MAX_UPDATE_DELAY = 2.0
"""The longest wait before sending client updates again after a failure."""
REFUSAL_LOG_INTERVAL = 10.0
"""Seconds between two log lines about changes Redis refused."""
HEARTBEAT_INTERVAL = 2.0
"""Seconds between two heartbeats of an instance (for the dashboard's list of instances)."""
HEARTBEAT_TTL = 3 * HEARTBEAT_INTERVAL
"""Seconds after its last heartbeat that an instance is taken for gone."""


class SharedState(NumberService):
    """numd's state in Redis, read from a local copy that follows the change stream.

    `redis` carries the changes; `follower` keeps this object's copy (it is given
    `local_copy`, which applies changes without sending them). `talking(since)`
    names the IDs whose connections completed a token since `since` (their leases
    are renewed); `lease_lost(ids)` is told of IDs whose lease another instance
    took. Both are set by the daemon's wiring (the counter listener provides them).
    """

    log = Logger()
    applies_later = True

    def __init__(
        self,
        clock: IReactorTime,
        scripts: StateScripts,
        redis: RedisClient,
        follower_redis: RedisClient,
        rng: random.Random | None = None,
        lease_time: float = DEFAULT_LEASE_TIME,
        encoder: MemberEncoder | None = None,
    ) -> None:
        super().__init__(clock, rng)
        self._clock = clock
        self.scripts = scripts
        self.redis = redis
        self.lease_time = lease_time
        self.encoder = encoder if encoder is not None else MemberEncoder()
        self.follower = Follower(self.local_copy, follower_redis, clock, scripts.keys)
        self.talking: Callable[[float], Iterable[int]] = lambda since: ()
        self.local_clients: Callable[[], int] = lambda: 0
        """How many counter clients are connected to this instance (for its heartbeat)."""
        self._heart = LoopingCall(self.heartbeat)
        self._heart.clock = clock
        self._instances: list[dict[str, object]] = []
        self._started = clock.seconds()
        self.lease_lost: Callable[[Sequence[int]], None] = lambda ids: None
        self._unwaited: list[Deferred[bytes]] = []
        """Changes to the list made since the last `when_durable`: each fires with its entry."""
        self._updates: dict[int, list[Any]] = {}
        """Per client, what to send: [number or None, given or None, disconnected]."""
        self._update_call: IDelayedCall | None = None
        self._updates_in_flight = 0
        self._update_delay = UPDATE_INTERVAL
        self._claims_waiting = 0
        self._claims: list[tuple[int, Deferred[int]]] = []
        self._claim_call: IDelayedCall | None = None
        self._renewer = LoopingCall(self._renew)
        self._renewer.clock = clock
        self._renewed_at = clock.seconds()
        self._down_call: IDelayedCall | None = None
        self.unavailable = 0
        """Changes refused because Redis could not be reached (or did not answer in time)."""
        self.refused = 0
        """Changes Redis itself refused (e.g. out of memory): counted in `unavailable` too."""
        self._refused_logged = 0
        self._refusal_logged_at = float("-inf")
        self.leases_lost = 0
        """IDs whose leases this instance found taken or expired."""
        self.update_batches = 0
        """Script calls that sent client updates."""

    @property
    def local_copy(self) -> NumberService:
        """This object as a plain `NumberService`: its changes apply to the copy only (the
        follower applies Redis's changes through it)."""
        return cast(NumberService, super())

    # -- lifecycle --------------------------------------------------------------------

    def startService(self) -> None:
        """Connect, follow the change stream and renew leases; say so once if Redis is not
        reachable at first (numd keeps trying)."""
        super().startService()
        self.redis.start()
        self.follower.redis.start()
        self.follower.startService()
        self._renewer.start(self.lease_time / 3, now=False)
        self._heart.start(HEARTBEAT_INTERVAL, now=True)
        self._down_call = self._clock.callLater(DEFAULT_CONNECT_TIMEOUT, self._still_down)

    def _still_down(self) -> None:
        self._down_call = None
        if self.redis.connected:
            return
        where = self.redis.where
        self.log.warn(
            "numd: Redis at {where} is not reachable yet; trying again with backoff "
            "(/readyz says not-ready until it is)",
            where=where,
        )
        reached = self.redis.when_connected()
        reached.addCallback(lambda _: self.log.info("numd: Redis at {where} reached", where=where))
        reached.addErrback(lambda _: None)

    def stopService(self) -> Deferred[None]:
        """Send the last client updates (the disconnects of a clean stop: their leases are freed
        at once), then stop following and close the connections."""
        super().stopService()
        cancel(self._down_call)
        cancel(self._claim_call)
        self._claim_call = None
        claims, self._claims = self._claims, []
        for _, waiting in claims:
            waiting.errback(StateUnavailable("numd is stopping"))
        if self._renewer.running:
            self._renewer.stop()
        if self._heart.running:
            self._heart.stop()
        if self.redis.connected:  # leaving: off the list of instances at once
            self.scripts.heartbeat(b"{}", 0).addErrback(lambda _: None)
        cancel(self._update_call)
        self._update_call = None
        last = self._send_updates() if self._updates and self.redis.connected else None
        d: Deferred[Any] = last if last is not None else succeed(None)
        d.addTimeout(self.redis.timeout, self._clock)
        d.addErrback(lambda f: self.log.warn("last client updates not sent: {f}", f=f.value))

        def close(_: object) -> Deferred[list[Any]]:
            self.follower.stopService()
            return gatherResults([self.redis.close(), self.follower.redis.close()])

        return d.addBoth(close).addBoth(lambda _: None)

    def heartbeat(self) -> None:
        """Say this instance is alive, with its client count; note the instances alive."""
        if not self.redis.connected:
            return
        info = {
            "name": self.scripts.instance,
            "clients": self.local_clients(),
            "started": round(self._started, 3),
        }
        d = self.scripts.heartbeat(json.dumps(info).encode(), HEARTBEAT_TTL)

        def alive(infos: list[bytes | None]) -> None:
            instances = [json.loads(i) for i in infos if i]
            self._instances = sorted(instances, key=lambda i: str(i.get("name")))

        d.addCallbacks(alive, lambda f: self.log.warn("heartbeat failed: {why}", why=f.value))

    def instances(self) -> list[dict[str, object]] | None:
        """The instances alive at the last heartbeat (name, clients, started), this one included."""
        return self._instances

    @property
    def pending_updates(self) -> int:
        """Clients whose reports, given numbers or disconnects wait to be sent."""
        return len(self._updates)

    @property
    def ready(self) -> bool:
        """Whether changes can be made and the copy is current."""
        return self.redis.connected and self.follower.ready

    # -- the registry ------------------------------------------------------------------

    def claim(self, client_id: int) -> Deferred[int]:
        """Take `client_id`'s lease in Redis; fire with its start number (from any instance).

        The registrations of one reactor turn go in one script call (a burst of
        clients costs a few calls, not one each).
        """
        if not MIN_CLIENT_ID <= client_id <= MAX_CLIENT_ID:
            raise ValueError(f"client id {client_id} is outside 0-10000")
        if self._claims_waiting >= MAX_PENDING_CLAIMS:
            self.unavailable += 1
            return fail(StateUnavailable(f"{MAX_PENDING_CLAIMS} registrations wait for Redis"))
        if client_id in self._updates:
            self._send_updates()  # its disconnect goes first, on the same connection
        self._claims_waiting += 1
        d: Deferred[int] = Deferred()
        self._claims.append((client_id, d))
        if self._claim_call is None:
            self._claim_call = self._clock.callLater(0, self._send_claims)
        return d.addErrback(self._unavailable)

    def _send_claims(self) -> None:
        """Send the registrations gathered this turn in one batch; answer each."""
        self._claim_call = None
        claims, self._claims = self._claims, []
        if not claims:
            return
        ids = [client_id for client_id, _ in claims]
        sent = self.scripts.register_many(ids, self._clock.seconds(), self.lease_time)

        def answered(numbers: list[int | None]) -> None:
            self._claims_waiting -= len(claims)  # before the answers: they may claim again
            for (client_id, d), number in zip(claims, numbers, strict=True):
                if number is None:
                    d.errback(IdInUse(client_id))
                else:
                    d.callback(number)

        def failed(failure: Failure) -> None:
            self._claims_waiting -= len(claims)
            for _, d in claims:
                d.errback(failure)

        sent.addCallbacks(answered, failed)

    def disconnect(self, client_id: int) -> None:
        """Free `client_id`'s lease and mark it disconnected, in the next batch."""
        self._update(client_id)[2] = True

    def report(self, client_id: int, number: int) -> None:
        """Record `number` for `client_id`, in the next batch."""
        self._update(client_id)[0] = number

    def give(self, client_id: int, parity: Parity) -> int:
        """Draw an even (0-98) or odd (1-99) number for `client_id`; record it in the next batch."""
        number = 2 * int(self.rng.random() * 50) + (parity == "odd")
        self._update(client_id)[1] = number
        return number

    def give_many(self, client_id: int, odd: list[bool]) -> list[int]:
        """`give` for several requests of one client at once (True: odd), in order."""
        random = self.rng.random
        numbers = [2 * int(random() * 50) + o for o in odd]
        self._update(client_id)[1] = numbers[-1]
        return numbers

    def _update(self, client_id: int) -> list[Any]:
        update = self._updates.get(client_id)
        if update is None:
            update = self._updates[client_id] = [None, None, False]
            self._next_updates()
        return update

    def _send_updates(self) -> Deferred[None] | None:
        """Send the gathered client updates in one batch (None if there are none)."""
        cancel(self._update_call)
        self._update_call = None
        if not self._updates:
            return None
        updates, self._updates = self._updates, {}
        changes = [ClientUpdate(i, n, g, b) for i, (n, g, b) in updates.items()]
        self._updates_in_flight += 1
        self.update_batches += 1
        d = self.scripts.update(changes, self._clock.seconds())
        return d.addCallbacks(self._updated, self._update_failed, errbackArgs=(changes,))

    def _updated(self, updated: Updated) -> None:
        self._updates_in_flight -= 1
        self._update_delay = UPDATE_INTERVAL
        if updated.lost:
            self._lost(updated.lost)
        self._next_updates()

    def _update_failed(self, failure: Failure, changes: list[ClientUpdate]) -> None:
        """Keep the updates that failed (behind newer ones of the same clients) and try again
        after a backoff: nothing that a client reported is dropped while Redis is away."""
        self._updates_in_flight -= 1
        if self._update_delay == UPDATE_INTERVAL:
            self.log.warn("client updates not sent: {why}; trying again", why=failure.value)
        for change in changes:
            newer = self._updates.get(change.client_id)
            if newer is None:
                self._updates[change.client_id] = [change.number, change.given, change.bye]
            else:
                newer[0] = change.number if newer[0] is None else newer[0]
                newer[1] = change.given if newer[1] is None else newer[1]
                newer[2] = newer[2] or change.bye
        self._update_delay = min(max(self._update_delay * 2, 0.05), MAX_UPDATE_DELAY)
        self._next_updates()

    def _next_updates(self) -> None:
        if not self.running:
            return  # stopping: `stopService` sent the last batch
        if self._updates and self._update_call is None and not self._updates_in_flight:
            self._update_call = self._clock.callLater(self._update_delay, self._send_updates)

    def _renew(self) -> Deferred[None] | None:
        """Extend the leases of the IDs whose connections talked since the last renewal."""
        since, self._renewed_at = self._renewed_at, self._clock.seconds()
        ids = list(self.talking(since))
        if not ids or not self.redis.connected:
            return None
        d = self.scripts.renew(ids, self.lease_time)

        def failed(failure: Failure) -> None:
            self.log.warn("renewing {n} leases failed: {why}", n=len(ids), why=failure.value)

        return d.addCallbacks(self._lost, failed)

    def _lost(self, ids: Sequence[int]) -> None:
        if ids:
            self.leases_lost += len(ids)
            self.log.warn(
                "{n} client IDs are no longer held here (another instance took them, "
                "or their leases ran out): closing their connections",
                n=len(ids),
            )
            self.lease_lost(ids)

    # -- the sorted list ---------------------------------------------------------------

    def merge(self, values: Iterable[int]) -> list[int]:
        """Send `values` to the shared list; `when_durable` fires once they are in the copy."""
        added = list(values)
        for value in added:
            if isinstance(value, bool) or not INT64_MIN <= value <= INT64_MAX:
                raise ValueError(f"{value!r} is not a 64-bit integer")
        if added:
            self._unwaited.append(self._merge(added, MERGE_ATTEMPTS))
        return added

    def _merge(self, values: list[int], attempts: int) -> Deferred[bytes]:
        d = self.scripts.merge(self.encoder.encode_all(values))

        def collided(failure: Failure) -> Deferred[bytes]:
            if not failure.check(MemberCollision) or attempts <= 1:
                failure.raiseException()
            self.encoder.retag()
            return self._merge(values, attempts - 1)

        return d.addCallback(lambda applied: applied.entry).addErrback(collided)

    def add_random(self) -> int:
        """Add one random integer in 1000-10000 to the shared list; return it."""
        value = self.rng.randint(RANDOM_VALUE_MIN, RANDOM_VALUE_MAX)
        self.merge([value])
        return value

    def clear(self) -> None:
        """Empty the shared list; `when_durable` fires once the copy is empty too."""
        d = self.scripts.clear()
        self._unwaited.append(d.addCallback(lambda applied: applied.entry))

    # -- acknowledgements --------------------------------------------------------------

    @property
    def waits_for_durability(self) -> bool:
        """Always: every change to the list is answered once Redis applied it."""
        return True

    def when_durable(self) -> Deferred[None] | None:
        """Fires once Redis applied the list changes made since the last call and the copy
        includes them; fails with `StateUnavailable` if Redis refused or did not answer."""
        changes, self._unwaited = self._unwaited, []
        if not changes:
            return None

        def applied(entries: list[bytes]) -> Deferred[None]:
            return self.follower.wait_applied(max(entries, key=parse_id))

        return gather(changes).addCallback(applied).addErrback(self._unavailable)

    def _unavailable(self, failure: Failure) -> Failure:
        """`failure` as numd's refusals: `IdInUse` as it is, anything else `StateUnavailable`."""
        if failure.check(IdInUse):
            return failure
        self.unavailable += 1
        if failure.check(StateUnavailable):
            return failure
        # Redis's own refusal (out of memory, say): one line now and then, never a flood.
        self.refused += 1
        now = self._clock.seconds()
        if now - self._refusal_logged_at >= REFUSAL_LOG_INTERVAL:
            self.log.error(
                "Redis refused {n} change(s) since the last report: {why}",
                n=self.refused - self._refused_logged,
                why=failure.getErrorMessage(),
            )
            self._refusal_logged_at, self._refused_logged = now, self.refused
        return Failure(StateUnavailable(f"Redis refused the change: {failure.getErrorMessage()}"))
