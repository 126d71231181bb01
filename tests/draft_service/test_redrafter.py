"""The ``redrafter`` method end to end: head checkpoints, the hidden state's trip, losslessness.

The head here is untrained (random): its drafts are mostly wrong, which is exactly when a lossy
acceptance would show. Training is tested with the trainer.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from testkit import greedy_reference, late_wide_steps, record_steps, stack_config

from draft_service.service import DraftConfig, DraftWorker
from orchestrator.request import GenerateParams
from spec_decode.errors import FailedPrecondition, InvalidArgument
from spec_decode.models import load_model
from spec_decode.redrafter_checkpoint import load_head, read_checkpoint, save_head
from spec_decode.redrafter_head import HeadConfig, ReDrafterHead, beam_search
from spec_decode.types import DraftOptions, SamplingParams
from specd_cli.stack import build_inprocess, start_thread_stack
from specd_client import InvalidArgumentError, SpecdClient
from specd_kernels.linear import logits_kernel
from specd_kernels.q8 import Q8Linear


@pytest.fixture(scope="module")
def head_dir(tiny_target: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = load_model(str(tiny_target), device="cpu", dtype="float32")
    model = target.model
    torch.manual_seed(0)
    cfg = HeadConfig(model.config.hidden_size, target.vocab.vocab_size, blocks=1)
    head = ReDrafterHead(cfg, model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    with torch.no_grad():  # a head that copies the target's own view: h through P ~ identity on the h half
        head.proj.weight.zero_()
        head.proj.weight[:, : cfg.hidden] = torch.eye(cfg.hidden)
        head.proj.bias.zero_()
    directory = tmp_path_factory.mktemp("head")
    save_head(directory, head, str(tiny_target), target.vocab.fingerprint)
    return directory


def test_checkpoint_round_trip_and_refusals(head_dir: Path, tiny_target: Path, tmp_path: Path) -> None:
    checkpoint = read_checkpoint(head_dir)
    assert checkpoint.target == str(tiny_target) and checkpoint.config.blocks == 1
    worker = DraftWorker.from_config(DraftConfig(device="cpu", redrafter_head=str(head_dir)))
    assert "redrafter" in worker.drafters and worker.info().vocab is not None
    with pytest.raises(FailedPrecondition, match="not a ReDrafter head checkpoint"):
        DraftConfig(redrafter_head=str(tmp_path)).validate()
    plain = DraftWorker(DraftConfig(device="cpu"))
    with pytest.raises(FailedPrecondition, match="--redrafter-head"):
        plain.propose("s", "redrafter", 0, [1, 2, 3], 8, DraftOptions(), SamplingParams())
    # Without a hidden state the drafter proposes nothing (never garbage from a stale state).
    assert worker.propose("s", "redrafter", 0, [1, 2, 3], 8, DraftOptions(), SamplingParams()).tree.size == 0


def _with_head(tiny_target: Path, head_dir: Path):
    config = stack_config(tiny_target, None)
    return dataclasses.replace(config, draft=dataclasses.replace(config.draft, redrafter_head=str(head_dir)))


@pytest.mark.parametrize("head_tree", ["nodes", "beams"])
def test_redrafter_is_lossless_and_drafts_beams(tiny_target: Path, head_dir: Path, head_tree: str) -> None:
    orch = build_inprocess(_with_head(tiny_target, head_dir))
    accepted = 0
    for prompt in ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43], [777] * 6):
        expected = greedy_reference(tiny_target, prompt, 20, torch.float64)
        params = GenerateParams(
            prompt_token_ids=tuple(prompt), method="redrafter", max_new_tokens=20, tree_budget="max",
            head_tree=head_tree,
        )  # fmt: skip
        result = orch.generate(params)
        assert list(result.token_ids) == expected
        assert result.stats.draft_tokens > 20  # beams from the first step on (the prefill's hidden state)
        accepted += result.stats.accepted_tokens
        sampled = orch.generate(dataclasses.replace(params, sampling=SamplingParams(temperature=0.8, seed=4)))
        assert len(sampled.token_ids) == 20
    assert accepted > 0  # the identity-projection head guesses the target's next token now and then


@pytest.mark.parametrize("head_tree", ["", "beams"])
def test_hybrid_merges_phrases_and_beams_losslessly(tiny_target: Path, head_dir: Path, head_tree: str) -> None:
    """The hybrid's trees hold both the phrase drafter's and the head's drafts; greedy output is
    the target's own, sampling runs, and the phrase pool learns from the rows of its own nodes."""
    orch = build_inprocess(_with_head(tiny_target, head_dir))
    accepted = 0
    for prompt in ([1000, 2000, 3000, 1000, 2000, 3000, 1000], [42, 43, 44, 45, 42, 43], [777] * 6):
        expected = greedy_reference(tiny_target, prompt, 24, torch.float64)
        params = GenerateParams(
            prompt_token_ids=tuple(prompt), method="hybrid", max_new_tokens=24, tree_budget="max", head_tree=head_tree
        )
        result = orch.generate(params)
        assert list(result.token_ids) == expected
        assert result.stats.draft_tokens > 24
        accepted += result.stats.accepted_tokens
        sampled = orch.generate(dataclasses.replace(params, sampling=SamplingParams(temperature=0.8, seed=4)))
        assert len(sampled.token_ids) == 24
    assert accepted > 0


