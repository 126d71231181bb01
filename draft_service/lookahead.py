"""Lookahead (Jacobi) decoding for the draft LM: its exact greedy chain, plus n-grams from every pass.

Fu et al. 2024, "Break the Sequential Dependency of LLM Inference Using Lookahead Decoding",
as Ouroboros uses it to draft (docs/PAPERS.md §1, part 1). Every forward pass of the draft
model feeds, after its KV cache (``P`` committed tokens):

    rows   [pending] [guess tree: G nodes] [window: J levels x w columns]

- **pending**: the chain's last token, not yet cached, at position ``base = P``. Its row's
  argmax is the draft model's next greedy token.
- **guess tree** (verification branch): phrases keyed on the pending token from the session's
  local pool, merged into one tree and scored exactly like a target tree pass
  (:func:`spec_decode.tree.tree_pass_inputs`). The longest prefix equal to the draft's own
  argmax is accepted (:func:`spec_decode.acceptance.accept_greedy`), so a pass may add several
  tokens while the chain stays exactly the draft model's greedy decoding.
- **window** (lookahead branch): level ``j``, column ``i`` guesses position ``base + 1 + i + j``.
  Row ``(j, i)`` attends to the prefix, the pending token, level 0's columns ``0..i`` and column
  ``i`` of levels ``1..j``: one contiguous guessed sequence (its trajectory). The top level's
  outputs are the next guesses; once all ``N - 1`` levels are there, column ``i`` yields the
  n-gram ``(L_0[i], ..., L_{N-2}[i], out[i])``, which goes into the pool. Then level 0 is dropped
  and the outputs become the new top level. Until then (the first ``N - 2`` passes) every level
  drops its first column and the outputs (minus their first) are appended as a new level, so
  level 0 starts ``w + N - 2`` wide and every level is ``w`` wide once the window is full.

Window mask, J = 2 levels of w = 2 columns (``x``: may attend; every row also sees the prefix
and the pending token)::

              L0[0] L0[1] L1[0] L1[1]     position
    L0[0]       x                         base + 1
    L0[1]       x     x                   base + 2
    L1[0]       x           x             base + 2
    L1[1]       x     x           x       base + 3

Only the pending row, the guess rows and the top level's rows go through the LM head. After the
pass the cache keeps the pending token and the accepted guess path; everything else is cut.
Guesses are only guesses: when the chain advances by more than one token, or a new propose
rolls the context back, the window keeps its tokens and Jacobi iteration repairs them.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformers import DynamicCache

from spec_decode.acceptance import accept_greedy
from spec_decode.tokens import common_prefix_len
from spec_decode.tree import merge_paths, tree_pass_inputs
from spec_decode.types import DraftTree

DEFAULT_WINDOW = 8  # W: guess positions per level
DEFAULT_LEVEL = 5  # N: n of the n-grams the window yields (N - 1 levels)
MAX_WINDOW = 64
MAX_LOCAL_KEYS = 1024

Phrase = tuple[int, ...]


class LocalPool:
    """A small per-session phrase cache the guess tree reads without a round trip.

    Key token -> continuations, newest first, at most ``per_key`` each; at most ``max_keys``
    keys, least recently used evicted. Same semantics as :mod:`phrase_store`, in a dict.
    """

    def __init__(self, per_key: int = DEFAULT_WINDOW, max_keys: int = MAX_LOCAL_KEYS) -> None:
        self.per_key = per_key
        self.max_keys = max_keys
        self._pool: OrderedDict[int, list[Phrase]] = OrderedDict()

    def add(self, phrases: Iterable[Sequence[int]]) -> None:
        """Full n-grams ``(key, *continuation)``; the last one ends up newest."""
        for phrase in phrases:
            if len(phrase) < 2:
                continue
            key, cont = int(phrase[0]), tuple(int(t) for t in phrase[1:])
            current = self._pool.setdefault(key, [])
            if cont in current:
                current.remove(cont)
            current.insert(0, cont)
            del current[self.per_key :]
            self._pool.move_to_end(key)
        while len(self._pool) > self.max_keys:
            self._pool.popitem(last=False)

    def get(self, key: int, k: int) -> list[Phrase]:
        phrases = self._pool.get(key)
        if not phrases:
            return []
        self._pool.move_to_end(key)
        return phrases[:k]

    def __len__(self) -> int:
        return sum(len(v) for v in self._pool.values())


def window_inputs(levels: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The window block of one pass: who attends to whom, and position offsets.

    Returns:
        allowed: ``[J*w, J*w]`` bool, rows and columns in level-major order (row ``j*w + i`` is
            level ``j``, column ``i``); True where row may attend to column.
        offsets: ``[J*w]`` long, position minus ``base``: ``1 + i + j``.
    """
    j = torch.arange(levels).repeat_interleave(width)  # [J*w]
    i = torch.arange(width).repeat(levels)  # [J*w]
    jr, ir, jc, ic = j[:, None], i[:, None], j[None, :], i[None, :]
    allowed = ((jc == 0) & (ic <= ir)) | ((jc >= 1) & (jc <= jr) & (ic == ir))  # [J*w, J*w]
    return allowed, 1 + i + j


