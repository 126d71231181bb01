"""Ouroboros parts 2-4 and the worker: phrase extension, corrected phrases, history phrases, the pool.

Real stores only: the in-process one, and a real redis-server subprocess (the phrase_store
suite's helpers) for the cross-session and two-replica tests.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from draft_service.model_drafter import ModelDrafter
from draft_service.ouroboros import OuroborosDrafter, corrected_phrases
from draft_service.service import DraftConfig, DraftWorker
from phrase_store import PhraseStore, open_phrase_store
from spec_decode.errors import InvalidArgument
from spec_decode.models import LoadedModel, load_model
from spec_decode.sampling import make_generator
from spec_decode.tree import children_lists, path_to, validate_tree
from spec_decode.types import DraftOptions, DraftTree, SamplingParams, SparseProbs

GREEDY = SamplingParams()
SAMPLED = SamplingParams(temperature=1.0)
VOCAB = 49152


def _phrase_store_helpers() -> ModuleType:
    """tests/phrase_store/phrase_store_helpers.py (a RedisServer subprocess), loaded by path."""
    name = "phrase_store_helpers"
    if name not in sys.modules:
        path = Path(__file__).parents[1] / "phrase_store" / "phrase_store_helpers.py"
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


HELPERS = _phrase_store_helpers()
new_namespace = HELPERS.new_namespace


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    server = HELPERS.RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server.url
    server.stop()


@pytest.fixture
def store() -> PhraseStore:
    return open_phrase_store(None, new_namespace())


def drafter(store: PhraseStore, model: ModelDrafter | None = None, **options: Any) -> OuroborosDrafter:
    d = OuroborosDrafter(store, model)
    d.configure(DraftOptions(**options))
    return d


def branches(tree: DraftTree) -> set[tuple[int, ...]]:
    """Every root-to-leaf token sequence of ``tree``."""
    kids = children_lists(tree.parents)
    return {tuple(tree.tokens[i] for i in path_to(leaf, tree.parents)) for leaf in range(tree.size) if leaf not in kids}


def depth(tree: DraftTree) -> int:
    return max((len(path_to(i, tree.parents)) for i in range(tree.size)), default=0)


# ---- part 3: corrected phrases -------------------------------------------------------------

# 10 -> 11 -> 12 -> 13 (nodes 0-3) and 20 -> 21 (nodes 4-5), both from the root.
TREE = DraftTree((10, 11, 12, 13, 20, 21), (-1, 0, 1, 2, -1, 4))
# rows: 0 = root, i + 1 = node i. Row 0 wants 10 (node 0 ok, node 4 rejected), row 1 wants 11
# (node 1 ok), row 2 wants 99 (node 2 rejected).
ROWS = (10, 11, 99, 31, 32, 41, 42)


def test_corrected_phrases_follow_the_rule_exactly() -> None:
    # branch 1: node 2 rejected -> (row 2, rows of node 2 and node 3) = (99, 31, 32)
    # branch 2: node 4 rejected -> (row 0, rows of node 4 and node 5) = (10, 41, 42)
    assert corrected_phrases(TREE, ROWS, 3) == [(99, 31, 32), (10, 41, 42)]
    assert corrected_phrases(TREE, ROWS, 2) == [(99, 31), (10, 41)]  # cut to n
    assert corrected_phrases(TREE, ROWS, 4) == []  # neither reaches full length: dropped
    # A fully accepted branch teaches nothing; a rejected root child corrects from row 0.
    chain = DraftTree.chain([5, 6, 7, 8])
    assert corrected_phrases(chain, (5, 6, 7, 8, 9), 2) == []
    assert corrected_phrases(chain, (4, 1, 2, 3, 9), 5) == [(4, 1, 2, 3, 9)]
    assert corrected_phrases(chain, (5, 9, 1, 2, 3), 3) == [(9, 1, 2)]  # the docstring's example
    # Two branches rejected at the same node give one phrase each only if they differ after it.
    fork = DraftTree((5, 6, 7, 6, 8), (-1, 0, 1, 0, 3))
    assert corrected_phrases(fork, (5, 9, 1, 2, 1, 3), 3) == [(9, 1, 2), (9, 1, 3)]


def test_observe_adds_corrected_phrases_to_the_pool(store: PhraseStore) -> None:
    d = drafter(store, phrase_length=2, no_history_phrases=True)
    d.last_tree = TREE
    d.observe(6, 2, ROWS)
    d.propose([1, 2, 3], 4, 8, GREEDY, None)  # learnt phrases reach the store with the next call
    assert store.get([99, 10], k=5) == {99: [(31, 32)], 10: [(41, 42)]}


def test_observe_refuses_target_tokens_of_the_wrong_length(store: PhraseStore) -> None:
    d = drafter(store)
    tree = d.propose([1, 2, 3, 1, 2], 3, 8, GREEDY, None)
    assert tree.size == 3
    for bad in ([7], [7] * 5):
        with pytest.raises(InvalidArgument, match="target_tokens has"):
            d.observe(3, 1, bad)
    d.observe(3, 1, [3, 9, 9, 9])  # 1 + 3 rows: fine
    d.observe(3, 1, [])  # not asked for: nothing to learn


# ---- part 4: history phrases -----------------------------------------------------------------


def test_history_phrases_are_the_new_ngrams_only(store: PhraseStore) -> None:
    d = drafter(store, phrase_length=2, no_phrase_extension=True)
    d.propose([1, 2, 3, 4], 3, 3, GREEDY, None)  # the prompt's 3-grams
    assert store.get([1, 2], k=5) == {1: [(2, 3)], 2: [(3, 4)]}
    assert store.stats().added == 2
    d.propose([1, 2, 3, 4, 5, 6], 3, 3, GREEDY, None)  # only (3, 4, 5) and (4, 5, 6) are new
    assert store.stats().added == 4
    assert store.get([3, 4], k=5) == {3: [(4, 5)], 4: [(5, 6)]}
    d.propose([1, 2, 3, 4, 5, 6], 3, 3, GREEDY, None)  # nothing new
    assert store.stats().added == 4
    d.propose([8, 9, 8, 7], 3, 3, GREEDY, None)  # a restart with another context: all of it
    assert store.stats().added == 6


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_history_lets_another_session_draft_what_it_never_saw(kind: str, request: pytest.FixtureRequest) -> None:
    """Session a's text teaches the pool; session b (another worker = replica, with Redis) drafts it."""
    url = request.getfixturevalue("redis_url") if kind == "redis" else None
    ns = new_namespace()
    options = DraftOptions(phrase_namespace=ns, num_tokens=8)
    first = DraftWorker(DraftConfig(device="cpu", phrase_store_url=url))
    second = DraftWorker(DraftConfig(device="cpu", phrase_store_url=url)) if kind == "redis" else first
    assert first.info().phrase_store == kind
    a = [7, 1, 2, 3, 50, 60, 70, 80, 90, 4]
    first.propose("a", "ouroboros", 0, a, 32, options, GREEDY)
    first.release("a")  # the pool outlives the request
    b = second.propose("b", "ouroboros", 0, [5, 6, 50], 32, options, GREEDY).tree
    assert (60, 70, 80, 90) in branches(b)
    fresh = DraftOptions(phrase_namespace=new_namespace(), no_lookahead=True)  # no window rows either
    other = second.propose("c", "ouroboros", 0, [5, 6, 50], 32, fresh, GREEDY)
    assert other.tree.size == 0  # another namespace shares nothing
    for worker in {first, second}:
        worker.close()


