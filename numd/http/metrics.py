"""Prometheus metrics for numd, read from live state on the reactor thread.

prometheus-client's own Twisted resource (``MetricsResource``) renders in a thread
pool, where reading the service's dict and `SortedList` would race the reactor.
Here a custom collector reads the state only when `Metrics.render` is called, and
the API calls it from a Klein route, that is on the reactor thread. The registry
is private to each `Metrics`, so nothing is shared with prometheus-client's
global registry (and two daemons in one test process do not collide).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.registry import Collector

from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
"""The Content-Type of `Metrics.render`'s output: the Prometheus text format 0.0.4."""


MetricValue = tuple[str, str, str, float]
"""One value of a source added with `Metrics.add_values`: kind (``gauge`` or ``counter``),
name, help text, value."""


class Metrics:
    """The daemon's metrics: service state, protocol counters and HTTP requests.

    `http_requests` is filled by the HTTP API, keyed by ``(route, status)`` where
    route is the route's URL pattern (never the raw path, which would make the
    number of series unbounded).
    """

    def __init__(self, service: NumberService, message_log: MessageLog | None = None) -> None:
        self.service = service
        self.message_log = message_log
        self.http_requests: Counter[tuple[str, int]] = Counter()
        self._stats: dict[str, Stats] = {}
        self._sources: list[Callable[[], Iterable[MetricValue]]] = []
        self._registry = CollectorRegistry(auto_describe=False)
        self._registry.register(_NumdCollector(self))

    def add_values(self, source: Callable[[], Iterable[MetricValue]]) -> None:
        """Export the values `source` returns at each scrape (e.g. the shared state's)."""
        self._sources.append(source)

    def add_stats(self, protocol: str, stats: Stats) -> None:
        """Export `stats` (messages, errors, connections) with ``protocol=<protocol>``."""
        self._stats[protocol] = stats

    def render(self) -> bytes:
        """The exposition text. Call it on the reactor thread only."""
        return generate_latest(self._registry)


_PROTOCOL_FAMILIES = (
    (
        "numd_messages_received",
        "Messages received, by protocol and kind.",
        "kind",
        "received",
    ),
    ("numd_messages_sent", "Messages sent, by protocol and kind.", "kind", "sent"),
    (
        "numd_protocol_errors",
        "Protocol errors, by protocol and reason.",
        "reason",
        "errors",
    ),
    (
        "numd_connection_events",
        "Connection events (opened, closed, ...), by protocol.",
        "event",
        "connections",
    ),
)
"""Counter families read from each protocol's `Stats`: name, help, label, attribute."""


class _NumdCollector(Collector):
    """Builds metric families from the live objects at every scrape."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        metrics = self._metrics
        service = metrics.service

        yield GaugeMetricFamily(
            "numd_clients_connected",
            "Registered clients with a live counter connection.",
            value=service.connected_count,
        )
        yield GaugeMetricFamily(
            "numd_clients_registered",
            "Client IDs in the registry, connected or not.",
            value=service.known_count,
        )
        yield GaugeMetricFamily(
            "numd_list_size",
            "Values in the shared sorted list.",
            value=service.list_size,
        )

        for name, documentation, label, attribute in _PROTOCOL_FAMILIES:
            family = CounterMetricFamily(name, documentation, labels=["protocol", label])
            for protocol, stats in sorted(metrics._stats.items()):
                counts: Counter[str] = getattr(stats, attribute)
                for key, count in sorted(counts.items()):
                    family.add_metric([protocol, key], count)
            yield family

        http = CounterMetricFamily(
            "numd_http_requests",
            "HTTP requests answered, by route pattern and status code.",
            labels=["route", "status"],
        )
        for (route, status), count in sorted(metrics.http_requests.items()):
            http.add_metric([route, str(status)], count)
        yield http

        for source in metrics._sources:
            for kind, name, documentation, value in source():
                if kind == "gauge":
                    yield GaugeMetricFamily(name, documentation, value=value)
                else:
                    yield CounterMetricFamily(name, documentation, value=value)

        message_log = metrics.message_log
        if message_log is not None:
            yield GaugeMetricFamily(
                "numd_message_log_writable",
                "1 while the message log file can be written, else 0.",
                value=1 if message_log.writable else 0,
            )
            yield CounterMetricFamily(
                "numd_message_log_records_written",
                "Message log records written to the file.",
                value=message_log.written,
            )
            yield CounterMetricFamily(
                "numd_message_log_records_dropped",
                "Message log records lost because the file could not be written.",
                value=message_log.dropped,
            )
