"""Security fixtures: a throwaway PKI, and one stack with mutual TLS between the services and
TLS + API keys at the front door, built over tiny models on loopback.

The target and draft domain objects are shared with a plaintext stack, so the two stacks can be
compared call for call; extra front doors (rate limit, rotating key file, limits) are more
orchestrators over the secure stack's own gRPC clients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from draft_service.service import DraftWorker
from orchestrator.auth import AuthConfig
from orchestrator.server import serve_orchestrator
from orchestrator.service import Orchestrator, OrchestratorConfig
from protos.security import PeerTls, TlsConfig
from protos.serving import ServerHandle
from security.helpers import KEY_A, KEY_B, write_keys
from security.pki import Pki, make_pki, openssl_binary
from spec_decode.models import load_tokenizer
from specd_cli.stack import StackConfig, StackSecurity, ThreadStack, start_thread_stack
from target_service.verifier import TargetConfig, TargetVerifier


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    if openssl_binary() is None:
        pytest.skip("no openssl command line tool")
    return make_pki(tmp_path_factory.mktemp("pki"))


def tiny_stack_config(target: Path, draft: Path) -> StackConfig:
    """Tiny models in float64 (no float ties can flip a greedy argmax). Like the root conftest's
    ``stack_config``, which cannot be imported reliably from here: the module name ``conftest``
    belongs to whichever non-package folder's conftest pytest loaded last."""
    from draft_service.service import DraftConfig

    return StackConfig(
        TargetConfig(model=str(target), device="cpu", dtype="float64", max_context=256),
        DraftConfig(draft_model=str(draft), device="cpu", dtype="float64"),
        OrchestratorConfig(max_new_tokens=64),
    )


@dataclass
class Stacks:
    secure: ThreadStack  # mTLS target/draft, TLS + keys (KEY_A, KEY_B) at the front door
    plain: ThreadStack  # the same target and draft objects, plaintext, no keys
    key_file: Path
    tokenizer: object


@pytest.fixture(scope="session")
def stacks(tiny_target: Path, tiny_draft: Path, pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stacks]:
    cfg = tiny_stack_config(tiny_target, tiny_draft)
    target = TargetVerifier.from_config(cfg.target)
    draft = DraftWorker.from_config(cfg.draft)
    key_file = write_keys(tmp_path_factory.mktemp("keys") / "api-keys", KEY_A, KEY_B)
    security = StackSecurity(
        backend_tls=TlsConfig.from_files(pki.server_cert, pki.server_key, client_ca=pki.ca),
        peer_tls=PeerTls.from_files(pki.ca, pki.client_cert, pki.client_key),
        front_tls=TlsConfig.from_files(pki.server_cert, pki.server_key),
        auth=AuthConfig(api_key_file=str(key_file)),
    )
    secure = start_thread_stack(replace(cfg, security=security), target, draft)
    plain = start_thread_stack(cfg, target, draft)
    tokenizer, _ = load_tokenizer(str(tiny_target))
    yield Stacks(secure, plain, key_file, tokenizer)
    secure.stop()
    plain.stop()


FrontDoor = Callable[..., ServerHandle]


@pytest.fixture
def front_door(stacks: Stacks) -> Iterator[FrontDoor]:
    """``front_door(config=..., tls=..., auth=...)``: one more orchestrator over the secure stack's
    backends (through its mTLS clients), stopped after the test."""
    handles: list[ServerHandle] = []

    def start(
        config: OrchestratorConfig | None = None, tls: TlsConfig | None = None, auth: AuthConfig | None = None
    ) -> ServerHandle:
        target, draft = stacks.secure.clients
        orch = Orchestrator(target, draft, stacks.tokenizer, config or OrchestratorConfig(max_new_tokens=64))
        handle = serve_orchestrator(orch, tls=tls, auth=auth)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop(0.5)
