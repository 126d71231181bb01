"""Every service's /metrics over real HTTP after real requests through a process stack (tiny
models), and the JSON logs they write (``specd up --metrics-port-base P --log-format json``)."""

from __future__ import annotations

import json
import time

import pytest

from metrics.scrape import Samples, free_port_run, scrape, total
from specd_cli.demo import free_port
from specd_cli.stack import metrics_ports, start_process_stack
from specd_client import InvalidArgumentError, SpecdClient

PROMPTS = ("Why is the sea salty?", "Name three rivers.", "Count: one two three one two three")


@pytest.fixture(scope="module")
def observed(tiny_target, tiny_draft, tmp_path_factory):
    """A stack with metrics and JSON logs, after 4 good requests and 1 refused one; the
    target's metrics scraped while a session was alive."""
    log_dir = tmp_path_factory.mktemp("logs")
    base = free_port_run(3)
    stack = start_process_stack(
        target=str(tiny_target),
        draft_model=str(tiny_draft),
        port=free_port(),
        target_port=free_port(),
        draft_port=free_port(),
        device="cpu",
        log_dir=log_dir,
        timeout=120,
        metrics_port_base=base,
        log_format="json",
    )
    ports = metrics_ports(base)
    urls = {name: f"http://127.0.0.1:{port}/metrics" for name, port in ports.items()}
    results = []
    try:
        with SpecdClient(stack.address, timeout=60) as client:
            events = client.stream(PROMPTS[0], method="pld", max_new_tokens=12, ignore_eos=True)
            first = next(events)
            live = scrape(urls["target"])  # the session holds its KV cache now
            rest = list(events)
            results.append(([first, *rest][-1].stats, first.session_id))
            for prompt, method in zip(PROMPTS[1:], ("sps", "ouroboros"), strict=True):
                r = client.generate(prompt, method=method, max_new_tokens=10, ignore_eos=True)
                results.append((r.stats, r.session_id))
            r = client.generate(PROMPTS[2], method="pld", max_new_tokens=10, ignore_eos=True)
            results.append((r.stats, r.session_id))
            with pytest.raises(InvalidArgumentError):
                client.generate("hi", temperature=-2.0)
        scraped = {name: scrape(url) for name, url in urls.items()}
        cancelled = _cancel_one(stack.address, urls)
    finally:
        stack.stop()
    yield {"live": live, "after": scraped, "results": results, "log_dir": log_dir, "cancelled": cancelled}


def _cancel_one(address: str, urls: dict[str, str]) -> dict[str, Samples]:
    """Stream a long request, drop it after the first chunk; scrape once the server has noticed."""
    with SpecdClient(address, timeout=60) as client:
        events = client.stream(PROMPTS[0], method="pld", max_new_tokens=150, ignore_eos=True)
        next(events)
        events.close()  # cancels the call
    deadline = time.monotonic() + 15
    while True:
        orch = scrape(urls["orchestrator"])
        target = scrape(urls["target"])
        done = any(n == "specd:requests_total" and lab["status"] == "CANCELLED" for n, lab, _ in orch)
        if (done and total(target, "specd:target_sessions") == 0) or time.monotonic() > deadline:
            return {"orchestrator": orch, "target": target}
        time.sleep(0.1)


def test_orchestrator_counts_requests_tokens_and_phases(observed):
    m, results = observed["after"]["orchestrator"], observed["results"]
    stats = [s for s, _ in results]
    assert total(m, "specd:requests_total", status="OK") == len(results) == 4
    assert total(m, "specd:requests_total", method="pld", status="OK") == 2
    assert total(m, "specd:requests_total", status="INVALID_ARGUMENT") == 1
    assert total(m, "specd:requests_running") == 0
    draft = total(m, "specd:spec_decode_num_draft_tokens_total")
    accepted = total(m, "specd:spec_decode_num_accepted_tokens_total")
    assert 0 < accepted <= draft
    assert draft == sum(s.draft_tokens for s in stats)
    assert accepted == sum(s.accepted_tokens for s in stats)
    assert total(m, "specd:spec_decode_num_emitted_tokens_total") == sum(s.new_tokens for s in stats)
    steps = sum(s.target_steps for s in stats)
    assert total(m, "specd:spec_decode_num_drafts_total") == steps
    assert total(m, "specd:spec_decode_acceptance_length_count") == steps
    assert total(m, "specd:spec_decode_acceptance_length_sum") == accepted
    assert total(m, "specd:spec_decode_tau_count") == 4
    for phase in ("prefill", "draft", "verify", "network", "orchestrate"):
        assert total(m, "specd:request_phase_seconds_count", phase=phase) == 4
    assert total(m, "specd:request_phase_seconds_sum", phase="verify") > 0
    assert total(m, "specd:time_to_first_token_seconds_count") == 4
    assert total(m, "specd:request_duration_seconds_count") == 5  # the refused one too
    assert total(m, "specd:inter_token_latency_seconds_count", method="pld") > 0
    # the tree budget's step cost, fitted on the speculative steps of each method
    pld_steps = sum(s.target_steps for s, _ in (results[0], results[3]))
    assert total(m, "specd:tree_budget_steps", method="pld@target") == pld_steps  # pld drafts in the target
    assert total(m, "specd:tree_budget_step_seconds", method="pld@target", term="base") > 0
    assert total(m, "specd:tree_budget_step_seconds", method="pld@target", term="per_row") >= 0