def test_hybrid_tree_maps_the_phrase_rows_back(tiny_target: Path, head_dir: Path) -> None:
    """Merged trees keep every path of both drafters, the phrase drafter's nodes map to merged
    nodes with the same token path, and its feedback has exactly one row per node of its own tree."""
    from draft_service.hybrid import HybridDrafter, node_index, tree_paths
    from draft_service.ouroboros import OuroborosDrafter
    from draft_service.redrafter import ReDrafterDrafter
    from phrase_store import InMemoryPhraseStore

    target = load_model(str(tiny_target), device="cpu", dtype="float32")
    model = target.model
    head = load_head(head_dir, model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    phrases = OuroborosDrafter(InMemoryPhraseStore(target.vocab.fingerprint), None, verify_lookahead=False)
    beams = ReDrafterDrafter(head)
    hybrid = HybridDrafter(phrases, beams)
    context = [11, 12, 13, 14, 15, 11, 12, 13, 14, 15, 11, 12]  # prompt lookup finds 13, 14, 15, ...
    with torch.inference_mode():
        state = model(torch.tensor([context]), output_hidden_states=True).hidden_states[-1][0, -1]  # [E]
    hybrid.set_hidden_state(state)
    tree = hybrid.propose(context, 6, 24, SamplingParams(), None)
    phrase_tree = phrases.last_tree
    head_tree = beams.propose(context, 4, 24 - phrase_tree.size, SamplingParams(), None)  # deterministic beams
    assert phrase_tree.size > 0 and head_tree.size > 0
    assert {tuple(p) for p in tree_paths(tree)} >= {tuple(p) for p in tree_paths(phrase_tree)}
    assert set(node_index(tree)) == set(node_index(phrase_tree)) | set(node_index(head_tree))
    where = node_index(tree)
    assert hybrid._phrase_rows == [where[path] for path in node_index(phrase_tree)]
    assert hybrid.last_phrase_nodes == phrase_tree.size <= 12  # half the budget while the head can draft
    hybrid.observe(tree.size, 2, list(range(1 + tree.size)))  # the phrase drafter checks its row count


def test_redrafter_over_grpc(tiny_target: Path, head_dir: Path) -> None:
    stack = start_thread_stack(_with_head(tiny_target, head_dir))
    try:
        with SpecdClient(stack.address, timeout=120) as client:
            prompt = [5, 6, 7, 5, 6]
            want = greedy_reference(tiny_target, prompt, 16, torch.float64)
            for tree in ("", "beams"):
                result = client.generate(prompt, method="redrafter", max_new_tokens=16, head_tree=tree)
                assert list(result.token_ids) == want
                assert result.stats.draft_tokens > 0
            with pytest.raises(InvalidArgumentError, match="head_tree must be one of nodes, beams"):
                client.generate(prompt, method="redrafter", max_new_tokens=4, head_tree="wide")
    finally:
        stack.stop()
    worker = DraftWorker.from_config(DraftConfig(device="cpu", redrafter_head=str(head_dir)))
    with pytest.raises(InvalidArgument, match="head_tree"):  # the draft service checks it too
        worker.propose("s", "redrafter", 0, [1, 2], 8, DraftOptions(head_tree="wide"), SamplingParams())


def test_the_shipped_smollm2_head_loads_and_agrees_with_the_target() -> None:
    """The fp16 head in draft_service/heads/smollm2 loads over SmolLM2 and drafts the target's
    own next tokens far more often than chance on a general prompt (teacher-forced)."""
    from draft_service.shipped_heads import resolve_head, shipped_head

    directory = shipped_head("smollm2")
    assert directory is not None and shipped_head("SmolLM2") == directory
    assert resolve_head(None, "smollm2") == str(directory) == resolve_head("auto", "default")
    assert resolve_head("none", "smollm2") is None and resolve_head(None, "/some/model") is None
    assert resolve_head("/my/head", "smollm2") == "/my/head"
    checkpoint = read_checkpoint(directory)
    target = load_model("smollm2", device="cpu", dtype="float32")
    assert checkpoint.vocab_fingerprint == target.vocab.fingerprint
    model = target.model
    head = load_head(directory, model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    assert next(head.parameters()).dtype == torch.float32
    from orchestrator.request import GenerateParams as Params
    from orchestrator.text import prompt_tokens

    prompt = prompt_tokens(target.tokenizer, Params(prompt="Explain in a few sentences why the sky is blue."))
    out = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False)
    seq = out[0].tolist()
    with torch.inference_mode():
        hidden = model(torch.tensor([seq]), output_hidden_states=True).hidden_states[-1][0]  # [T, E]
        first, last = len(prompt) - 1, len(seq) - 3
        ids = torch.tensor(seq)
        tokens = ids.unfold(0, 3, 1)[first + 1 : last + 1]  # [n, 3]: g0 and the two tokens after it
        logits = head(hidden[first:last], tokens)  # [n, 2, V]
    agree = (logits.argmax(-1) == tokens[:, 1:]).float().mean(0)  # top-1 per offset
    # Chance is 1/49152. The chat-trained head agrees on 7 of the 38 positions (0.18, both offsets);
    # the first head, trained on standard-library explanations, on 3 (0.08).
    assert float(agree[0]) > 0.12 and float(agree[1]) > 0.12, agree

    # Drafting runs the LM head on the exact int8 kernel (SmolLM2's head is Q8_0 codes), as both
    # services load it: the same beams as torch's matmul at every position of the answer.
    kernel = logits_kernel(head.lm_head)
    assert isinstance(kernel, Q8Linear)
    for position in range(first, last, 4):
        plain = beam_search(head.use_logits_kernel(None), hidden[position], seq[position + 1], width=4, length=4)
        fast = beam_search(head.use_logits_kernel(kernel), hidden[position], seq[position + 1], width=4, length=4)
        assert fast.tokens == plain.tokens, position
        assert fast.scores == pytest.approx(plain.scores, abs=1e-3)


def test_head_logits_kernel_runs_when_drafting_only(tiny_target: Path, head_dir: Path) -> None:
    """The kernel replaces the matmul while drafting (no autograd); training keeps the matmul, whose
    gradient flows into P; both services' loaded heads carry the kernel where one applies."""
    target = load_model(str(tiny_target), device="cpu", dtype="float32")
    model = target.model
    head = load_head(head_dir, model.get_input_embeddings().weight, model.get_output_embeddings().weight)
    calls: list[tuple[int, ...]] = []

    def kernel(z: torch.Tensor) -> torch.Tensor:  # [B, E] -> [B, V]
        calls.append(tuple(z.shape))
        return z @ head.lm_head.T

    head.use_logits_kernel(kernel)
    hidden, token = torch.randn(3, head.config.hidden), torch.tensor([1, 2, 3])
    logits, _ = head.step(hidden, head.initial_state(3), token)  # autograd on: the matmul
    assert calls == [] and logits.requires_grad
    logits.sum().backward()
    assert head.proj.weight.grad is not None
    beams = beam_search(head, hidden[0], 5, width=2, length=3)  # drafting: the kernel, once per step
    assert calls == [(1, head.config.hidden), (2, head.config.hidden), (2, head.config.hidden)]
    assert len(beams.tokens) == 2
    # The tiny target's weights are not group codes: on a CPU in fp32 the kernel is MKL-packed fp32.
    worker = DraftWorker(DraftConfig(device="cpu", redrafter_head=str(head_dir)))
    assert worker.head is not None and worker.head._logits_kernel is not None
    assert logits_kernel(torch.randn(8, 4, dtype=torch.float64)) is None  # fp64: torch's matmul


def test_subvocabulary_head_keeps_the_full_heads_logits(head_dir: Path, tiny_target: Path, tmp_path: Path) -> None:
    """`specd redrafter-subvocab` keeps the most frequent tokens of the text (and the special
    tokens); the restricted head's logits are the full head's at those tokens."""
    from specd_cli.main import main

    text = tmp_path / "text.jsonl"
    text.write_text('{"turns": ["the cat sat on the mat, the cat sat on the hat"]}\n' * 3)
    out = tmp_path / "sub"
    assert (
        main(["redrafter-subvocab", "--head", str(head_dir), "--out", str(out), "--size", "12", "--text", str(text)])
        == 0
    )
    sub = read_checkpoint(out)
    ids = list(sub.config.vocab_ids)
    assert 0 < len(ids) <= 12 and ids == sorted(ids)
    target = load_model(str(tiny_target), device="cpu", dtype="float32")
    tokenizer = target.tokenizer
    assert set(tokenizer.encode(" the cat", add_special_tokens=False)) <= set(ids)
    emb, lm = target.model.get_input_embeddings().weight, target.model.get_output_embeddings().weight
    full, small = load_head(head_dir, emb, lm), load_head(out, emb, lm)
    h, tokens = torch.randn(3, full.config.hidden), torch.tensor([[5, 6], [7, 8], [9, 10]])
    with torch.no_grad():
        torch.testing.assert_close(small(h, tokens), full(h, tokens)[..., ids])
    # co-located in a target, the restricted head drafts on a kernel of its own, over its own rows
    from target_service.verifier import TargetConfig, TargetVerifier

    verifier = TargetVerifier.from_config(
        TargetConfig(model=str(tiny_target), device="cpu", dtype="float32", redrafter_head=str(out))
    )
    kernel = verifier._head._logits_kernel if verifier._head is not None else None
    assert kernel is not None and kernel is not verifier.engine.weights.lm_head  # type: ignore[attr-defined]
    assert kernel.out_features == len(ids)  # type: ignore[attr-defined]
    with pytest.raises(SystemExit, match="--size"):
        main(["redrafter-subvocab", "--head", str(head_dir), "--out", str(out), "--size", "0", "--text", str(text)])


def _colocated(tiny_target: Path, head_dir: Path, placement: str = "auto"):
    config = stack_config(tiny_target, None)
    return dataclasses.replace(
        config,
        target=dataclasses.replace(config.target, redrafter_head=str(head_dir)),
        orchestrator=dataclasses.replace(config.orchestrator, redrafter_placement=placement),
    )


def test_colocated_head_drafts_the_same_trees_without_a_draft_service(tiny_target: Path, head_dir: Path) -> None:
    """The head inside the target service drafts exactly what it drafts in a draft service (same
    trees, so the same acceptance), the output stays the target's own, and no draft session opens.
    (In a request's last steps the co-located tree is drafted one step early, to the depth the
    tokens left can at most allow, and cut to the depth they do allow; after a step that emitted
    only one token, as every step here does, the two are the same depth.)"""
    colocated = build_inprocess(_colocated(tiny_target, head_dir))
    remote = build_inprocess(_with_head(tiny_target, head_dir))
    assert colocated.target_info.draft_head and "redrafter" in colocated.methods
    for prompt in ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43]):
        params = GenerateParams(
            prompt_token_ids=tuple(prompt), method="redrafter", max_new_tokens=20, tree_budget="max"
        )
        here, there = colocated.generate(params), remote.generate(params)
        assert list(here.token_ids) == greedy_reference(tiny_target, prompt, 20, torch.float64)
        assert list(here.token_ids) == list(there.token_ids)
        assert (here.stats.draft_tokens, here.stats.accepted_tokens, here.stats.target_steps) == (
            there.stats.draft_tokens,
            there.stats.accepted_tokens,
            there.stats.target_steps,
        )
        sampled = colocated.generate(dataclasses.replace(params, sampling=SamplingParams(temperature=0.8, seed=3)))
        assert len(sampled.token_ids) == 20
    assert colocated._draft is not None and colocated._draft.info().active_sessions == 0  # never asked
    # the beam method drafts its beams in a draft service, never on the target's co-located head
    assert "dsbd-redrafter" not in colocated.methods
    with pytest.raises(FailedPrecondition, match="does not offer"):
        colocated.generate(
            GenerateParams(
                prompt_token_ids=(1, 2, 3),
                method="dsbd-redrafter",
                max_new_tokens=4,
                sampling=SamplingParams(temperature=1.0, seed=1),
            )
        )