def test_corrected_phrases_reach_another_replica(redis_url: str) -> None:
    ns = new_namespace()
    options = DraftOptions(phrase_namespace=ns, num_tokens=4, phrase_length=2, no_history_phrases=True)
    one = DraftWorker(DraftConfig(device="cpu", phrase_store_url=redis_url))
    two = DraftWorker(DraftConfig(device="cpu", phrase_store_url=redis_url))
    tree = one.propose("s", "ouroboros", 0, [3, 4, 5, 3, 4], 8, options, GREEDY).tree
    assert tree == DraftTree.chain([5, 3, 4, 5])
    one.observe("s", 4, 2, [5, 3, 9, 8, 7])  # node 2 (4) rejected: the target wanted 9 -> (9, 8, 7)
    one.propose("s", "ouroboros", 5, [5, 3, 9], 8, options, GREEDY)  # the feedback is flushed here
    assert (8, 7) in branches(two.propose("t", "ouroboros", 0, [1, 9], 8, options, GREEDY).tree)
    one.close()
    two.close()


# ---- part 2: phrase extension ----------------------------------------------------------------

CONTEXT = [1, 2, 3, 4, 5, 6, 7, 8, 9, 1, 2]  # prompt lookup drafts 3 4 5 6 7 8 ...


def seeded(store: PhraseStore) -> None:
    store.add([(6, 30, 31), (6, 32, 33), (2, 40, 41), (2, 3, 50)])  # newest last


