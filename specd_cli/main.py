"""``specd`` — run the services, the local stack, generate text, benchmark.

Flags and environment variables are read here only; everything below gets typed configs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from draft_service.train_prompts import KINDS as PROMPT_KINDS
from spec_decode.budget import TREE_BUDGETS
from spec_decode.types import HEAD_TREES

DEFAULT_PORT = 50051


def _add_model_flags(p: argparse.ArgumentParser, *, draft: bool = True) -> None:
    p.add_argument("--target", default="smollm2", help="target model: 'smollm2', a HF directory or a .gguf file")
    if draft:
        p.add_argument("--draft-model", default=None, help="draft LM (same tokenizer as the target) for 'sps'")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: CUDA when present)")
    p.add_argument("--dtype", default=None, help="float32 | bfloat16 | float16 (default: fp32 on CPU, bf16 on CUDA)")


def _add_limit_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-sessions", type=int, default=64, help="KV-cache sessions held at once (LRU eviction)")
    p.add_argument("--max-tree-nodes", type=int, default=64, help="largest draft tree verified in one pass")
    p.add_argument("--max-context", type=int, default=2048, help="tokens per session (prompt + output)")
    p.add_argument(
        "--max-kv-mb", type=int, default=0, help="KV memory budget over all sessions in MiB (0 = none; LRU eviction)"
    )
    p.add_argument(
        "--max-batch", type=int, default=16, help="verify calls of different sessions per forward pass (1 = off)"
    )
    p.add_argument(
        "--batch-window-ms",
        type=float,
        default=10.0,
        help="longest wait for recently active sessions to join a verify batch",
    )
    p.add_argument(
        "--prefill-chunk",
        type=int,
        default=128,
        help="prompt tokens fed per forward pass, beside the verify calls of other sessions (0 = a whole "
        "prompt per pass)",
    )
    p.add_argument(
        "--prefix-cache-mb",
        type=int,
        default=64,
        help="MiB of keys/values of prompt prefixes kept for later prompts that start the same way (a "
        "system prompt, earlier turns); 0 = off",
    )
    p.add_argument("--engine", default="auto", help="target engine: auto | native (specd's Llama-family) | hf")
    p.add_argument(
        "--weight-format",
        default=None,
        help="native engine weights: auto | dense | packed (MKL fp32) | q8 (exact int8) | "
        "q8a8 (int8 activations too: changes outputs vs fp32)",
    )
    p.add_argument(
        "--cuda-graphs",
        default="auto",
        choices=("auto", "on", "off"),
        help="native engine on CUDA: replay one-session passes as CUDA graphs (auto = on for CUDA devices)",
    )
    p.add_argument(
        "--argmax-screen",
        default="on",
        choices=("on", "off"),
        help="native engine with a q8 LM head: greedy verification takes each row's exact argmax from an "
        "int8 screen plus a few exact rescored logits instead of the full LM head (same tokens; off = full head)",
    )


def _add_server_flags(p: argparse.ArgumentParser, port: int) -> None:
    p.add_argument("--host", default="127.0.0.1", help="bind address (loopback by default)")
    p.add_argument("--port", type=int, default=port)
    p.add_argument("--tls-cert", default=None, help="serve TLS with this PEM certificate chain (needs --tls-key)")
    p.add_argument("--tls-key", default=None, help="the PEM private key of --tls-cert")
    p.add_argument(
        "--tls-client-ca",
        default=None,
        help="mutual TLS: refuse callers without a client certificate signed by this CA "
        "(specd up: target and draft only; the front door keeps TLS + API key)",
    )


def _add_observability_flags(p: argparse.ArgumentParser, *, base: bool = False) -> None:
    if base:
        p.add_argument(
            "--metrics-port-base",
            type=int,
            default=0,
            help="Prometheus /metrics ports: target P, drafters P+1.., orchestrator last (0 = off)",
        )
    else:
        p.add_argument("--metrics-port", type=int, default=0, help="serve Prometheus text at /metrics here (0 = off)")
    p.add_argument("--log-format", choices=("text", "json"), default="text", help="log lines as text or JSON objects")


def _metrics_server(args: argparse.Namespace, registry: Any) -> Any:
    from specd_metrics.server import start_metrics_server

    server = start_metrics_server(registry, args.host, args.metrics_port)
    if server is not None:
        print(f"metrics on {server.url}", flush=True)
    return server


def _add_peer_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--peer-ca", default=None, help="TLS to target/draft: the CA that signed their certificates")
    p.add_argument("--peer-cert", default=None, help="mutual TLS to target/draft: this orchestrator's certificate")
    p.add_argument("--peer-key", default=None, help="the PEM private key of --peer-cert")


def _add_auth_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-key-file",
        default=None,
        help="require 'authorization: Bearer KEY' on every call; one key per line, '#' comments, "
        "re-read when it changes (a mounted Kubernetes Secret works)",
    )
    p.add_argument("--rate-limit", type=float, default=0.0, help="requests/s allowed per API key (0 = no limit)")
    p.add_argument("--rate-burst", type=int, default=0, help="requests an API key may send at once (0 = rate)")


def _server_tls(args: argparse.Namespace) -> Any:
    from protos.security import tls_from_flags

    return tls_from_flags(args.tls_cert, args.tls_key, args.tls_client_ca)


def _phrase_store_url(args: argparse.Namespace) -> str | None:
    """``--phrase-store`` with the password of ``--phrase-store-password-file`` put in."""
    if args.phrase_store_password_file is None:
        return args.phrase_store
    from phrase_store.redis_store import url_with_password
    from protos.security import read_secret

    if not args.phrase_store:
        raise SystemExit("specd: error: --phrase-store-password-file needs a --phrase-store redis:// URL")
    return url_with_password(args.phrase_store, read_secret(args.phrase_store_password_file, "Redis password"))


def _target_config(args: argparse.Namespace) -> Any:
    from target_service.verifier import TargetConfig

    return TargetConfig(
        model=args.target,
        device=args.device,
        dtype=args.dtype,
        max_sessions=args.max_sessions,
        max_tree_nodes=args.max_tree_nodes,
        max_context=args.max_context,
        max_kv_bytes=args.max_kv_mb * 2**20,
        max_batch=args.max_batch,
        batch_window_ms=args.batch_window_ms,
        prefill_chunk=args.prefill_chunk,
        prefix_cache_mb=args.prefix_cache_mb,
        engine=args.engine,
        weight_format=args.weight_format,
        cuda_graphs=args.cuda_graphs,
        argmax_screen=args.argmax_screen == "on",
        redrafter_head=_target_head(args),
    ).validate()


def _target_head(args: argparse.Namespace) -> str | None:
    """The co-located head of `specd target --redrafter-head` ('auto': the shipped one for the target)."""
    value = getattr(args, "target_redrafter_head", None)
    if value is None:
        return None
    from draft_service.shipped_heads import resolve_head

    head = resolve_head(value, args.target)
    if head is None and value.lower() == "auto":
        raise SystemExit(f"specd: no ReDrafter head ships for target {args.target!r}; pass a directory")
    return head


def _draft_config(args: argparse.Namespace) -> Any:
    from draft_service.service import DraftConfig

    return DraftConfig(
        draft_model=args.draft_model,
        device=args.device or "auto",
        dtype=args.dtype,
        phrase_store_url=_phrase_store_url(args),
        verify_lookahead=getattr(args, "verify_lookahead", False),
        redrafter_head=getattr(args, "redrafter_head", None),
    ).validate()


def _add_placement_flag(p: argparse.ArgumentParser, choices: tuple[str, ...]) -> None:
    p.add_argument(
        "--redrafter-placement",
        default=choices[0],
        choices=choices,
        help="where the 'redrafter' head drafts: in the draft service, or co-located in the target service "
        "(no draft round trip per step)" + ("; auto = target when the target has a head" if "auto" in choices else ""),
    )
    p.add_argument(
        "--pld-placement",
        default="auto",
        choices=("auto", "draft", "target"),
        help="where 'pld' drafts: co-located in the target service (prompt lookup over the session's own "
        "tokens, returned with every verify result: no draft round trip), or in the draft service; "
        "auto = target when the target offers it",
    )


def _add_load_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--tree-budget",
        default="cost",
        choices=TREE_BUDGETS,
        help="draft nodes per step: cost = the budget that maximises tokens/s from the measured step cost and "
        "each request's acceptance so far (small trees where a pass grows with its rows, as on CPUs); "
        "max = always the cap. A request's tree_budget overrides it",
    )
    p.add_argument(
        "--step-node-budget",
        type=int,
        default=48,
        help="draft-tree nodes per step shared by the requests running at once (0 = no budget): under load "
        "each request drafts budget/running nodes, so batched verify passes stay small",
    )
    p.add_argument(
        "--max-concurrent-requests",
        type=int,
        default=64,
        help="requests the orchestrator serves at once; more get RESOURCE_EXHAUSTED at once (0 = no cap)",
    )
    p.add_argument(
        "--draft-timeout-ms",
        type=int,
        default=2000,
        help="deadline of one draft call; a slower drafter is skipped and the step goes on target-only",
    )


def _add_phrase_store_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--phrase-store",
        default=None,
        help="Ouroboros phrase pool: redis://[:PASSWORD@]HOST:PORT/DB or rediss://... for TLS (shared by "
        "replicas; rediss takes ?ssl_ca_certs=FILE), or memory:// (default: embedded)",
    )
    p.add_argument(
        "--phrase-store-password-file",
        default=None,
        help="file holding the Redis password (overrides a password in the URL)",
    )
    p.add_argument(
        "--verify-lookahead",
        action="store_true",
        help="Ouroboros without a draft LM: add the Jacobi lookahead window to every draft tree, so it rides "
        "in the target's verify pass and feeds the pool (off by default: it costs more than it saves on CPU)",
    )
    p.add_argument(
        "--redrafter-head",
        default=None,
        help="a ReDrafter head checkpoint directory (specd train-redrafter): enables the 'redrafter' method; "
        "`specd up` defaults to the head shipped for the target (SmolLM2: draft_service/heads/smollm2), "
        "'none' turns it off",
    )


def cmd_target(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from specd_metrics.services import TargetMetrics
    from target_service.server import serve_target
    from target_service.verifier import TargetVerifier

    tls = _server_tls(args)
    verifier = TargetVerifier.from_config(_target_config(args))
    registry = CollectorRegistry()
    metrics = TargetMetrics(registry, verifier)
    handle = serve_target(verifier, host=args.host, port=args.port, tls=tls, metrics=metrics)
    print(f"target service on {args.host}:{handle.port}", flush=True)
    metrics_server = _metrics_server(args, registry)
    handle.wait_for_signal()
    if metrics_server is not None:
        metrics_server.stop()
    return 0


def cmd_draft(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from draft_service.server import serve_draft
    from draft_service.service import DraftWorker
    from specd_metrics.services import DraftMetrics

    tls = _server_tls(args)
    worker = DraftWorker.from_config(_draft_config(args))
    registry = CollectorRegistry()
    handle = serve_draft(worker, host=args.host, port=args.port, tls=tls, metrics=DraftMetrics(registry, worker))
    print(f"draft service on {args.host}:{handle.port}", flush=True)
    metrics_server = _metrics_server(args, registry)
    try:
        handle.wait_for_signal()
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        worker.close()  # closes the phrase-store connections
    return 0


def cmd_orchestrator(args: argparse.Namespace) -> int:
    from prometheus_client import CollectorRegistry

    from orchestrator.auth import AuthConfig, AuthInterceptor
    from orchestrator.discovery import parse_draft_address
    from orchestrator.drafters import DrafterPool, ReplicaClient
    from orchestrator.server import serve_orchestrator
    from orchestrator.service import Orchestrator, OrchestratorConfig
    from orchestrator.transports import GrpcTargetClient, RpcTimeouts
    from protos.security import peer_tls_from_flags
    from protos.serving import wait_healthy
    from spec_decode.models import load_tokenizer
    from specd_metrics.services import OrchestratorMetrics

    tls = _server_tls(args)
    peer = peer_tls_from_flags(args.peer_ca, args.peer_cert, args.peer_key)
    # built first: a bad key file stops us before we wait for the backends
    auth = AuthInterceptor.from_config(AuthConfig(args.api_key_file, args.rate_limit, args.rate_burst))
    try:
        source = parse_draft_address(args.draft_address or "none")
    except ValueError as err:
        print(f"specd: error: {err}", file=sys.stderr)
        return 2
    if args.draft_timeout_ms <= 0:
        print(f"specd: error: --draft-timeout-ms must be > 0, got {args.draft_timeout_ms}", file=sys.stderr)
        return 2
    draft_timeouts = RpcTimeouts(propose=args.draft_timeout_ms / 1e3, release=min(5.0, args.draft_timeout_ms / 1e3))
    wait_healthy(args.target_address, args.wait, tls=peer)
    draft = None
    if source is not None:
        try:
            draft = DrafterPool(source, connect=lambda address: ReplicaClient(address, draft_timeouts, tls=peer))
        except ValueError as err:  # k8s: no client package or no cluster config
            print(f"specd: error: {err}", file=sys.stderr)
            return 2
        if not draft.wait_live(args.wait):
            draft.close()
            print(f"specd: error: no drafter of {source!r} was healthy within {args.wait:.0f} s", file=sys.stderr)
            return 1
    tokenizer, _ = load_tokenizer(args.target)
    config = OrchestratorConfig(
        args.max_new_tokens,
        args.max_prompt_tokens,
        args.max_concurrent_requests,
        args.step_node_budget,
        redrafter_placement=args.redrafter_placement,
        pld_placement=args.pld_placement,
        tree_budget=args.tree_budget,
    ).validate()
    orch = Orchestrator(GrpcTargetClient(args.target_address, tls=peer), draft, tokenizer, config)
    registry = CollectorRegistry()
    metrics = OrchestratorMetrics(registry, budgets=orch)
    handle = serve_orchestrator(orch, host=args.host, port=args.port, tls=tls, auth=auth, metrics=metrics)
    print(f"orchestrator on {args.host}:{handle.port} (methods: {', '.join(orch.methods)})", flush=True)
    metrics_server = _metrics_server(args, registry)
    handle.wait_for_signal()
    if metrics_server is not None:
        metrics_server.stop()
    if draft is not None:
        draft.close()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    import signal
    import threading

    from draft_service.shipped_heads import resolve_head
    from specd_cli.stack import ProcessSecurity, start_process_stack

    extra = [
        "--max-sessions",
        str(args.max_sessions),
        "--max-tree-nodes",
        str(args.max_tree_nodes),
        "--max-context",
        str(args.max_context),
        "--max-kv-mb",
        str(args.max_kv_mb),
        "--max-batch",
        str(args.max_batch),
        "--batch-window-ms",
        str(args.batch_window_ms),
        "--prefill-chunk",
        str(args.prefill_chunk),
        "--prefix-cache-mb",
        str(args.prefix_cache_mb),
        "--engine",
        args.engine,
        *(["--weight-format", args.weight_format] if args.weight_format else []),
        "--cuda-graphs",
        args.cuda_graphs,
        "--argmax-screen",
        args.argmax_screen,
    ]
    head = resolve_head(args.redrafter_head, args.target)
    if head and args.redrafter_placement == "target":  # co-located: the target drafts, the orchestrator asks it
        extra += ["--redrafter-head", head]
    stack = start_process_stack(
        target=args.target,
        draft_model=args.draft_model,
        host=args.host,
        port=args.port,
        target_port=args.target_port,
        draft_port=args.draft_port,
        device=args.device,
        extra_target_args=extra,
        phrase_store=args.phrase_store,
        phrase_store_password_file=args.phrase_store_password_file,
        drafters=args.drafters,
        extra_draft_args=[
            *(["--verify-lookahead"] if args.verify_lookahead else []),
            *(["--redrafter-head", head] if head and args.redrafter_placement == "draft" else []),
        ],
        metrics_port_base=args.metrics_port_base,
        log_format=args.log_format,
        security=ProcessSecurity(
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            tls_client_ca=args.tls_client_ca,
            peer_ca=args.peer_ca,
            peer_cert=args.peer_cert,
            peer_key=args.peer_key,
            api_key_file=args.api_key_file,
            rate_limit=args.rate_limit,
            rate_burst=args.rate_burst,
        ),
        extra_orchestrator_args=[
            "--max-new-tokens",
            str(args.max_new_tokens),
            "--max-prompt-tokens",
            str(args.max_prompt_tokens),
            "--max-concurrent-requests",
            str(args.max_concurrent_requests),
            "--draft-timeout-ms",
            str(args.draft_timeout_ms),
            "--step-node-budget",
            str(args.step_node_budget),
            "--tree-budget",
            args.tree_budget,
            "--pld-placement",
            args.pld_placement,
        ],
    )
    print(f"specd is up: orchestrator {stack.address} (logs in {stack.log_dir}); Ctrl-C stops it", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        while not stop.wait(1.0):
            dead = [name for name, ok in stack.alive().items() if not ok]
            if dead:
                print(f"specd: {', '.join(dead)} exited; stopping the stack", file=sys.stderr)
                return 1
    finally:
        stack.stop()
    return 0


def _generate_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        method=args.method,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k,
        top_p=args.top_p,
        seed=args.seed,
        raw=args.raw,
        num_draft_tokens=args.num_draft_tokens,
        adaptive_draft=args.adaptive,
        num_branches=args.num_branches,
        ignore_eos=args.ignore_eos,
        tree_budget=args.tree_budget,
        head_tree=args.head_tree,
        phrase_top_k=args.phrase_top_k,
        phrase_length=args.phrase_length,
        disable_parts=[p for p in args.ouroboros_disable.split(",") if p],
        **_beam_kwargs(args),
    )


def _add_beam_flags(p: argparse.ArgumentParser) -> None:
    """Knobs of the beam methods (beam-sample, hf-beam-sample, dsbd)."""
    p.add_argument("--beam-width", type=int, default=0, help="beam methods: beams W (0 = 4)")
    p.add_argument("--min-beam-width", type=int, default=0, help="dsbd: the dynamic width's floor (0 = 1)")
    p.add_argument(
        "--width-threshold",
        type=float,
        default=0.0,
        help="dsbd: dynamic width, the largest k with P(#accepted >= k) >= this (0 = fixed width W; paper: 0.7, 0.9)",
    )
    p.add_argument("--length-penalty", type=float, default=None, help="beam methods: score / length ** this (1.0)")
    p.add_argument(
        "--keep-best-beam", action="store_true", help="dsbd: memory-saving variant, one beam carried between steps"
    )


def _beam_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return dict(
        beam_width=args.beam_width,
        min_beam_width=args.min_beam_width,
        width_threshold=args.width_threshold,
        length_penalty=args.length_penalty,
        keep_best_beam=args.keep_best_beam,
    )


def _beam_params(kwargs: dict[str, Any]) -> Any:
    """BeamParams from (and out of) the generate kwargs; zero values mean the defaults."""
    from spec_decode.beam_types import BeamParams

    default = BeamParams()
    penalty = kwargs.pop("length_penalty")
    return BeamParams(
        width=kwargs.pop("beam_width") or default.width,
        min_width=kwargs.pop("min_beam_width") or default.min_width,
        threshold=kwargs.pop("width_threshold"),
        length_penalty=default.length_penalty if penalty is None else penalty,
        keep_best_only=kwargs.pop("keep_best_beam"),
    )


def _beams_json(beams: Any) -> list[dict[str, Any]]:
    return [
        {"text": b.text, "token_ids": list(b.token_ids), "score": b.score, "logprob": b.logprob, "finished": b.finished}
        for b in beams
    ]


def cmd_generate(args: argparse.Namespace) -> int:
    kwargs = _generate_kwargs(args)
    if args.address:
        return _generate_remote(args, kwargs)
    return _generate_inprocess(args, kwargs)


def _generate_remote(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    from specd_client import SpecdClient, SpecdClientError

    try:
        client = SpecdClient(
            args.address,
            timeout=args.timeout,
            api_key=args.api_key,
            tls_ca=args.tls_ca,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
        )
        with client:
            if args.json:
                result = client.generate(args.prompt, **kwargs)
                payload: dict[str, Any] = {
                    "text": result.text,
                    "token_ids": list(result.token_ids),
                    "method": result.method,
                    "stats": result.stats.as_dict(),
                }
                if result.beams:
                    payload.update(beams=_beams_json(result.beams), peak_kv_bytes=result.peak_kv_bytes)
                print(json.dumps(payload))
                return 0
            for event in client.stream(args.prompt, **kwargs):
                print(event.text, end="", flush=True)
                if event.stats is not None:
                    print()
                    _print_stats(event.stats.as_dict())
    except SpecdClientError as err:
        print(f"specd: error: {err.code}: {err.details}", file=sys.stderr)
        return 1
    return 0


def _generate_inprocess(args: argparse.Namespace, kwargs: dict[str, Any]) -> int:
    from orchestrator.request import GenerateParams, OuroborosParams
    from spec_decode.errors import SpecdError
    from spec_decode.types import SamplingParams
    from specd_cli.stack import StackConfig, build_inprocess

    try:
        orch = build_inprocess(StackConfig(_target_config(args), _draft_config(args)))
        sampling = SamplingParams(
            kwargs.pop("temperature"), kwargs.pop("top_k"), kwargs.pop("top_p"), kwargs.pop("seed")
        )
        ouroboros = OuroborosParams.without(kwargs.pop("disable_parts"))
        ouroboros = dataclasses.replace(
            ouroboros, phrase_top_k=kwargs.pop("phrase_top_k"), phrase_length=kwargs.pop("phrase_length")
        )
        beam = _beam_params(kwargs)
        params = GenerateParams(prompt=args.prompt, sampling=sampling, ouroboros=ouroboros, beam=beam, **kwargs)
        if args.json:
            result = orch.generate(params)
            payload: dict[str, Any] = {
                "text": result.text,
                "token_ids": list(result.token_ids),
                "method": result.method,
                "stats": _stats_dict(result.stats),
            }
            if result.beams:
                payload.update(beams=_beams_json(result.beams), peak_kv_bytes=result.peak_kv_bytes)
            print(json.dumps(payload))
            return 0
        for chunk in orch.stream(params):
            print(chunk.text, end="", flush=True)
            if chunk.stats is not None:
                print()
                _print_stats(_stats_dict(chunk.stats))
    except SpecdError as err:
        print(f"specd: error: {err.code}: {err.message}", file=sys.stderr)
        return 1
    return 0


def _stats_dict(stats: Any) -> dict[str, Any]:
    out = asdict(stats)
    out.update(tau=stats.tau, acceptance_rate=stats.acceptance_rate, tokens_per_s=stats.tokens_per_s)
    return out


def _print_stats(stats: dict[str, Any]) -> None:
    ph = stats["phases"]
    print(
        f"[{stats['new_tokens']} tokens in {stats['wall_s']:.2f} s = {stats['tokens_per_s']:.1f} tok/s | "
        f"target steps {stats['target_steps']} | τ {stats['tau']:.2f} | accepted "
        f"{stats['accepted_tokens']}/{stats['draft_tokens']} draft tokens | prefill {ph['prefill_s']:.2f} s, "
        f"draft {ph['draft_s']:.2f} s, verify {ph['verify_s']:.2f} s, network {ph['network_s']:.3f} s, "
        f"orchestrate {ph['orchestrate_s']:.3f} s]",
        file=sys.stderr,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from specd_cli.demo import run_demo

    return run_demo(args)


def cmd_bench(args: argparse.Namespace) -> int:
    from specd_cli.bench import run_bench

    return run_bench(args)


def cmd_train_prompts(args: argparse.Namespace) -> int:
    from draft_service.train_prompts import write_prompts

    if args.count < 1:
        raise SystemExit("specd train-prompts: --count must be positive")
    write_prompts(args.out, args.count, args.seed, args.kind)
    return 0


def cmd_redrafter_subvocab(args: argparse.Namespace) -> int:
    from specd_cli.train_redrafter import run_subvocab

    return run_subvocab(args)


def cmd_train_redrafter(args: argparse.Namespace) -> int:
    from specd_cli.train_redrafter import run_train_redrafter

    return run_train_redrafter(args)


def cmd_bench_verify(args: argparse.Namespace) -> int:
    from specd_cli.bench_verify import run_bench_verify

    return run_bench_verify(args)


def cmd_bench_linear(args: argparse.Namespace) -> int:
    from specd_cli.bench_linear import run_bench_linear

    return run_bench_linear(args)


def cmd_bench_serve(args: argparse.Namespace) -> int:
    from specd_cli.bench_serve import run_bench_serve

    return run_bench_serve(args)


def cmd_make_tiny_pair(args: argparse.Namespace) -> int:
    from specd_cli.tiny import run

    return run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="specd", description="Speculative decoding as gRPC microservices.")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("target", help="run the target service")
    _add_model_flags(p, draft=False)
    _add_limit_flags(p)
    p.add_argument(
        "--redrafter-head",
        dest="target_redrafter_head",
        default=None,
        help="co-located ReDrafter head (a checkpoint directory, or 'auto' for the one shipped for the "
        "target): Prefill/Verify draft the next tree on request, saving the round trip to a draft service",
    )
    _add_server_flags(p, 50052)
    _add_observability_flags(p)
    p.set_defaults(fn=cmd_target)

    p = sub.add_parser("draft", help="run the draft service")
    p.add_argument("--draft-model", default=None, help="draft LM; without it only model-free drafters run")
    p.add_argument("--device", default=None)
    p.add_argument("--dtype", default=None)
    _add_phrase_store_flag(p)
    _add_server_flags(p, 50053)
    _add_observability_flags(p)
    p.set_defaults(fn=cmd_draft)

    p = sub.add_parser("orchestrator", help="run the orchestrator (front door)")
    p.add_argument("--target", default="smollm2", help="the target's model spec (its tokenizer is loaded)")
    p.add_argument("--target-address", default="127.0.0.1:50052")
    p.add_argument(
        "--draft-address",
        default="127.0.0.1:50053",
        help="draft replicas: HOST:PORT, a list H1:P1,H2:P2, dns:NAME:PORT (every A/AAAA record, re-resolved "
        "every 5 s), k8s:NAMESPACE/SERVICE:PORTNAME (EndpointSlices of SERVICE, in-cluster config), "
        "or 'none' for target-only",
    )
    p.add_argument("--max-new-tokens", type=int, default=2048, help="cap on a request's max_new_tokens")
    p.add_argument("--max-prompt-tokens", type=int, default=0, help="cap on a request's prompt tokens (0 = context)")
    p.add_argument("--wait", type=float, default=300.0, help="seconds to wait for the backends to be healthy")
    _add_load_flags(p)
    _add_placement_flag(p, ("auto", "draft", "target"))
    _add_server_flags(p, DEFAULT_PORT)
    _add_peer_flags(p)
    _add_auth_flags(p)
    _add_observability_flags(p)
    p.set_defaults(fn=cmd_orchestrator)

    p = sub.add_parser("up", help="start target, draft and orchestrator as processes on loopback")
    _add_model_flags(p)
    _add_limit_flags(p)
    _add_server_flags(p, DEFAULT_PORT)
    p.add_argument("--target-port", type=int, default=50052)
    p.add_argument("--draft-port", type=int, default=50053, help="port of the first draft replica")
    p.add_argument("--drafters", type=int, default=1, help="draft replicas (ports --draft-port, +1, ...)")
    p.add_argument("--max-new-tokens", type=int, default=2048, help="cap on a request's max_new_tokens")
    p.add_argument("--max-prompt-tokens", type=int, default=0, help="cap on a request's prompt tokens (0 = context)")
    _add_load_flags(p)
    _add_placement_flag(p, ("draft", "target"))
    _add_phrase_store_flag(p)
    _add_peer_flags(p)
    _add_auth_flags(p)
    _add_observability_flags(p, base=True)
    p.set_defaults(fn=cmd_up)

    p = sub.add_parser("generate", help="generate a completion (in-process, or via --address)")
    p.add_argument("prompt")
    p.add_argument(
        "--method", default="vanilla", help="vanilla | sps | pld | ouroboros | redrafter | beam-sample | dsbd"
    )
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--num-draft-tokens", type=int, default=0, help="draft length γ (0 = method default)")
    p.add_argument("--adaptive", action="store_true", help="adaptive draft length")
    p.add_argument("--num-branches", type=int, default=0, help="pld: distinct continuations per tree")
    p.add_argument(
        "--tree-budget",
        default="",
        choices=("", *TREE_BUDGETS),
        help="draft nodes per step: cost (chosen per step from measured cost and acceptance) or max (the cap); "
        "default: the orchestrator's --tree-budget",
    )
    p.add_argument(
        "--head-tree",
        default="",
        choices=("", *HEAD_TREES),
        help="redrafter/hybrid: the tree the head's beam search drafts, nodes (its most probable nodes, "
        "the default) or beams (its packed beams, the ReDrafter reference's tree)",
    )
    p.add_argument("--phrase-top-k", type=int, default=0, help="ouroboros: pool phrases per key token (0 = default)")
    p.add_argument("--phrase-length", type=int, default=0, help="ouroboros: phrase length N-1 (0 = default)")
    p.add_argument(
        "--ouroboros-disable",
        default="",
        help="ouroboros ablation: comma-separated parts to switch off "
        "(lookahead, phrase_extension, verification_phrases, history_phrases)",
    )
    _add_phrase_store_flag(p)
    _add_beam_flags(p)
    p.add_argument("--ignore-eos", action="store_true")
    p.add_argument("--address", default=None, help="orchestrator HOST:PORT; without it the stack runs in-process")
    p.add_argument(
        "--api-key",
        default=os.environ.get("SPECD_API_KEY"),
        help="API key sent as 'authorization: Bearer KEY' (default: $SPECD_API_KEY)",
    )
    p.add_argument("--tls-ca", default=None, help="connect with TLS; the CA that signed the orchestrator's certificate")
    p.add_argument("--tls-cert", default=None, help="client certificate, for an orchestrator that asks for one")
    p.add_argument("--tls-key", default=None, help="the PEM private key of --tls-cert")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    _add_model_flags(p)
    _add_limit_flags(p)
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("demo", help="start the stack, stream one answer through the SDK, stop (make run)")
    _add_model_flags(p)
    p.add_argument("--prompt", default="Explain in three sentences why the sky is blue.")
    p.add_argument("--method", default="pld")
    p.add_argument("--max-new-tokens", type=int, default=96)
    p.add_argument("--port", type=int, default=0, help="orchestrator port (0 = a free one)")
    p.set_defaults(fn=cmd_demo)

    p = sub.add_parser("make-tiny-pair", help="build a constructed tiny draft/target pair (SmolLM2 tokenizer)")
    from specd_cli.tiny import add_args as add_tiny_args

    add_tiny_args(p)
    p.set_defaults(fn=cmd_make_tiny_pair)

    p = sub.add_parser("bench", help="benchmark specd methods and peers on Spec-Bench-shaped prompts")
    from specd_cli.bench import add_bench_args

    add_bench_args(p)
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser(
        "train-prompts", help="write drafter-training prompts (JSONL): standard-library texts or everyday chat"
    )
    p.add_argument(
        "--kind", choices=PROMPT_KINDS, default="stdlib",
        help="stdlib: docstrings and functions of the Python standard library; chat: instruction templates "
        "crossed with topics, personas and tasks (draft_service/chat_prompts.py)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, required=True, help="JSONL file to write")
    p.add_argument("--count", type=int, default=3000, help="prompts to write (fewer if the library runs out)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(fn=cmd_train_prompts)

    p = sub.add_parser(
        "redrafter-subvocab", help="limit a ReDrafter head's LM head to the most frequent tokens of some text"
    )
    from specd_cli.train_redrafter import add_subvocab_args

    add_subvocab_args(p)
    p.set_defaults(fn=cmd_redrafter_subvocab)

    p = sub.add_parser("train-redrafter", help="self-distil a ReDrafter draft head for a target")
    from specd_cli.train_redrafter import add_train_redrafter_args

    add_train_redrafter_args(p)
    p.set_defaults(fn=cmd_train_redrafter)

    p = sub.add_parser("bench-verify", help="time one target pass over k new tokens: specd engine vs transformers")
    from specd_cli.bench_verify import add_bench_verify_args

    add_bench_verify_args(p)
    p.set_defaults(fn=cmd_bench_verify)

    p = sub.add_parser("bench-linear", help="time the target's linear layers in each CPU weight format, 1-64 rows")
    from specd_cli.bench_linear import add_bench_linear_args

    add_bench_linear_args(p)
    p.set_defaults(fn=cmd_bench_linear)

    p = sub.add_parser("bench-serve", help="concurrent streaming clients against the local stack: tokens/s, TTFT, ITL")
    from specd_cli.bench_serve import add_bench_serve_args

    add_bench_serve_args(p)
    p.set_defaults(fn=cmd_bench_serve)
    return parser


# Commands that stop gracefully on SIGTERM by themselves (servers and `up`, which drain first).
SELF_STOPPING = ("target", "draft", "orchestrator", "up")


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C: `finally` blocks stop the child stacks


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in SELF_STOPPING:
        import signal

        # bench, bench-serve, demo, train-redrafter...: a SIGTERM (timeout, kill, a CI runner) must
        # not leave the target/draft/orchestrator processes they started running
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    from specd_metrics.logs import configure_logging

    configure_logging(
        getattr(args, "log_format", "text"),
        logging.INFO if args.verbose or args.command in ("target", "draft", "orchestrator") else logging.WARNING,
    )
    from orchestrator.auth import AuthConfigError
    from protos.security import TlsConfigError

    try:
        return int(args.fn(args))
    except (TlsConfigError, AuthConfigError) as err:
        print(f"specd: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