@pytest.mark.parametrize("where", ["colocated", "draft service"])
def test_the_heads_last_trees_fit_the_tokens_left_in_depth_not_in_nodes(
    tiny_target: Path, head_dir: Path, where: str
) -> None:
    """In a request's last steps the head's trees are no deeper than the tokens left allow, yet keep
    more nodes than that: the draft service drafts to the cap it is sent, and the co-located head
    (which drafts the next tree during this step's Verify, before that step's tokens left are
    known) drafts to an upper bound that the orchestrator then cuts by depth."""
    config = _colocated(tiny_target, head_dir) if where == "colocated" else _with_head(tiny_target, head_dir)
    orch = build_inprocess(config)
    steps = record_steps(orch)
    for prompt in ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43]):
        steps.clear()
        params = GenerateParams(
            prompt_token_ids=tuple(prompt), method="redrafter", max_new_tokens=12, tree_budget="max"
        )
        assert list(orch.generate(params).token_ids) == greedy_reference(tiny_target, prompt, 12, torch.float64)
        assert late_wide_steps(steps, 12) > 0


def test_colocated_head_drafts_within_the_tree_budget(tiny_target: Path, head_dir: Path) -> None:
    """Co-located, the head drafts the next step's tree with the verify result, so the budget is
    chosen then: with dear rows its trees are small from the start, and the output is the same."""
    colocated = build_inprocess(_colocated(tiny_target, head_dir))
    prompt = (1000, 2000, 3000, 1000, 2000)
    params = GenerateParams(prompt_token_ids=prompt, method="redrafter", max_new_tokens=20, tree_budget="max")
    full = colocated.generate(params)
    cost, _ = colocated.budget_model("redrafter@target")
    for _ in range(64):  # every row costs as much as the rest of the step
        for rows in (1, 2, 5, 9):
            cost.observe(rows, 0.01 * rows)
    small = colocated.generate(dataclasses.replace(params, tree_budget="cost"))
    assert (
        list(small.token_ids) == list(full.token_ids) == greedy_reference(tiny_target, list(prompt), 20, torch.float64)
    )
    per_step = [r.stats.draft_tokens / r.stats.target_steps for r in (full, small)]
    assert per_step[1] < 0.5 * per_step[0], per_step


