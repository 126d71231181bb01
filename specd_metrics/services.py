"""The metric sets of the three services (names in the style of vLLM's ``vllm:spec_decode_*``).

Each set registers on the ``CollectorRegistry`` it is given. Call-level metrics (counts by
status, latencies) are recorded by the thin servicers; state that lives in domain objects
(sessions, KV bytes, forward passes, batch sizes, phrase-store hits) is read by a collector at
scrape time, so domain code keeps plain counters and never imports prometheus_client.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from spec_decode.errors import SpecdError
from spec_decode.types import GenerationStats

log = logging.getLogger(__name__)

PREFIX = "specd:"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0)
ACCEPT_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 16, 24, 32)
TAU_BUCKETS = (1.0, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0, 8.0)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
PHASES = ("prefill", "draft", "verify", "network", "orchestrate")
# Label values come from requests: anything else is counted as "other" (bounded cardinality).
METHOD_LABELS = frozenset(
    {"vanilla", "pld", "sps", "ouroboros", "redrafter", "hybrid", "beam-sample", "dsbd", "dsbd-redrafter"}
)
DRAFTER_LABELS = frozenset({"prompt_lookup", "model", "ouroboros"})


def _label(value: str, known: frozenset[str]) -> str:
    return value if value in known else "other"


def status_of(err: BaseException | None) -> str:
    """The gRPC status name an outcome is counted under: OK, a domain error's code, or INTERNAL."""
    if err is None:
        return "OK"
    if isinstance(err, GeneratorExit):
        return "CANCELLED"
    return err.code if isinstance(err, SpecdError) else "INTERNAL"


# ------------------------------------------------------------------ orchestrator


