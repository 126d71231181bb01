"""The pieces of specd_metrics on their own: the endpoint's life cycle, histograms built from
counts, JSON log lines with the session id."""

from __future__ import annotations

import io
import json
import logging
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.registry import Collector

from metrics.scrape import free_port_run, scrape, total
from spec_decode.errors import InvalidArgument
from specd_metrics.logs import JsonFormatter, configure_logging, session_context
from specd_metrics.server import start_metrics_server
from specd_metrics.services import histogram_family, status_of


def test_port_zero_is_off_and_a_bad_port_is_refused():
    assert start_metrics_server(CollectorRegistry(), "127.0.0.1", 0) is None
    with pytest.raises(ValueError, match="65535"):
        start_metrics_server(CollectorRegistry(), "127.0.0.1", 70000)


def test_endpoint_serves_its_own_registry_and_stops():
    registry = CollectorRegistry()
    Counter("specd:unit_things", "things", registry=registry).inc(3)
    server = start_metrics_server(registry, "127.0.0.1", free_port_run(1))
    assert server is not None
    samples = scrape(server.url)
    assert total(samples, "specd:unit_things_total") == 3
    assert not any(name.startswith(("python_", "process_")) for name, _, _ in samples)  # not the global registry
    server.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(server.url, timeout=2)


def test_histogram_from_counts_is_cumulative():
    class Sizes(Collector):
        def collect(self):
            yield histogram_family("specd:unit_batch", "sizes", {1: 5, 3: 2, 300: 1}, (1, 2, 4))

    registry = CollectorRegistry()
    registry.register(Sizes())
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    text = generate_latest(registry).decode()
    samples = [s for fam in text_string_to_metric_families(text) for s in fam.samples]
    buckets = {s.labels["le"]: s.value for s in samples if s.name == "specd:unit_batch_bucket"}
    assert buckets == {"1.0": 5, "2.0": 5, "4.0": 7, "+Inf": 8}
    assert next(s.value for s in samples if s.name == "specd:unit_batch_sum") == 5 + 6 + 300
    assert next(s.value for s in samples if s.name == "specd:unit_batch_count") == 8


def test_status_names():
    assert status_of(None) == "OK"
    assert status_of(InvalidArgument("x")) == "INVALID_ARGUMENT"
    assert status_of(GeneratorExit()) == "CANCELLED"
    assert status_of(RuntimeError("boom")) == "INTERNAL"


def test_json_lines_carry_the_session_inside_its_context_only():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    log = logging.getLogger("specd.unit")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    try:
        with session_context("abc123"):
            log.info("inside %d", 1)
        log.info("outside")
        log.info("explicit", extra={"session": "zz9"})
    finally:
        log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["message"], e.get("session")) for e in lines] == [
        ("inside 1", "abc123"),
        ("outside", None),
        ("explicit", "zz9"),
    ]
    assert all({"ts", "level", "logger"} <= e.keys() and e["logger"] == "specd.unit" for e in lines)


def test_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="text, json"):
        configure_logging("xml")
