"""The live dashboard: a snapshot of the daemon, and its changes as Server-Sent Events.

`Dashboard` observes the `NumberService` and serves three things, which the HTTP
API wires into routes:

- `Dashboard.snapshot`: the whole picture as a JSON-ready dict: every client's
  row, the totals (messages per second in and out, errors, list size) and the
  sorted list as a histogram with its first and last values and its size, never
  the list itself.
- `Dashboard.open_stream`: an event stream (``text/event-stream``) that starts
  with that snapshot and then sends only what changed: the rows of the clients
  that changed, the totals, and the histogram when the list changed. Changes are
  coalesced: the service's observer only marks them, and a timer on the injected
  clock flushes them at most once per `interval`, however busy the daemon is.
  A stream that has been silent for `heartbeat` seconds gets a comment line.
- `Dashboard.static`: the page, its CSS and its script, shipped as package data
  in ``numd/http/static``.

Streams are bounded twice. At most `max_streams` are open at once (the route
answers 503 past that). And each stream is a push producer on its connection:
when the connection's send buffer is full, the transport pauses it and nothing
more is written to it; when the buffer drains it gets a fresh snapshot instead of
the changes it missed. A stream paused for `stall_timeout` seconds is cut off. So a
slow or stalled browser holds at most the transport's buffer plus one message,
never a growing backlog.

Everything runs on the reactor thread.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Request
from zope.interface import implementer

from numd.service import ClientRecord, NumberService, SortedValues, StateObserver
from numd.stats import Stats

EVENT_STREAM_TYPE = b"text/event-stream"
DEFAULT_INTERVAL = 0.5
"""Seconds between two updates on a stream, at most (changes in between are merged)."""
DEFAULT_HEARTBEAT = 15.0
"""Seconds of silence on a stream after which a comment line is sent."""
DEFAULT_MAX_STREAMS = 32
"""Event streams open at once; one more gets 503."""
DEFAULT_STALL_TIMEOUT = 10.0
"""Seconds a stream may stay unable to send (its reader not reading) before it is cut off."""
DEFAULT_BINS = 40
"""Most bins in the histogram of the sorted list."""
RATE_WINDOW = 2.0
"""Seconds over which messages per second are averaged."""
RECONNECT_MS = 3000
"""How long a browser waits before reconnecting a lost stream (the SSE ``retry`` field)."""

CLIENT_FIELDS = ("id", "number", "last_given", "connected", "last_seen")
"""The order of the values in each client row of a snapshot or an update."""

STATIC_FILES = {
    "index.html": b"text/html; charset=utf-8",
    "dashboard.css": b"text/css; charset=utf-8",
    "dashboard.js": b"text/javascript; charset=utf-8",
}
"""The files of ``numd/static`` that are served, and their content types; nothing else is."""

CONTENT_SECURITY_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page loads only its own script and CSS and talks only to its own daemon."""


def client_row(record: ClientRecord) -> list[Any]:
    """One client as a row in `CLIENT_FIELDS` order."""
    return [
        record.client_id,
        record.number,
        record.last_given,
        record.connected,
        round(record.last_seen, 3),
    ]