def test_tree_is_chain_then_continuing_phrases_then_root_phrases(store: PhraseStore) -> None:
    seeded(store)
    d = drafter(store, phrase_length=2, no_history_phrases=True, no_lookahead=True)
    tree = d.propose(CONTEXT, 6, 32, GREEDY, None)
    # chain 3..8 (cut = 6 - 2 = 4: phrases of 6 branch off node 3), then (32, 33), (30, 31);
    # root phrases of 2: (3, 50) shares node 0, (40, 41) is new.
    assert tree.tokens == (3, 4, 5, 6, 7, 8, 32, 33, 30, 31, 50, 40, 41)
    assert tree.parents == (-1, 0, 1, 2, 3, 4, 3, 6, 3, 8, 0, -1, 11)
    assert tree.draft_probs == ()  # model-free: point masses
    assert d.propose(CONTEXT, 6, 8, GREEDY, None).tokens == (3, 4, 5, 6, 7, 8, 32, 33)  # chain first
    assert d.propose(CONTEXT, 6, 32, GREEDY, None) == tree  # reading the pool changes nothing
    top1 = drafter(store, phrase_length=2, phrase_top_k=1, no_history_phrases=True, no_lookahead=True)
    assert branches(top1.propose(CONTEXT, 6, 32, GREEDY, None)) == {(3, 4, 5, 6, 7, 8), (3, 4, 5, 6, 32, 33), (3, 50)}


def test_tree_respects_max_nodes_and_max_tokens(store: PhraseStore) -> None:
    store.add([(k, k + 1, k + 2, k + 3, k + 4) for k in range(1, 12)] + [(2, 9, 9, 9, 9), (8, 1, 1, 1, 1)])
    d = drafter(store)
    full = d.propose(CONTEXT, 16, 64, GREEDY, None)
    for max_tokens in (1, 2, 3, 5, 8):
        for max_nodes in (1, 2, 4, 7, 12, 30):
            tree = d.propose(CONTEXT, max_tokens, max_nodes, GREEDY, None)
            validate_tree(tree, vocab_size=VOCAB, max_nodes=max_nodes, max_top_k=16)
            assert 0 < tree.size <= max_nodes and depth(tree) <= max_tokens
            chain = tuple(full.tokens[: min(max_tokens, max_nodes)])
            assert tree.tokens[: len(chain)] == chain  # the base chain always comes first
            assert all(parent < i for i, parent in enumerate(tree.parents))


def test_model_free_lookahead_window_rides_in_the_tree(store: PhraseStore) -> None:
    """Part 1 without a draft LM: the Jacobi window joins the tree; the target's argmax at its top
    rows advances it, and full columns become n-grams in the pool."""
    d = drafter(store, phrase_length=2, no_history_phrases=True, no_verification_phrases=True)
    tree = d.propose(CONTEXT, 6, 64, GREEDY, None)
    # width = min(W=8, max_tokens 6 - phrase_length 2) = 4; N = 3 (2 levels); level 0 starts
    # W + N - 2 = 5 wide, seeded with the context's last 5 tokens, as a chain from the root.
    window_nodes = d._window_rows
    assert len(window_nodes) == 5 and d.window is not None and d.window.levels == [[7, 8, 9, 1, 2]]
    assert [tree.tokens[n] for n in window_nodes] == [7, 8, 9, 1, 2]
    assert [tree.parents[n] for n in window_nodes[1:]] == window_nodes[:-1]
    validate_tree(tree, vocab_size=VOCAB, max_nodes=64, max_top_k=16)
    rows = [0] * (1 + tree.size)
    for i, node in enumerate(window_nodes):  # the "target" says: after 7 comes 100, after 8 comes 101, ...
        rows[node + 1] = 100 + i
    d.observe(tree.size, 0, rows)
    assert d.window.levels == [[8, 9, 1, 2], [101, 102, 103, 104]]  # filling: one column shifts out
    assert store.stats().added == 0  # no full column yet
    tree = d.propose(CONTEXT, 6, 64, GREEDY, None)
    top = d._window_rows  # level 1's rows, each below its level-0 column
    assert [tree.tokens[n] for n in top] == [101, 102, 103, 104]
    assert all(depth(_subtree(tree, n)) == i + 2 for i, n in enumerate(top))
    rows = [0] * (1 + tree.size)
    for i, node in enumerate(top):
        rows[node + 1] = 200 + i
    d.observe(tree.size, 0, rows)
    d.propose(CONTEXT, 6, 64, GREEDY, None)  # flushes what the window learnt
    assert d.window.levels == [[101, 102, 103, 104], [200, 201, 202, 203]]
    got = store.get([8, 9, 1, 2], 4)
    assert got[8] == [(101, 200)] and got[2] == [(104, 203)]  # n-grams (L0, L1, out) per column
    # Off with part 1, and never when the budget cannot hold the whole window.
    off = drafter(store, phrase_length=2, no_lookahead=True)
    off.propose(CONTEXT, 6, 64, GREEDY, None)
    assert off._window_rows == []
    tight = drafter(store, phrase_length=2)
    tight.propose(CONTEXT, 6, 8, GREEDY, None)
    assert tight._window_rows == []