def test_colocated_head_drafts_on_the_engines_own_lm_head_kernel(tiny_target: Path, head_dir: Path) -> None:
    """In fp32 on a CPU the co-located head computes its logits with the native engine's LM-head
    kernel (no second copy of the LM head), drafts the trees a draft service drafts with a kernel of
    its own, and the output stays the target's; a q8a8 engine (int8 activations) gets a kernel of
    its own."""
    from target_service.verifier import TargetVerifier

    base = stack_config(tiny_target, None, dtype="float32")
    config = dataclasses.replace(base, target=dataclasses.replace(base.target, redrafter_head=str(head_dir)))
    colocated = build_inprocess(config)
    verifier = colocated._target
    assert isinstance(verifier, TargetVerifier) and verifier._head is not None
    assert verifier._head._logits_kernel is verifier.engine.weights.lm_head  # type: ignore[attr-defined]
    remote = build_inprocess(
        dataclasses.replace(base, draft=dataclasses.replace(base.draft, redrafter_head=str(head_dir)))
    )
    vanilla = build_inprocess(base)
    for prompt in ([1000, 2000, 3000, 1000, 2000], [42, 43, 44, 45, 42, 43]):
        params = GenerateParams(
            prompt_token_ids=tuple(prompt), method="redrafter", max_new_tokens=20, tree_budget="max"
        )
        here, there = colocated.generate(params), remote.generate(params)
        reference = vanilla.generate(dataclasses.replace(params, method="vanilla"))
        assert list(here.token_ids) == list(there.token_ids) == list(reference.token_ids)
        assert (here.stats.draft_tokens, here.stats.accepted_tokens) == (
            there.stats.draft_tokens,
            there.stats.accepted_tokens,
        )
    # the engine's kernel and the draft service's own give the same beams, bit for bit
    head, own = verifier._head, logits_kernel(verifier._head.lm_head)
    torch.manual_seed(5)
    for hidden in torch.randn(4, head.config.hidden):
        shared = beam_search(head, hidden, 7, width=3, length=3)
        alone = beam_search(head.use_logits_kernel(own), hidden, 7, width=3, length=3)
        head.use_logits_kernel(verifier.engine.weights.lm_head)  # type: ignore[attr-defined]
        assert (shared.tokens, shared.scores) == (alone.tokens, alone.scores)
    a8 = TargetVerifier.from_config(dataclasses.replace(config.target, weight_format="q8a8"))
    assert a8._head is not None and a8._head._logits_kernel is not None
    assert a8._head._logits_kernel is not a8.engine.weights.lm_head  # type: ignore[attr-defined]