def histogram(values: Any, bins: int = DEFAULT_BINS) -> dict[str, Any]:
    """The sorted list `values` summarised: size, first and last value, and counts in bins.

    Bin ``i`` holds the values from ``first + i * bin_width`` to
    ``first + (i + 1) * bin_width - 1``; the last bin ends at `last`. The width is
    an integer, so bins are exact for any 64-bit values, and there are at most
    `bins` of them (fewer when the values span fewer integers). Each count is
    the difference of two bisections of the sorted list, so the cost is
    ``O(bins * log n)``: a list of a million values is never scanned.
    """
    size = len(values)
    if size == 0:
        return {"size": 0, "first": None, "last": None, "bin_width": None, "bins": []}
    first, last = values[0], values[-1]
    span = last - first + 1
    width = -(-span // bins)  # ceiling division, exact for big integers
    count = -(-span // width)
    edges = [values.bisect_left(first + i * width) for i in range(count)] + [size]
    counts = [edges[i + 1] - edges[i] for i in range(count)]
    return {
        "size": size,
        "first": first,
        "last": last,
        "bin_width": width,
        "bins": counts,
    }


class _Rates:
    """Messages per second in and out, from cumulative counters sampled over time."""

    def __init__(self, now: float, received: int, sent: int) -> None:
        self._samples: deque[tuple[float, int, int]] = deque([(now, received, sent)])

    def sample(self, now: float, received: int, sent: int) -> tuple[float, float]:
        """Record the counters at `now`; return the rates over about the last `RATE_WINDOW` s."""
        samples = self._samples
        if now - samples[-1][0] >= 0.1 or len(samples) == 1:
            samples.append((now, received, sent))
        # Keep as base the newest sample at least a window old (or the oldest one).
        while len(samples) > 2 and samples[1][0] <= now - RATE_WINDOW:
            samples.popleft()
        then, received_then, sent_then = samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return 0.0, 0.0
        return (
            round((received - received_then) / elapsed, 1),
            round((sent - sent_then) / elapsed, 1),
        )


class _Changes(StateObserver):
    """The dashboard's observer while a stream is open: it only notes what changed; the
    dashboard's timer sends it."""

    def __init__(self, dashboard: Dashboard) -> None:
        self._dashboard = dashboard

    def registered(self, record: ClientRecord) -> None:
        """A client's row changed."""
        self._dashboard._client_changed(record)

    disconnected = reported = given = registered

    def merged(self, values: list[int]) -> None:
        """The list changed."""
        self._dashboard._list_changed()

    def cleared(self) -> None:
        """The list changed."""
        self._dashboard._list_changed()


class Dashboard:
    """What the dashboard page shows, as a snapshot and as a stream of changes.

    `stats` are the message counters of the daemon's listeners (the counter
    protocol's and, when it runs, the legacy array listener's): their sums give
    the messages in and out and the errors.
    """

    log = Logger()

    def __init__(
        self,
        service: NumberService,
        clock: IReactorTime,
        *,
        stats: Iterable[Stats] = (),
        interval: float = DEFAULT_INTERVAL,
        heartbeat: float = DEFAULT_HEARTBEAT,
        max_streams: int = DEFAULT_MAX_STREAMS,
        stall_timeout: float = DEFAULT_STALL_TIMEOUT,
        bins: int = DEFAULT_BINS,
    ) -> None:
        self.service = service
        self.clock = clock
        self.stats: Sequence[Stats] = tuple(stats)
        self.interval = interval
        self.heartbeat = heartbeat
        self.max_streams = max_streams
        self.stall_timeout = stall_timeout
        self.bins = bins
        self.streams: set[_Stream] = set()
        self.streams_cut_off = 0
        """How many streams were cut off because their reader stopped reading."""
        self._dirty_clients: set[int] = set()
        self._list_dirty = False
        self._last_totals: dict[str, Any] | None = None
        self._timer: LoopingCall | None = None
        self._observer = _Changes(self)
        """Added to the service only while a stream is open."""
        received, sent, _ = self._counts()
        self._rates = _Rates(clock.seconds(), received, sent)
        self._static = _load_static()

    # -- the picture -------------------------------------------------------------------

    def _counts(self) -> tuple[int, int, int]:
        received = sent = errors = 0
        for stats in self.stats:
            received += sum(stats.received.values())
            sent += sum(stats.sent.values())
            errors += sum(stats.errors.values())
        return received, sent, errors

    def totals(self) -> dict[str, Any]:
        """Clients known and connected, messages in and out (total and per second), errors, list size."""
        received, sent, errors = self._counts()
        in_rate, out_rate = self._rates.sample(self.clock.seconds(), received, sent)
        service = self.service
        return {
            "clients_known": service.known_count,
            "clients_connected": service.connected_count,
            "messages_in": received,
            "messages_out": sent,
            "in_per_second": in_rate,
            "out_per_second": out_rate,
            "errors": errors,
            "list_size": service.list_size,
            "instances": service.instances(),
        }

    def snapshot(self) -> dict[str, Any]:
        """The whole picture: every client's row, the totals and the list's histogram."""
        return {
            "time": round(self.clock.seconds(), 3),
            "interval": self.interval,
            "client_fields": list(CLIENT_FIELDS),
            "clients": [client_row(record) for record in self.service.clients_page()],
            "totals": self.totals(),
            "list": histogram(SortedValues(self.service), self.bins),
        }

    def _client_changed(self, record: ClientRecord) -> None:
        self._dirty_clients.add(record.client_id)

    def _list_changed(self, *_: object) -> None:
        self._list_dirty = True

    def _update(self) -> bytes | None:
        """The coalesced changes since the last tick as one event, or None if nothing changed."""
        totals = self.totals()
        if not self._dirty_clients and not self._list_dirty and totals == self._last_totals:
            return None
        update: dict[str, Any] = {
            "time": round(self.clock.seconds(), 3),
            "clients": [
                client_row(record)
                for record in self.service.clients_by_id(sorted(self._dirty_clients))
            ],
            "totals": totals,
        }
        if self._list_dirty:
            update["list"] = histogram(SortedValues(self.service), self.bins)
        self._dirty_clients.clear()
        self._list_dirty = False
        self._last_totals = totals
        return _event("update", update)

    # -- streams -------------------------------------------------------------------------

    def open_stream(self, request: IRequest) -> Deferred[bytes] | bytes | None:
        """Start an event stream on `request`, or return None if `max_streams` are open.

        The stream starts with a ``snapshot`` event, then sends ``update`` events.
        The Deferred fires only if the daemon ends the stream; a lost connection
        cancels it. A HEAD request gets the headers only.
        """
        if len(self.streams) >= self.max_streams:
            return None
        request.setHeader(b"Content-Type", EVENT_STREAM_TYPE)
        request.setHeader(b"Cache-Control", b"no-store")
        request.setHeader(b"X-Accel-Buffering", b"no")
        if request.method == b"HEAD":
            return b""
        stream = _Stream(self, request)
        stream.request.registerProducer(stream, True)
        stream.write(b"retry: %d\n\n" % RECONNECT_MS)
        snapshot = stream.send_snapshot()
        if not self.streams:
            # The first stream: changes count from this snapshot on.
            self._dirty_clients.clear()
            self._list_dirty = False
            self._last_totals = snapshot["totals"]
            # Follow the service only while someone watches: no call per change otherwise.
            self.service.add_observer(self._observer)
            self._timer = LoopingCall(self._tick)
            self._timer.clock = self.clock
            self._timer.start(self.interval, now=False)
        self.streams.add(stream)
        return stream.done

    def _drop(self, stream: _Stream) -> None:
        """Forget `stream`; stop the timer with the last one."""
        self.streams.discard(stream)
        if not self.streams and self._timer is not None:
            self.service.remove_observer(self._observer)
            if self._timer.running:
                self._timer.stop()
            self._timer = None

    def _tick(self) -> None:
        now = self.clock.seconds()
        update = self._update()
        for stream in list(self.streams):
            if stream.paused_since is not None:
                if now - stream.paused_since >= self.stall_timeout:
                    stream.cut_off(now - stream.paused_since)
                elif update is not None:
                    stream.behind = True
            elif update is not None:
                stream.write(update)
            elif now - stream.last_write >= self.heartbeat:
                stream.write(b": heartbeat\n\n")

    # -- the page ------------------------------------------------------------------------

    def static(self, request: IRequest, name: str) -> bytes:
        """One of `STATIC_FILES`, with its content type and a strict content security policy."""
        request.setHeader(b"Content-Type", STATIC_FILES[name])
        request.setHeader(b"Cache-Control", b"no-cache")
        request.setHeader(b"X-Content-Type-Options", b"nosniff")
        if name.endswith(".html"):
            request.setHeader(b"Content-Security-Policy", CONTENT_SECURITY_POLICY)
            request.setHeader(b"Referrer-Policy", b"no-referrer")
        return self._static[name]


@implementer(IPushProducer)
class _Stream:
    """One open event stream: a push producer that its connection pauses when full."""

    def __init__(self, dashboard: Dashboard, request: IRequest) -> None:
        self.dashboard = dashboard
        self.request = cast(Request, request)
        """The request, as twisted.web's `Request`: a producer needs its connection."""
        self.paused_since: float | None = None
        self.behind = False
        self.last_write = dashboard.clock.seconds()
        self.done: Deferred[bytes] = Deferred(lambda _: self._close())

    def write(self, data: bytes) -> None:
        self.last_write = self.dashboard.clock.seconds()
        self.request.write(data)

    def send_snapshot(self) -> dict[str, Any]:
        self.behind = False
        snapshot = self.dashboard.snapshot()
        self.write(_event("snapshot", snapshot))
        return snapshot

    def cut_off(self, stalled: float) -> None:
        """End a stream whose reader stopped reading, dropping what its connection holds."""
        self.dashboard.log.info(
            "dashboard stream to {peer} cut off: nothing could be sent for {stalled:.1f} s",
            peer=str(self.request.getClientAddress()),
            stalled=stalled,
        )
        self.dashboard.streams_cut_off += 1
        self._close()
        abort = getattr(self.request.transport, "abortConnection", None)  # a TCP transport's
        if abort is not None:
            abort()

    def _close(self) -> None:
        if self in self.dashboard.streams:
            self.dashboard._drop(self)
            if getattr(self.request, "channel", None) is not None:  # still connected
                self.request.unregisterProducer()

    # IPushProducer: called by the connection.

    def pauseProducing(self) -> None:
        if self.paused_since is None:
            self.paused_since = self.dashboard.clock.seconds()

    def resumeProducing(self) -> None:
        self.paused_since = None
        if self.behind and self in self.dashboard.streams:
            self.send_snapshot()

    def stopProducing(self) -> None:
        self._close()


def _event(name: str, data: object) -> bytes:
    """One Server-Sent Event: compact JSON on one data line."""
    body = json.dumps(data, separators=(",", ":"))
    return b"event: %s\ndata: %s\n\n" % (name.encode("ascii"), body.encode("utf-8"))


def _load_static() -> dict[str, bytes]:
    folder = resources.files("numd.http").joinpath("static")
    return {name: folder.joinpath(name).read_bytes() for name in STATIC_FILES}
