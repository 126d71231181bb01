"""``specd demo`` (what ``make run`` runs): start the stack as processes, stream one answer
through the client SDK with its stats, stop the stack."""

from __future__ import annotations

import argparse
import socket
import sys
import time


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def run_demo(args: argparse.Namespace) -> int:
    from specd_cli.stack import start_process_stack
    from specd_client import SpecdClient, SpecdClientError

    port = args.port or free_port()
    print(f"specd demo: starting target, draft and orchestrator ({args.target}) on loopback ...", flush=True)
    start = time.perf_counter()
    stack = start_process_stack(
        target=args.target,
        draft_model=args.draft_model,
        port=port,
        target_port=free_port(),
        draft_port=free_port(),
        device=args.device,
    )
    print(f"stack up in {time.perf_counter() - start:.1f} s; orchestrator at {stack.address}\n", flush=True)
    try:
        with SpecdClient(stack.address, timeout=600) as client:
            info = client.info()
            print(f"target {info.target.model}; methods: {', '.join(info.methods)}")
            print(f"prompt: {args.prompt}\nmethod: {args.method}, greedy, {args.max_new_tokens} new tokens\n")
            for event in client.stream(args.prompt, method=args.method, max_new_tokens=args.max_new_tokens):
                print(event.text, end="", flush=True)
                if event.stats is not None:
                    s = event.stats
                    ph = s.phases
                    print(
                        f"\n\n{s.new_tokens} tokens in {s.wall_s:.2f} s ({s.tokens_per_s:.1f} tok/s); "
                        f"target steps {s.target_steps}, τ {s.tau:.2f}, accepted {s.accepted_tokens} of "
                        f"{s.draft_tokens} draft tokens\nphases: prefill {ph.prefill_s:.2f} s, draft "
                        f"{ph.draft_s:.3f} s, verify {ph.verify_s:.2f} s, network {ph.network_s:.3f} s, "
                        f"orchestrate {ph.orchestrate_s:.3f} s; finish: {s.finish_reason}"
                    )
    except SpecdClientError as err:
        print(f"\nspecd demo: {err.code}: {err.details}", file=sys.stderr)
        return 1
    finally:
        stack.stop()
        print("stack stopped.")
    return 0