def _subtree(tree: DraftTree, node: int) -> DraftTree:
    """The path from the root to ``node`` as a chain (for its depth)."""
    return DraftTree.chain([tree.tokens[i] for i in path_to(node, tree.parents)])


def test_empty_requests_give_empty_trees(store: PhraseStore) -> None:
    seeded(store)
    d = drafter(store)
    assert d.propose(CONTEXT, 0, 8, GREEDY, None).size == 0
    assert d.propose(CONTEXT, 8, 0, GREEDY, None).size == 0
    assert d.propose([], 8, 8, GREEDY, None).size == 0


# ---- ablation switches ------------------------------------------------------------------------


def test_each_switch_turns_its_part_off(store: PhraseStore) -> None:
    # history: nothing learnt from the context
    drafter(store, no_history_phrases=True).propose(CONTEXT, 5, 8, GREEDY, None)
    assert store.stats().added == 0
    drafter(store).propose(CONTEXT, 5, 8, GREEDY, None)
    assert store.stats().added == len(CONTEXT) - 4
    store.clear()
    # extension: the pool is not even asked; the tree is the prompt lookup chain
    seeded(store)
    before = store.stats()
    plain = drafter(store, phrase_length=2, no_phrase_extension=True, no_history_phrases=True, no_lookahead=True)
    assert plain.propose(CONTEXT, 6, 32, GREEDY, None) == DraftTree.chain([3, 4, 5, 6, 7, 8])
    after = store.stats()
    assert (after.hits, after.misses) == (before.hits, before.misses)
    # verification: target tokens are checked but teach nothing
    quiet = drafter(store, phrase_length=2, no_verification_phrases=True, no_history_phrases=True, no_lookahead=True)
    quiet.last_tree = TREE
    quiet.observe(6, 2, ROWS)
    quiet.propose(CONTEXT, 6, 32, GREEDY, None)
    assert store.stats().added == after.added
    with pytest.raises(InvalidArgument):
        quiet.observe(6, 2, ROWS[:3])


def test_configure_refuses_bad_knobs(store: PhraseStore) -> None:
    for bad in (DraftOptions(phrase_top_k=-1), DraftOptions(phrase_top_k=65), DraftOptions(phrase_length=17)):
        with pytest.raises(InvalidArgument):
            drafter(store).configure(bad)
    with pytest.raises(InvalidArgument):
        drafter(store).configure(DraftOptions(max_ngram=2, min_ngram=3))  # prompt lookup's own knobs


# ---- mixed sampling trees with a draft model -------------------------------------------------


@pytest.fixture(scope="module")
def draft_lm(tiny_draft: Path) -> LoadedModel:
    return load_model(str(tiny_draft), "cpu", "float32")


def model_drafter(lm: LoadedModel, store: PhraseStore, **options: Any) -> OuroborosDrafter:
    return drafter(store, ModelDrafter(lm.model, lm.device), **options)