class LookaheadDecoder:
    """Greedy decoding of a causal LM by lookahead decoding, with its own KV cache.

    ``draft(context, length, pool)`` returns the first ``length`` tokens of the model's greedy
    continuation of ``context`` and the n-grams the window produced on the way;
    the n-grams are also added to ``pool``, whose phrases keyed on the pending token form each
    pass's guess tree. ``extend(length, pool)`` continues the last chain.
    """

    def __init__(
        self,
        model: Any,
        device: torch.device,
        window: int = DEFAULT_WINDOW,
        level: int = DEFAULT_LEVEL,
        guesses: int | None = None,
    ) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"lookahead window must be in [1, {MAX_WINDOW}], got {window}")
        if level < 2:
            raise ValueError(f"lookahead level N must be >= 2, got {level}")
        if model.config._attn_implementation not in ("sdpa", "eager"):
            model.set_attn_implementation("sdpa")  # custom 4-D masks need one of these
        self.model = model
        self.device = device
        self.dtype: torch.dtype = next(model.parameters()).dtype
        self.window = window
        self.level = level
        self.guesses = window if guesses is None else guesses
        text = model.config.get_text_config()
        self.max_positions = int(getattr(text, "max_position_embeddings", 0) or 2**31 - 1)
        self.cached: list[int] = []  # tokens whose keys/values the cache holds
        self.passes = 0  # lookahead passes run (for tests and telemetry)
        self.accepted_guesses = 0  # chain tokens that came from the guess tree
        self._cache: DynamicCache | None = None
        self._pending: int | None = None
        self._levels: list[list[int]] = []

    def set_level(self, level: int) -> None:
        """Use ``level``-grams (N); a change restarts the window."""
        if level < 2:
            raise ValueError(f"lookahead level N must be >= 2, got {level}")
        if level != self.level:
            self.level = level
            self._levels = []

    def reset(self) -> None:
        """Forget the KV cache and the window (frees their memory)."""
        self.cached = []
        self._cache = None
        self._pending = None
        self._levels = []

    def draft(self, context: Sequence[int], length: int, pool: LocalPool) -> tuple[list[int], list[Phrase]]:
        """The ``length`` greedy tokens after ``context`` (non-empty), and the window's n-grams."""
        with torch.inference_mode():
            self._sync(context)
            if not self._levels:
                self._levels = [_seed_level(context, self._seed_width)]
            return self._run(length, pool)

    def extend(self, length: int, pool: LocalPool) -> tuple[list[int], list[Phrase]]:
        """``length`` more tokens after the chain the last call returned."""
        if self._pending is None:
            raise RuntimeError("extend needs a previous draft")
        with torch.inference_mode():
            return self._run(length, pool)

    @property
    def levels(self) -> tuple[tuple[int, ...], ...]:
        """The window now, level 0 first (empty before the first draft)."""
        return tuple(tuple(level) for level in self._levels)

    @property
    def _seed_width(self) -> int:
        """Level 0's width when the window starts: it loses a column per pass until it is full."""
        return self.window + self.level - 2

    # -- the loop --

    def _run(self, length: int, pool: LocalPool) -> tuple[list[int], list[Phrase]]:
        chain: list[int] = []
        phrases: list[Phrase] = []
        while len(chain) < length:
            assert self._pending is not None
            pending = self._pending
            if not self._levels:
                self._levels = [_seed_level([*self.cached[-self.window - self.level :], pending], self._seed_width)]
            base = len(self.cached)
            room = base + self.window + self.level < self.max_positions
            # Never accept past ``length``: a pass emits at most the guess depth + 1 tokens.
            depth = min(self.level - 1, length - len(chain) - 1)
            paths = [list(c[:depth]) for c in pool.get(pending, self.guesses)] if depth > 0 and room else []
            guess = merge_paths(paths)
            levels = self._levels if room else []
            heads, outs = self._pass(pending, guess, levels)
            acceptance = accept_greedy(heads, guess)
            self._commit(base, [0, *(node + 1 for node in acceptance.path)])
            self.cached.extend([pending, *acceptance.tokens])
            chain.extend(acceptance.emitted)
            self._pending = acceptance.next_token
            self.passes += 1
            self.accepted_guesses += len(acceptance.path)
            if levels:
                fresh = self._advance_window(outs)
                pool.add(fresh)
                phrases.extend(fresh)
        return chain, phrases

    def _advance_window(self, outs: list[int]) -> list[Phrase]:
        """Shift the window by one step; the n-grams it completes (none while it fills)."""
        self._levels, grams = advance_levels(self._levels, outs, self.level)
        return grams

    # -- the model --

    def _sync(self, context: Sequence[int]) -> None:
        """Keep the cache's common prefix with ``context``; feed the rest but its last token."""
        keep = min(common_prefix_len(self.cached, context), len(context) - 1)
        if keep < len(self.cached):
            self._truncate(keep)
        rest = list(context[keep:-1])
        if rest:
            ids = torch.tensor([rest], dtype=torch.long, device=self.device)  # [1, T]
            cache = self._get_cache()
            try:
                self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            except BaseException:
                self.reset()
                raise
            self.cached.extend(rest)
        self._pending = int(context[-1])

    def _pass(self, pending: int, guess: DraftTree, levels: list[list[int]]) -> tuple[list[int], list[int]]:
        """One forward pass; argmax of ``[pending] + guess`` rows, and of the top level's rows.

        The cache grows by every row of the pass; :meth:`_commit` cuts it back.
        """
        cache = self._get_cache()
        prefix = len(self.cached)
        g = guess.size
        num_levels = len(levels)
        width = len(levels[0]) if levels else 0
        q = 1 + g + num_levels * width
        ids = [pending, *guess.tokens, *(t for lvl in levels for t in lvl)]
        dev = self.device
        parents = torch.tensor(guess.parents, dtype=torch.long, device=dev)  # [G]
        head_allowed, head_positions = tree_pass_inputs(parents, prefix)  # [1+G, P+1+G], [1+G]
        allowed = torch.zeros(q, prefix + q, dtype=torch.bool, device=dev)  # [Q, P+Q]
        allowed[: 1 + g, : prefix + 1 + g] = head_allowed
        positions = torch.empty(q, dtype=torch.long, device=dev)  # [Q]
        positions[: 1 + g] = head_positions
        if num_levels:
            win_allowed, offsets = window_inputs(num_levels, width)  # [J*w, J*w], [J*w]
            allowed[1 + g :, : prefix + 1] = True
            allowed[1 + g :, prefix + 1 + g :] = win_allowed.to(dev)
            positions[1 + g :] = offsets.to(dev) + prefix
        mask = torch.zeros(allowed.shape, dtype=self.dtype, device=dev)  # [Q, P+Q] additive
        mask.masked_fill_(~allowed, torch.finfo(self.dtype).min)
        top = q - width  # first row of the top level (q when there is no window)
        keep_rows = list(range(1 + g)) + list(range(top, q) if num_levels else [])
        try:
            out = self.model(
                input_ids=torch.tensor([ids], dtype=torch.long, device=dev),  # [1, Q]
                attention_mask=mask[None, None],  # [1, 1, Q, P+Q]
                position_ids=positions[None],  # [1, Q]
                past_key_values=cache,
                use_cache=True,
                logits_to_keep=torch.tensor(keep_rows, dtype=torch.long, device=dev),  # [1 + G + w]
            )
        except BaseException:
            self.reset()
            raise
        argmax = out.logits[0].argmax(dim=-1).tolist()  # [1 + G + w]
        return argmax[: 1 + g], argmax[1 + g :]

    def _commit(self, start: int, rows: list[int]) -> None:
        """Keep the cache's first ``start`` entries plus the last pass's ``rows`` (increasing)."""
        assert self._cache is not None
        n = len(rows)
        moved = rows != list(range(n))
        idx = torch.tensor(rows, dtype=torch.long, device=self.device) + start  # [n]
        for layer in _layers(self._cache):
            if moved:
                layer.keys[..., start : start + n, :] = layer.keys.index_select(-2, idx)  # [1, H, n, D]
                layer.values[..., start : start + n, :] = layer.values.index_select(-2, idx)
            layer.keys = layer.keys[..., : start + n, :]
            layer.values = layer.values[..., : start + n, :]

    def _truncate(self, length: int) -> None:
        if length == 0 or self._cache is None:
            self.reset()
            return
        for layer in _layers(self._cache):
            layer.keys = layer.keys[..., :length, :]
            layer.values = layer.values[..., :length, :]
        del self.cached[length:]

    def _get_cache(self) -> DynamicCache:
        if self._cache is None:
            self._cache = DynamicCache()  # full-attention layers: custom masks need every position
        return self._cache