class OrchestratorMetrics:
    """Requests, latencies and the speculative-decoding counters of the front door."""

    def __init__(self, registry: CollectorRegistry, budgets: BudgetSource | None = None) -> None:
        p, r = PREFIX, registry
        if budgets is not None:
            registry.register(_BudgetCollector(budgets))
        self.requests = Counter(p + "requests", "Generation requests finished", ["method", "status"], registry=r)
        self.running = Gauge(p + "requests_running", "Generation requests in progress", registry=r)
        self.duration = Histogram(
            p + "request_duration_seconds", "Request wall time", ["method"], buckets=REQUEST_BUCKETS, registry=r
        )
        self.ttft = Histogram(
            p + "time_to_first_token_seconds", "Time to the first generated token", ["method"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.itl = Histogram(
            p + "inter_token_latency_seconds",
            "Gap between streamed chunks divided by the tokens the later one carries (one sample per token)",
            ["method"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.prompt_tokens = Counter(p + "prompt_tokens", "Prompt tokens of finished requests", ["method"], registry=r)
        self.num_drafts = Counter(
            p + "spec_decode_num_drafts", "Verify steps (target passes after prefill)", ["method"], registry=r
        )
        self.draft_tokens = Counter(
            p + "spec_decode_num_draft_tokens", "Draft tokens sent to the target", ["method"], registry=r
        )
        self.accepted_tokens = Counter(
            p + "spec_decode_num_accepted_tokens", "Draft tokens the target accepted", ["method"], registry=r
        )
        self.emitted_tokens = Counter(
            p + "spec_decode_num_emitted_tokens", "Tokens generated (accepted + recovered/bonus)", ["method"],
            registry=r,
        )  # fmt: skip
        self.acceptance_length = Histogram(
            p + "spec_decode_acceptance_length", "Draft tokens accepted per verify step", ["method"],
            buckets=ACCEPT_BUCKETS, registry=r,
        )  # fmt: skip
        self.tau = Histogram(
            p + "spec_decode_tau", "Per-request τ: tokens generated per target step", ["method"],
            buckets=TAU_BUCKETS, registry=r,
        )  # fmt: skip
        self.phase = Histogram(
            p + "request_phase_seconds", "Seconds one request spent in each phase of the decode loop", ["phase"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.drafter_switches = Counter(
            p + "drafter_switches", "Sessions moved to another draft replica (failover, rebalance)", registry=r
        )
        self.draft_timeouts = Counter(
            p + "draft_timeouts", "Draft calls past --draft-timeout-ms (the step went target-only)", registry=r
        )
        self.target_rebuilds = Counter(
            p + "target_rebuilds", "Target sessions evicted mid-request and prefilled again", registry=r
        )

    def track(self, method: str) -> RequestTracker:
        return RequestTracker(self, method)

    def record_stats(self, method: str, stats: GenerationStats) -> None:
        """Count a finished request's :class:`GenerationStats`."""
        self.prompt_tokens.labels(method).inc(stats.prompt_tokens)
        self.num_drafts.labels(method).inc(stats.target_steps)
        self.draft_tokens.labels(method).inc(stats.draft_tokens)
        self.accepted_tokens.labels(method).inc(stats.accepted_tokens)
        self.emitted_tokens.labels(method).inc(stats.new_tokens)
        hist = self.acceptance_length.labels(method)
        for accepted, steps in enumerate(stats.accepted_length_histogram):
            for _ in range(steps):
                hist.observe(accepted)
        if stats.target_steps:
            self.tau.labels(method).observe(stats.tau)
        for phase in PHASES:
            self.phase.labels(phase).observe(getattr(stats.phases, f"{phase}_s"))
        self.drafter_switches.inc(stats.drafter_switches)
        self.draft_timeouts.inc(stats.draft_timeouts)
        self.target_rebuilds.inc(stats.target_rebuilds)


class BudgetSource(Protocol):
    """What the tree-budget gauges read: per method, the fitted step cost ``(a, b, steps)``."""

    def budget_snapshot(self) -> Mapping[str, tuple[float, float, int]]: ...


class _BudgetCollector(Collector):
    """The tree budget's fitted step cost per method (``Orchestrator.budget_snapshot``)."""

    def __init__(self, source: BudgetSource) -> None:
        self._source = source

    def collect(self) -> Iterator[Metric]:
        p = PREFIX
        cost = GaugeMetricFamily(
            p + "tree_budget_step_seconds",
            "Fitted wall time of a decode step: base + per_row * rows of its verify pass (tree budget cost model)",
            labels=["method", "term"],
        )
        steps = GaugeMetricFamily(
            p + "tree_budget_steps", "Decode steps the tree budget's step cost was fitted on", labels=["method"]
        )
        # Methods outside METHOD_LABELS share the label "other": one series per label, from the
        # method fitted on the most steps (a label may appear once per family).
        fits: dict[str, tuple[float, float, int]] = {}
        for key, fit in self._source.budget_snapshot().items():
            method = key.removesuffix("@target")
            label = _label(method, METHOD_LABELS) + ("@target" if key.endswith("@target") else "")
            if label not in fits or fit[2] > fits[label][2]:
                fits[label] = fit
        for label, (base, per_row, n) in sorted(fits.items()):
            cost.add_metric([label, "base"], base)
            cost.add_metric([label, "per_row"], per_row)
            steps.add_metric([label], n)
        yield cost
        yield steps


class RequestTracker:
    """One request seen by the orchestrator's servicer: chunks as they stream, then the outcome.

    Works without metrics (``metrics=None``): it still writes the one access-log line per request.
    """

    def __init__(self, metrics: OrchestratorMetrics | None, method: str) -> None:
        self._metrics = metrics
        self.method = _label(method or "vanilla", METHOD_LABELS)
        self.session_id = ""
        self._start = self._last = time.perf_counter()
        self._tokens = 0
        self._stats: GenerationStats | None = None
        if metrics is not None:
            metrics.running.inc()

    def chunk(self, num_tokens: int, session_id: str = "", stats: GenerationStats | None = None) -> None:
        """A chunk is about to be sent: ``num_tokens`` new tokens (the final one carries ``stats``)."""
        now = time.perf_counter()
        self.session_id = session_id or self.session_id
        if num_tokens and self._metrics is not None:
            if self._tokens == 0:
                self._metrics.ttft.labels(self.method).observe(now - self._start)
            else:
                gap = self.itl_sample(now - self._last, num_tokens)
                hist = self._metrics.itl.labels(self.method)
                for _ in range(num_tokens):
                    hist.observe(gap)
        if num_tokens:
            self._tokens += num_tokens
            self._last = now
        if stats is not None:
            self._stats = stats

    @staticmethod
    def itl_sample(gap_s: float, num_tokens: int) -> float:
        return gap_s / max(1, num_tokens)

    def done(self, err: BaseException | None = None) -> None:
        """The request ended: ``err`` is the exception that ended it (None: success)."""
        status = status_of(err)
        wall = time.perf_counter() - self._start
        m = self._metrics
        if m is not None:
            m.running.dec()
            m.requests.labels(self.method, status).inc()
            m.duration.labels(self.method).observe(wall)
            if self._stats is not None:
                m.record_stats(self.method, self._stats)
        tau = f", τ {self._stats.tau:.2f}" if self._stats is not None else ""
        log.info(
            "request %s: method %s, %d tokens in %.3f s%s",
            status, self.method, self._tokens, wall, tau,
            extra={"session": self.session_id} if self.session_id else None,
        )  # fmt: skip


# ------------------------------------------------------------------ target


class TargetMetrics:
    """Calls by status and latency (servicer), plus sessions, KV bytes, forward passes and batch
    sizes read from the verifier at scrape time."""

    def __init__(self, registry: CollectorRegistry, target: TargetStatsSource) -> None:
        p, r = PREFIX, registry
        self.calls = Counter(p + "target_calls", "Target RPCs served", ["call", "status"], registry=r)
        self.latency = Histogram(
            p + "target_call_seconds", "Target RPC time inside the servicer", ["call"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.verify_nodes = Counter(p + "target_verified_draft_tokens", "Draft tree nodes verified", registry=r)
        registry.register(_TargetCollector(target))

    def observe(self, call: str, start: float, err: BaseException | None) -> None:
        self.calls.labels(call, status_of(err)).inc()
        self.latency.labels(call).observe(time.perf_counter() - start)


class TargetStatsSource(Protocol):
    """What the target collector reads: ``TargetVerifier.stats()``, a ``TargetStats`` snapshot
    (active_sessions, kv_bytes, forward_passes, verify_calls, batch_sizes, evictions, prefill_chunks,
    mixed_passes)."""

    def stats(self) -> Any: ...


class _TargetCollector(Collector):
    def __init__(self, target: TargetStatsSource) -> None:
        self._target = target

    def collect(self) -> Iterator[Metric]:
        st = self._target.stats()
        p = PREFIX
        yield GaugeMetricFamily(p + "target_sessions", "Target sessions holding a KV cache", value=st.active_sessions)
        yield GaugeMetricFamily(p + "target_kv_cache_bytes", "Bytes of all sessions' KV caches", value=st.kv_bytes)
        yield CounterMetricFamily(
            p + "target_forward_passes", "Verify forward passes (a batch counts once)", value=st.forward_passes
        )
        yield CounterMetricFamily(
            p + "target_verify_served", "Verify calls served by those passes", value=st.verify_calls
        )
        yield CounterMetricFamily(p + "target_evictions", "Sessions evicted (LRU, caps)", value=st.evictions)
        counters = (
            ("target_prefill_chunks", "Prompt chunks fed (k passes for one prompt count k)", st.prefill_chunks),
            ("target_mixed_passes", "Verify passes that also fed a prompt chunk", st.mixed_passes),
            ("target_prefix_cache_tokens", "Prompt tokens whose KV came from the prefix cache", st.prefix_cache_tokens),
            ("target_argmax_screen_rows", "Greedy rows whose argmax came from the int8 screen", st.screen_rows),
            ("target_argmax_screen_candidates", "Logits the screen rescored exactly", st.screen_candidates),
            ("target_argmax_screen_fallbacks", "Screened rows that needed the full LM head", st.screen_fallbacks),
        )
        for name, doc, value in counters:
            yield CounterMetricFamily(p + name, doc, value=value)
        yield GaugeMetricFamily(
            p + "target_prefix_cache_bytes", "KV memory the prefix cache holds", value=st.prefix_cache_bytes
        )
        yield histogram_family(p + "target_batch_size", "Verify calls per forward pass", st.batch_sizes, SIZE_BUCKETS)


def histogram_family(name: str, doc: str, counts: Mapping[int, int], buckets: Iterable[float]) -> HistogramMetricFamily:
    """A Prometheus histogram from ``{value: times seen}`` (cumulative buckets, sum of values)."""
    edges = sorted(buckets)
    cumulative = [(str(float(edge)), float(sum(c for v, c in counts.items() if v <= edge))) for edge in edges]
    cumulative.append(("+Inf", float(sum(counts.values()))))
    total = float(sum(v * c for v, c in counts.items()))
    return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=total)


# ------------------------------------------------------------------ draft


class DraftStatsSource(Protocol):
    """What the draft collector reads (``DraftWorker``)."""

    def info(self) -> Any: ...

    def phrase_store_stats(self) -> Mapping[str, Any]: ...


class DraftMetrics:
    """Propose calls, latency and tokens (servicer), plus sessions and phrase-store lookups and
    hits read from the worker's stores at scrape time."""

    def __init__(self, registry: CollectorRegistry, worker: DraftStatsSource) -> None:
        p, r = PREFIX, registry
        self.calls = Counter(p + "draft_calls", "Draft RPCs served", ["call", "drafter", "status"], registry=r)
        self.latency = Histogram(
            p + "draft_propose_seconds", "Propose time inside the servicer", ["drafter"],
            buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.proposed = Counter(p + "draft_proposed_tokens", "Draft tree nodes proposed", ["drafter"], registry=r)
        registry.register(_DraftCollector(worker))

    def observe_propose(self, drafter: str, start: float, nodes: int, err: BaseException | None) -> None:
        drafter = _label(drafter, DRAFTER_LABELS)
        self.calls.labels("propose", drafter, status_of(err)).inc()
        self.latency.labels(drafter).observe(time.perf_counter() - start)
        if err is None:
            self.proposed.labels(drafter).inc(nodes)

    def observe(self, call: str, err: BaseException | None) -> None:
        self.calls.labels(call, "", status_of(err)).inc()


class _DraftCollector(Collector):
    def __init__(self, worker: DraftStatsSource) -> None:
        self._worker = worker

    def collect(self) -> Iterator[Metric]:
        p = PREFIX
        yield GaugeMetricFamily(p + "draft_sessions", "Draft sessions held", value=self._worker.info().active_sessions)
        ns_label = ["namespace"]
        lookups = CounterMetricFamily(
            p + "phrase_store_lookups", "Key tokens looked up in the phrase pool", labels=ns_label
        )
        hits = CounterMetricFamily(p + "phrase_store_hits", "Lookups that found at least one phrase", labels=ns_label)
        added = CounterMetricFamily(p + "phrase_store_added", "Phrases written to the pool", labels=ns_label)
        errors = CounterMetricFamily(
            p + "phrase_store_errors", "Pool operations that failed soft (backend down)", labels=ns_label
        )
        phrases = GaugeMetricFamily(p + "phrase_store_phrases", "Phrases in the pool (all replicas)", labels=ns_label)
        for namespace, st in self._worker.phrase_store_stats().items():
            ns = [namespace[:12]]
            lookups.add_metric(ns, st.hits + st.misses)
            hits.add_metric(ns, st.hits)
            added.add_metric(ns, st.added)
            errors.add_metric(ns, st.errors)
            if st.phrases is not None:
                phrases.add_metric(ns, st.phrases)
        yield from (lookups, hits, added, errors, phrases)
