"""Prometheus metrics: live values, label sets, a private registry, rendering on the calling thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from numd.http.metrics import Metrics
from numd.messagelog import MessageLog
from numd.service import NumberService
from numd.stats import Stats


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape, parsed back by prometheus-client's own parser."""
    text = metrics.render().decode("utf-8")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


@pytest.fixture
def service() -> NumberService:
    """A state service on a fake clock."""
    return NumberService(Clock())


def test_state_gauges_follow_the_service(service: NumberService) -> None:
    """Connected and registered clients and the list size are read at each scrape."""
    metrics = Metrics(service)
    before = samples(metrics)
    assert before[("numd_clients_connected", ())] == 0
    assert before[("numd_list_size", ())] == 0
    service.register(1)
    service.register(2)
    service.disconnect(2)
    service.merge([4, 4, 9])
    after = samples(metrics)
    assert after[("numd_clients_connected", ())] == 1
    assert after[("numd_clients_registered", ())] == 2
    assert after[("numd_list_size", ())] == 3


def test_protocol_counters_by_protocol_and_kind(service: NumberService) -> None:
    """Messages by kind, errors by reason and connection events are labelled with their protocol."""
    counter, legacy = Stats(), Stats()
    counter.received["even"] += 3
    counter.sent["even"] += 3
    counter.errors["bad-token"] += 2
    counter.connections["opened"] += 1
    legacy.received["array"] += 5
    legacy.errors["not-list"] += 1
    metrics = Metrics(service)
    metrics.add_stats("counter", counter)
    metrics.add_stats("legacy-array", legacy)
    got = samples(metrics)
    assert (
        got[
            (
                "numd_messages_received_total",
                (("kind", "even"), ("protocol", "counter")),
            )
        ]
        == 3
    )
    assert got[("numd_messages_sent_total", (("kind", "even"), ("protocol", "counter")))] == 3
    assert (
        got[
            (
                "numd_protocol_errors_total",
                (("protocol", "counter"), ("reason", "bad-token")),
            )
        ]
        == 2
    )
    assert (
        got[
            (
                "numd_connection_events_total",
                (("event", "opened"), ("protocol", "counter")),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "numd_messages_received_total",
                (("kind", "array"), ("protocol", "legacy-array")),
            )
        ]
        == 5
    )
    assert (
        got[
            (
                "numd_protocol_errors_total",
                (("protocol", "legacy-array"), ("reason", "not-list")),
            )
        ]
        == 1
    )
    counter.received["even"] += 1
    assert (
        samples(metrics)[
            (
                "numd_messages_received_total",
                (("kind", "even"), ("protocol", "counter")),
            )
        ]
        == 4
    )


def test_http_requests_by_route_and_status(service: NumberService) -> None:
    """HTTP requests are exported with their route pattern and status."""
    metrics = Metrics(service)
    metrics.http_requests[("/api/v1/values", 200)] += 7
    metrics.http_requests[("/api/v1/clients/{client_id}", 404)] += 1
    got = samples(metrics)
    assert (
        got[
            (
                "numd_http_requests_total",
                (("route", "/api/v1/values"), ("status", "200")),
            )
        ]
        == 7
    )
    assert (
        got[
            (
                "numd_http_requests_total",
                (("route", "/api/v1/clients/{client_id}"), ("status", "404")),
            )
        ]
        == 1
    )


def test_message_log_metrics(service: NumberService, tmp_path: Path) -> None:
    """The message log's health and counts are exported when there is one."""
    log = MessageLog(str(tmp_path / "m.log"), Clock())
    metrics = Metrics(service, log)
    log.written, log.dropped, log.writable = 10, 2, False
    got = samples(metrics)
    assert got[("numd_message_log_writable", ())] == 0
    assert got[("numd_message_log_records_written_total", ())] == 10
    assert got[("numd_message_log_records_dropped_total", ())] == 2
    assert ("numd_message_log_writable", ()) not in samples(Metrics(service))


def test_registry_is_private(service: NumberService) -> None:
    """Nothing is registered in prometheus-client's global registry; two daemons do not collide."""
    first, second = Metrics(service), Metrics(NumberService(Clock()))
    service.merge([1])
    assert samples(first)[("numd_list_size", ())] == 1
    assert samples(second)[("numd_list_size", ())] == 0
    assert REGISTRY.get_sample_value("numd_list_size") is None


def test_render_reads_on_the_calling_thread(
    service: NumberService, monkeypatch: pytest.MonkeyPatch
) -> None:
    """State is read in the thread that calls render (the reactor thread for the route), no other."""
    readers: list[threading.Thread] = []
    real = NumberService.connected_count

    def spy(self: NumberService) -> int:
        readers.append(threading.current_thread())
        return real.fget(self)  # type: ignore[attr-defined,no-any-return]

    monkeypatch.setattr(NumberService, "connected_count", property(spy))
    Metrics(service).render()
    assert readers == [threading.current_thread()]