def advance_levels(levels: list[list[int]], outs: list[int], level: int) -> tuple[list[list[int]], list[Phrase]]:
    """One Jacobi step of a window: the new levels and the ``level``-grams it completes.

    ``outs`` are the model's argmax at the top level's rows. While the window fills (fewer than
    ``level - 1`` levels) every level drops its first column and ``outs[1:]`` becomes a new level;
    once full, column ``i`` yields ``(L_0[i], ..., L_top[i], outs[i])`` and the levels shift up.
    """
    if len(levels) < level - 1:
        return [lvl[1:] for lvl in levels] + [outs[1:]], []
    grams = [(*column, out) for *column, out in zip(*levels, outs, strict=True)]
    return [*levels[1:], outs], grams


class JacobiWindow:
    """A lookahead window without a model of its own: it rides in another model's tree pass.

    Used by the model-free Ouroboros drafter: the window's rows join the draft tree the *target*
    verifies, and the target's argmax at the top level's rows (returned with the verify result as
    ``target_tokens``) advances it. The window is a tree: level 0 is a chain from the pending token
    and column ``i`` of level ``j`` hangs below column ``i`` of level ``j - 1``, which gives each
    row exactly the ancestors and depth (``1 + i + j``) of the lookahead mask (see the module
    docstring). Any branch of it the target agrees with is accepted like any other draft.
    """

    def __init__(self, window: int = DEFAULT_WINDOW, level: int = DEFAULT_LEVEL) -> None:
        if not 1 <= window <= MAX_WINDOW:
            raise ValueError(f"lookahead window must be in [1, {MAX_WINDOW}], got {window}")
        if level < 2:
            raise ValueError(f"lookahead level N must be >= 2, got {level}")
        self.window, self.level = window, level
        self.levels: list[list[int]] = []
        self.steps = 0  # window steps taken (for tests and telemetry)

    def configure(self, window: int, level: int) -> None:
        """Change the shape; a change restarts the window."""
        if (window, level) != (self.window, self.level):
            self.window, self.level, self.levels = window, level, []

    def seed(self, context: Sequence[int]) -> None:
        if not self.levels and context:
            self.levels = [_seed_level(context, self.window + self.level - 2)]

    @property
    def depth(self) -> int:
        """Deepest row of the window's tree below the pending token."""
        if not self.levels:
            return 0
        return len(self.levels[0]) + len(self.levels) - 1

    @property
    def num_nodes(self) -> int:
        return sum(len(lvl) for lvl in self.levels)

    def advance(self, outs: list[int]) -> list[Phrase]:
        """Take the target's argmax at the top level's rows; returns the completed n-grams."""
        self.levels, grams = advance_levels(self.levels, outs, self.level)
        self.steps += 1
        return grams


def _seed_level(context: Sequence[int], width: int) -> list[int]:
    """Level 0 of a new window: the context's last ``width`` tokens (cycled when it is shorter)."""
    tail = [int(t) for t in context[-width:]]
    return [tail[i % len(tail)] for i in range(width)]


def _layers(cache: DynamicCache) -> list[Any]:
    """The cache layers that hold tensors."""
    layers = []
    for layer in cache.layers:
        keys = getattr(layer, "keys", None)
        if isinstance(keys, torch.Tensor) and keys.dim() == 4:
            layers.append(layer)
    return layers