def test_target_counts_calls_passes_sessions_and_kv(observed):
    live, m = observed["live"], observed["after"]["target"]
    stats = [s for s, _ in observed["results"]]
    assert total(live, "specd:target_sessions") >= 1
    assert total(live, "specd:target_kv_cache_bytes") > 0
    assert total(m, "specd:target_sessions") == 0  # every session released
    assert total(m, "specd:target_kv_cache_bytes") == 0
    steps = sum(s.target_steps for s in stats)
    assert total(m, "specd:target_calls_total", call="verify", status="OK") == steps
    assert total(m, "specd:target_calls_total", call="prefill", status="OK") == 4
    assert total(m, "specd:target_verify_served_total") == steps
    passes = total(m, "specd:target_forward_passes_total")
    assert 0 < passes <= steps
    assert total(m, "specd:target_batch_size_count") == passes
    assert total(m, "specd:target_batch_size_sum") == steps
    assert total(m, "specd:target_call_seconds_count", call="verify") == steps
    assert total(m, "specd:target_verified_draft_tokens_total") == sum(s.draft_tokens for s in stats)
    assert total(m, "specd:target_prefill_chunks_total") >= 4  # each of the 4 prompts in one chunk at least
    assert 0 <= total(m, "specd:target_mixed_passes_total") <= passes
    assert total(m, "specd:target_prefix_cache_tokens_total") >= 3 * 24  # the chat template's system prompt, reused
    # the tiny target's LM head is random fp32, not int8 codes: no argmax screen, counters at 0
    assert total(m, "specd:target_argmax_screen_rows_total") == 0
    assert total(m, "specd:target_argmax_screen_fallbacks_total") == 0


def test_draft_counts_proposals_and_phrase_store(observed):
    m, orch = observed["after"]["draft"], observed["after"]["orchestrator"]
    assert total(m, "specd:draft_calls_total", call="propose", status="OK") > 0
    assert total(m, "specd:draft_calls_total", drafter="model", status="OK") > 0
    # one drafter, no failover: every node it proposed went to the target; pld drafts in the target
    # (its default placement), so only the sps and ouroboros requests' nodes came from the drafter
    stats = [s.draft_tokens for s, _ in observed["results"]]  # pld, sps, ouroboros, pld
    assert total(m, "specd:draft_proposed_tokens_total") == stats[1] + stats[2] > 0
    assert total(orch, "specd:spec_decode_num_draft_tokens_total") == sum(stats)
    assert total(m, "specd:draft_sessions") == 0
    lookups, hits = total(m, "specd:phrase_store_lookups_total"), total(m, "specd:phrase_store_hits_total")
    assert lookups > 0 and 0 <= hits <= lookups
    assert total(m, "specd:phrase_store_added_total") > 0
    assert total(m, "specd:phrase_store_phrases") > 0


def test_json_logs_parse_and_carry_the_session(observed):
    log_dir = observed["log_dir"]
    for name in ("target", "draft", "orchestrator"):
        entries = [
            json.loads(line) for line in (log_dir / f"{name}.log").read_text().splitlines() if line.startswith("{")
        ]
        assert entries, name
        for entry in entries:
            assert {"ts", "level", "logger", "message"} <= entry.keys()
    lines = (log_dir / "orchestrator.log").read_text().splitlines()
    entries = [json.loads(line) for line in lines if line.startswith("{")]
    done = {e["session"]: e["message"] for e in entries if "session" in e and e["message"].startswith("request ")}
    for _, session_id in observed["results"]:
        assert session_id in done
        assert done[session_id].startswith("request OK")
    assert any(m.startswith("request INVALID_ARGUMENT") for m in (e["message"] for e in entries))


def test_a_cancelled_stream_is_counted_and_frees_its_session(observed):
    orch, target = observed["cancelled"]["orchestrator"], observed["cancelled"]["target"]
    assert total(orch, "specd:requests_total", status="CANCELLED") == 1
    assert total(orch, "specd:requests_total", status="OK") == 4
    assert total(orch, "specd:requests_running") == 0
    assert total(target, "specd:target_sessions") == 0
    assert total(target, "specd:target_kv_cache_bytes") == 0