def test_colocated_head_over_grpc_and_its_refusals(tiny_target: Path, head_dir: Path) -> None:
    from spec_decode.errors import FailedPrecondition as Precondition
    from spec_decode.types import ColocatedDraft, DraftTree

    stack = start_thread_stack(_colocated(tiny_target, head_dir, placement="target"))
    try:
        with SpecdClient(stack.address, timeout=120) as client:
            prompt = [5, 6, 7, 5, 6]
            result = client.generate(prompt, method="redrafter", max_new_tokens=16)
            assert list(result.token_ids) == greedy_reference(tiny_target, prompt, 16, torch.float64)
            assert result.stats.draft_tokens > 0
        target_client = stack.clients[0]
        first = target_client.prefill("s1", prompt, SamplingParams(), colocated_draft=ColocatedDraft(4, 3, 9))
        assert first.next_tree is not None and 0 < first.next_tree.size <= 9
        step = target_client.verify("s1", first.next_tree, colocated_draft=ColocatedDraft(2, 2, 4))
        assert step.next_tree is not None and step.next_tree.size <= 4
        beams = target_client.verify("s1", step.next_tree, colocated_draft=ColocatedDraft(2, 2, 4, tree="beams"))
        assert beams.next_tree is not None and 0 < beams.next_tree.size <= 4
        with pytest.raises(InvalidArgument, match="tree must be one of nodes, beams"):
            target_client.verify("s1", DraftTree((), ()), colocated_draft=ColocatedDraft(2, 2, 4, tree="wide"))
        with pytest.raises(InvalidArgument, match="width"):
            target_client.verify("s1", DraftTree((), ()), colocated_draft=ColocatedDraft(0, 2, 4))
    finally:
        stack.stop()
    plain = build_inprocess(stack_config(tiny_target, None))
    with pytest.raises(Precondition, match="co-located draft head"):
        plain._target.prefill("s2", [1, 2, 3], SamplingParams(), colocated_draft=ColocatedDraft(4, 3, 9))
    no_head = build_inprocess(
        dataclasses.replace(
            stack_config(tiny_target, None),
            orchestrator=dataclasses.replace(
                stack_config(tiny_target, None).orchestrator, redrafter_placement="target"
            ),
        )
    )
    with pytest.raises(Precondition, match="placement 'target'"):
        no_head.generate(GenerateParams(prompt_token_ids=(1, 2, 3), method="redrafter", max_new_tokens=4))


def test_subvocabulary_from_the_training_cache_counts_response_ids(head_dir: Path, tmp_path: Path) -> None:
    """train-redrafter's responses.jsonl (the target's own answers as ids) is counted id by id."""
    from specd_cli.main import main

    cache = tmp_path / "responses.jsonl"
    rows = [{"key": "a", "response": [40, 40, 41, 42]}, {"key": "b", "response": [40, 41, 43]}]
    cache.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "sub"
    specials = len(set(load_model(str(read_checkpoint(head_dir).target), "cpu").tokenizer.all_special_ids))
    assert main(["redrafter-subvocab", "--head", str(head_dir), "--out", str(out), "--size", str(specials + 2),
                 "--text", str(cache)]) == 0  # fmt: skip
    kept = set(read_checkpoint(out).config.vocab_ids)
    assert {40, 41} <= kept and not {42, 43} & kept  # the two most frequent ids, besides the special tokens