def test_sampled_chain_keeps_q_and_phrases_are_point_masses(draft_lm: LoadedModel, store: PhraseStore) -> None:
    torch.set_num_threads(1)
    context = [100, 200, 300, 400, 500]
    probe = model_drafter(draft_lm, store, phrase_length=2, no_history_phrases=True)
    chain = probe.propose(context, 6, 32, SAMPLED, make_generator(5)).tokens  # no phrases: a 6-token chain
    assert len(chain) == 6
    # A root phrase starting with the sampled first token, and phrases continuing the chain at its cut (4).
    store.add([(500, chain[0], 77, 78), (chain[3], 61, 62), (chain[3], chain[4], 63)])
    d = model_drafter(draft_lm, store, phrase_length=2, no_history_phrases=True)
    tree = d.propose(context, 6, 32, SAMPLED, make_generator(5))
    validate_tree(tree, vocab_size=VOCAB, max_nodes=32, max_top_k=16)
    assert tree.tokens[:4] == chain[:4]  # the pool continues the chain, so the LM stopped at the cut
    assert len(tree.draft_probs) == tree.size
    sampled = [i for i, q in enumerate(tree.draft_probs) if q.ids]
    assert sampled == [0, 1, 2, 3]
    assert all(tree.draft_probs[i] == SparseProbs() for i in range(4, tree.size))
    # Phrases never merge into a sampled node: (chain[0], 77) and (chain[4], 63) are siblings.
    kids = children_lists(tree.parents)
    assert [tree.tokens[c] for c in kids[-1]] == [chain[0], chain[0]]
    assert [tree.tokens[c] for c in kids[3]] == [chain[4], 61]  # newest first; chain[4] is a phrase node now
    assert branches(tree) == {
        (*chain[:4], chain[4], 63),
        (*chain[:4], 61, 62),
        (chain[0], 77, 78),
    }


# ---- the worker ---------------------------------------------------------------------------------


def test_worker_needs_a_valid_phrase_namespace() -> None:
    worker = DraftWorker(DraftConfig(device="cpu"))
    assert "ouroboros" in worker.info().drafters and worker.info().phrase_store == "memory"
    for namespace, message in (("", "phrase_namespace"), ("not-a-fingerprint", "namespace")):
        with pytest.raises(InvalidArgument, match=message):
            worker.propose("s", "ouroboros", 0, [1, 2, 3], 8, DraftOptions(phrase_namespace=namespace), GREEDY)
    assert worker.info().active_sessions == 0  # refused before any session state changed
    too_many = DraftOptions(phrase_namespace=new_namespace(), phrase_top_k=99)
    with pytest.raises(InvalidArgument, match="phrase_top_k"):
        worker.propose("s", "ouroboros", 0, [1], 8, too_many, GREEDY)
    assert worker.info().active_sessions == 0


def test_worker_checks_target_tokens_against_the_last_tree() -> None:
    worker = DraftWorker(DraftConfig(device="cpu"))
    options = DraftOptions(phrase_namespace=new_namespace(), num_tokens=3)
    tree = worker.propose("s", "ouroboros", 0, [1, 2, 3, 1, 2], 8, options, GREEDY).tree
    assert tree.size == 3
    with pytest.raises(InvalidArgument, match="needs 4"):
        worker.observe("s", 3, 1, [3, 1])
    with pytest.raises(InvalidArgument, match=">= 0"):
        worker.observe("s", 3, 1, [3, 1, -2, 4])
    assert worker.observe("s", 3, 1, [3, 1, 9, 9]) == 3
    worker.propose("p", "prompt_lookup", 0, [1, 2, 3, 1, 2], 8, options, GREEDY)
    with pytest.raises(InvalidArgument, match="needs 4"):  # the same check for every drafter
        worker.observe("p", 3, 1, [3])
    worker.close()


def test_worker_keeps_one_pool_per_namespace_until_closed() -> None:
    worker = DraftWorker(DraftConfig(device="cpu", phrase_max_per_key=1))
    ns = new_namespace()
    options = DraftOptions(phrase_namespace=ns.upper(), num_tokens=4)
    worker.propose("a", "ouroboros", 0, [9, 1, 2, 3, 4, 5], 8, options, GREEDY)
    worker.propose("a2", "ouroboros", 0, [9, 1, 7, 7, 7, 7], 8, options, GREEDY)  # max_per_key=1: replaces it
    tree = worker.propose("b", "ouroboros", 0, [8, 8, 9], 8, DraftOptions(phrase_namespace=ns, num_tokens=4), GREEDY)
    assert branches(tree.tree) == {(1, 7, 7, 7)}  # the fingerprint's case does not matter
    worker.close()
    worker.close()  # idempotent; the next request opens the pool again (in process: a new, empty one)
    assert worker.propose("c", "ouroboros", 0, [8, 8, 9], 8, options, GREEDY).tree.size == 0


@pytest.mark.parametrize(
    "bad",
    [
        {"phrase_store_url": "http://example.com"},
        {"phrase_max_per_key": 0},
        {"phrase_max_keys": 0},
        {"phrase_ttl_s": 0.0},
        {"lookahead_window": 0},
        {"lookahead_window": 65},
    ],
)
def test_config_refuses_bad_phrase_settings(bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument):
        DraftConfig(device="cpu", **bad).validate()
