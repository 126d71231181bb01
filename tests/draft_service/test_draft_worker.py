"""DraftWorker: the DraftAPI semantics (offsets, resync, errors, LRU, adaptive length)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from draft_service.model_drafter import ModelDrafter
from draft_service.service import DraftConfig, DraftWorker
from spec_decode.api import DraftAPI
from spec_decode.errors import FailedPrecondition, InvalidArgument, NotFound
from spec_decode.models import check_same_vocab, load_tokenizer
from spec_decode.sampling import make_generator
from spec_decode.tree import cut_depth, node_depths
from spec_decode.types import DraftOptions, DraftTree, ProposeResult, SamplingParams

GREEDY = SamplingParams()
NO_OPTIONS = DraftOptions()
PERIODIC = [10, 11, 12, 13] * 4  # prompt lookup drafts full-length chains on this


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from intra-op threads, and lose 10x when the CPU is shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def model_worker(tiny_draft: Path) -> DraftWorker:
    return DraftWorker.from_config(DraftConfig(draft_model=str(tiny_draft), device="cpu", max_num_tokens=16))


@pytest.fixture
def worker() -> DraftWorker:
    return DraftWorker(DraftConfig(device="cpu"))


def pl(
    worker: DraftWorker,
    session: str,
    offset: int,
    tokens: list[int],
    max_nodes: int = 32,
    options: DraftOptions = NO_OPTIONS,
    sampling: SamplingParams = GREEDY,
) -> ProposeResult:
    return worker.propose(session, "prompt_lookup", offset, tokens, max_nodes, options, sampling)


def test_implements_the_draft_api(worker: DraftWorker) -> None:
    api: DraftAPI = worker
    assert api.info().drafters == ("prompt_lookup", "ouroboros")


def test_info(worker: DraftWorker, model_worker: DraftWorker) -> None:
    info = worker.info()
    assert (info.vocab, info.device, info.max_sessions, info.active_sessions) == (None, "cpu", 256, 0)
    pl(worker, "s", 0, [1, 2])
    assert worker.info().active_sessions == 1
    info = model_worker.info()
    assert info.drafters == ("prompt_lookup", "model", "ouroboros")
    assert info.vocab is not None and info.vocab.vocab_size == 49152


def test_offsets_append_to_the_history(worker: DraftWorker) -> None:
    first = pl(worker, "s", 0, PERIODIC[:8])
    assert first.context_len == 8
    assert first.tree == DraftTree.chain([10, 11, 12, 13, 10])  # default length 5
    assert first.compute_s >= 0
    second = pl(worker, "s", 8, PERIODIC[8:10])
    assert second.context_len == 10
    assert second.tree.tokens == (12, 13, 10, 11, 12)


def test_offset_zero_restarts_the_session(worker: DraftWorker) -> None:
    pl(worker, "s", 0, PERIODIC)
    restarted = pl(worker, "s", 0, [5, 6, 7, 5])
    assert restarted.context_len == 4
    assert restarted.tree.tokens == (6, 7, 5, 6, 7)


def test_offset_mismatch_is_a_failed_precondition_and_resync_works(worker: DraftWorker) -> None:
    pl(worker, "s", 0, PERIODIC[:6])
    for bad in (5, 7):
        with pytest.raises(FailedPrecondition, match=r"holds 6 tokens.*offset 0"):
            pl(worker, "s", bad, [1])
    assert pl(worker, "s", 6, []).context_len == 6  # the failed calls changed nothing
    resynced = pl(worker, "s", 0, PERIODIC[:9])
    assert resynced.context_len == 9
    assert resynced.tree == pl(worker, "fresh", 0, PERIODIC[:9]).tree


def test_unknown_session_with_an_offset_is_not_found(worker: DraftWorker) -> None:
    with pytest.raises(NotFound, match="offset 0"):
        pl(worker, "nobody", 3, [1])
    with pytest.raises(NotFound):
        worker.observe("nobody", 1, 0)


def test_unknown_drafter_lists_the_known_ones(worker: DraftWorker) -> None:
    with pytest.raises(InvalidArgument, match=r"'eagle'.*prompt_lookup, model"):
        worker.propose("s", "eagle", 0, [1], 4, NO_OPTIONS, GREEDY)


def test_model_drafter_without_a_model_is_a_failed_precondition(worker: DraftWorker) -> None:
    with pytest.raises(FailedPrecondition, match="no draft model; start it with --draft-model"):
        worker.propose("s", "model", 0, [1], 4, NO_OPTIONS, GREEDY)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"session_id": ""}, "session_id"),
        ({"offset": -1}, "offset"),
        ({"max_nodes": -2}, "max_nodes"),
        ({"max_depth": -1}, "max_depth"),
        ({"tokens": [1, -5]}, "token id -5"),
        ({"options": DraftOptions(num_tokens=40)}, "num_tokens"),
        ({"options": DraftOptions(num_tokens=-1)}, "num_tokens"),
        ({"options": DraftOptions(min_ngram=3, max_ngram=2)}, "min_ngram"),
        ({"options": DraftOptions(num_branches=999)}, "num_branches"),
        ({"sampling": SamplingParams(temperature=-1.0)}, "temperature"),
        ({"sampling": SamplingParams(temperature=1.0, top_p=0.0)}, "top_p"),
    ],
)
def test_invalid_arguments_change_nothing(worker: DraftWorker, kwargs: dict[str, Any], match: str) -> None:
    pl(worker, "s", 0, [1, 2, 3])
    call: dict[str, Any] = {
        "session_id": "s",
        "offset": 3,
        "tokens": [4],
        "max_nodes": 4,
        "options": NO_OPTIONS,
        "sampling": GREEDY,
    }
    call.update(kwargs)
    with pytest.raises(InvalidArgument, match=match):
        worker.propose(drafter="prompt_lookup", **call)
    assert pl(worker, "s", 3, []).context_len == 3


def test_a_refused_new_session_is_not_created_and_evicts_nothing() -> None:
    worker = DraftWorker(DraftConfig(device="cpu", max_sessions=1))
    pl(worker, "a", 0, [1, 2])
    with pytest.raises(InvalidArgument, match="max_ngram"):
        pl(worker, "b", 0, [1, 2], options=DraftOptions(max_ngram=100))
    assert worker.info().active_sessions == 1
    assert pl(worker, "a", 2, [3]).context_len == 3


def test_token_ids_are_checked_against_the_draft_vocabulary(model_worker: DraftWorker) -> None:
    with pytest.raises(InvalidArgument, match=r"token id 49152 is outside the draft vocabulary \[0, 49152\)"):
        model_worker.propose("v", "model", 0, [1, 49152], 4, NO_OPTIONS, GREEDY)
    with pytest.raises(InvalidArgument, match="draft_top_k"):
        model_worker.propose("v", "model", 0, [1], 4, DraftOptions(draft_top_k=5000), GREEDY)


def test_observe_checks_its_counts(worker: DraftWorker) -> None:
    pl(worker, "s", 0, PERIODIC)
    with pytest.raises(InvalidArgument, match="num_accepted"):
        worker.observe("s", 2, 3)
    with pytest.raises(InvalidArgument):
        worker.observe("s", 2, -1)


def test_max_nodes_bounds_the_tree(worker: DraftWorker) -> None:
    assert pl(worker, "s", 0, PERIODIC, max_nodes=3).tree.size == 3
    empty = pl(worker, "s", len(PERIODIC), [10, 11], max_nodes=0)
    assert empty.tree.size == 0 and empty.context_len == len(PERIODIC) + 2
    branchy = [1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 5, 0, 1, 2]
    tree = pl(worker, "b", 0, branchy, max_nodes=7, options=DraftOptions(num_branches=3, num_tokens=4)).tree
    assert tree.size == 7 and tree.parents.count(-1) == 2


def test_max_depth_caps_the_draft_length_for_one_call(worker: DraftWorker) -> None:
    """A request's last tokens cap the tree's depth, not its width, and only for that call: the
    session's draft length (and what Observe reports) stays the request's."""
    branchy = [1, 2, 3, 0, 1, 2, 4, 0, 1, 2, 5, 0, 1, 2]
    opts = DraftOptions(num_branches=3, num_tokens=4)
    full = worker.propose("b", "prompt_lookup", 0, branchy, 32, opts, GREEDY).tree
    cut = worker.propose("b", "prompt_lookup", len(branchy), [], 32, opts, GREEDY, max_depth=2).tree
    assert max(node_depths(full.parents)) == 4 and full.parents.count(-1) == 3
    assert cut == cut_depth(full, 2) and cut.size > 2  # every branch, two tokens deep
    assert worker.observe("b", cut.size, 0) == 4
    assert worker.propose("b", "prompt_lookup", len(branchy), [], 32, opts, GREEDY, max_depth=9).tree == full
    assert worker.propose("b", "prompt_lookup", len(branchy), [], 32, opts, GREEDY, max_depth=0).tree == full


def test_fixed_length_and_observe(worker: DraftWorker) -> None:
    assert pl(worker, "s", 0, PERIODIC, options=DraftOptions(num_tokens=3)).tree.size == 3
    assert worker.observe("s", 3, 3) == 3  # not adaptive: the length stays


def test_adaptive_length_follows_acceptance(worker: DraftWorker) -> None:
    adaptive = DraftOptions(adaptive=True, num_tokens=4)
    assert pl(worker, "s", 0, PERIODIC, options=adaptive).tree.size == 4
    assert worker.observe("s", 4, 4) == 6
    assert pl(worker, "s", 16, [10], options=adaptive).tree.size == 6
    assert worker.observe("s", 6, 2) == 5
    assert pl(worker, "s", 17, [11], options=adaptive).tree.size == 5
    # A branching tree is fully accepted when a whole branch (its depth) is.
    opts = DraftOptions(adaptive=True, num_branches=2)
    tree = pl(worker, "s", 18, [12, 99, 10, 11, 12], options=opts).tree
    assert tree.size > 5
    assert worker.observe("s", tree.size, 5) == 7
    # offset 0 restarts the adaptive state too
    pl(worker, "s", 0, PERIODIC, options=adaptive)
    assert worker.observe("s", 4, 0) == 3


def test_lru_eviction_beyond_max_sessions() -> None:
    worker = DraftWorker(DraftConfig(device="cpu", max_sessions=2))
    pl(worker, "a", 0, [1, 2])
    pl(worker, "b", 0, [1, 2])
    pl(worker, "a", 2, [3])  # a is now the most recent
    pl(worker, "c", 0, [1, 2])
    assert worker.info().active_sessions == 2
    with pytest.raises(NotFound):
        pl(worker, "b", 2, [3])
    assert pl(worker, "a", 3, [4]).context_len == 4


def test_release(worker: DraftWorker) -> None:
    pl(worker, "s", 0, [1, 2])
    assert worker.release("s") is True
    assert worker.release("s") is False
    with pytest.raises(NotFound):
        pl(worker, "s", 2, [3])


def test_model_drafter_through_the_worker(model_worker: DraftWorker) -> None:
    context = [1000 + 37 * i for i in range(10)]
    lm = model_worker.model
    assert lm is not None
    first = model_worker.propose("m", "model", 0, context, 8, DraftOptions(num_tokens=4), GREEDY)
    expected = ModelDrafter(lm.model, lm.device).propose(context, 4, 8, GREEDY, None)
    assert first.tree == expected
    # partial acceptance: two drafted tokens, then the target's own token
    emitted = [*first.tree.tokens[:2], 777]
    second = model_worker.propose("m", "model", 10, emitted, 8, DraftOptions(num_tokens=4), GREEDY)
    assert second.tree == ModelDrafter(lm.model, lm.device).propose(context + emitted, 4, 8, GREEDY, None)
    # both drafters serve one session's history
    pl(model_worker, "m", 13, [])
    assert model_worker.release("m")


def test_sampling_seed_gives_the_draft_its_own_reproducible_stream(model_worker: DraftWorker) -> None:
    lm = model_worker.model
    assert lm is not None
    sampling = SamplingParams(temperature=1.0, seed=42)
    context = [2000 + 11 * i for i in range(8)]
    opts = DraftOptions(num_tokens=5, draft_top_k=4)
    one = model_worker.propose("x", "model", 0, context, 8, opts, sampling).tree
    two = model_worker.propose("y", "model", 0, context, 8, opts, sampling).tree
    assert one == two
    drafter = ModelDrafter(lm.model, lm.device)
    drafter.configure(opts)
    assert drafter.propose(context, 5, 8, sampling, make_generator(43)) == one  # seed + 1
    assert all(len(q.ids) <= 4 for q in one.draft_probs)


def test_concurrent_sessions(worker: DraftWorker) -> None:
    errors: list[BaseException] = []

    def client(name: str) -> None:
        try:
            pl(worker, name, 0, PERIODIC[:4])
            for i in range(4, len(PERIODIC)):
                tree = pl(worker, name, i, [PERIODIC[i]]).tree
                if i >= 8:
                    assert tree.tokens[0] == PERIODIC[(i + 1) % 4]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(f"t{i}",)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert worker.info().active_sessions == 6


def test_draft_config_validation() -> None:
    assert DraftConfig().validate() == DraftConfig()
    bad = [
        (DraftConfig(max_sessions=0), "max_sessions"),
        (DraftConfig(max_num_tokens=0), "max_num_tokens"),
        (DraftConfig(default_num_tokens=40), "default_num_tokens"),
        (DraftConfig(default_draft_top_k=0), "default_draft_top_k"),
        (DraftConfig(draft_model=""), "draft_model"),
        (DraftConfig(device="toaster"), "device"),
        (DraftConfig(dtype="int8"), "dtype"),
    ]
    for config, match in bad:
        with pytest.raises(InvalidArgument, match=match):
            config.validate()
        with pytest.raises(InvalidArgument, match=match):
            DraftWorker(config)


def test_foreign_vocabulary_is_refused(foreign_draft: Path, tiny_target: Path) -> None:
    foreign = DraftWorker.from_config(DraftConfig(draft_model=str(foreign_draft), device="cpu"))
    _, target_vocab = load_tokenizer(str(tiny_target))
    draft_vocab = foreign.info().vocab
    assert draft_vocab is not None
    with pytest.raises(FailedPrecondition) as err:
        check_same_vocab(target_vocab, draft_vocab)
    assert str(foreign_draft) in err.value.message and str(tiny_target) in err.value.message


def test_same_vocabulary_is_accepted(model_worker: DraftWorker, tiny_target: Path) -> None:
    _, target_vocab = load_tokenizer(str(tiny_target))
    vocab = model_worker.info().vocab
    assert vocab is not None
    check_same_vocab(target_vocab, vocab)
