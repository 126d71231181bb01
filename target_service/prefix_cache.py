"""Prompt prefixes the target has seen, kept as KV blocks so the next prompt that starts the same
way does not compute them again (a system prompt, a conversation's earlier turns, a session the
orchestrator rebuilds after an eviction).

A prompt's fed tokens (all but its pending last one) are cut into blocks of ``block`` tokens. A
cached block is identified by its tokens *and* its parent block, so it stands for the exact
token prefix up to its end, never for the same tokens after another prefix (a chain of dict
keys, no hashing that could collide). :meth:`PrefixCache.lookup` walks a new prompt's blocks
from the start while they are cached; :meth:`PrefixCache.insert` adds the blocks of a prompt
once its keys and values are computed. Blocks are evicted least recently used first, with their
descendants (which nothing could reach any more), to stay under ``max_bytes``.

Why reusing them changes nothing: position ``p``'s keys and values in every layer depend only
on tokens ``0..p``, so the block computed after the same prefix holds what a new prefill would
compute; with the CPU engine's row-exact kernels (specd_kernels), bit for bit (tested).

Pure bookkeeping over opaque tensors: the engine reads and writes a cache's KV rows
(``NativeEngine.kv_rows`` / ``write_kv_rows``). Not thread-safe: the target uses it on its model
thread only.
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass(eq=False)
class Block:
    """The keys and values of ``block`` prompt positions after one exact token prefix."""

    key: tuple[int, tuple[int, ...]]  # (parent block id, 0 for none; this block's tokens)
    ident: int
    data: torch.Tensor  # the engine's KV rows of these positions (NativeEngine: [L, 2, Hkv, B, D])
    parent: Block | None
    children: set[int] = field(default_factory=set)  # ids of the blocks that continue this one

    @property
    def nbytes(self) -> int:
        return self.data.numel() * self.data.element_size()


class PrefixCache:
    """LRU cache of prompt-prefix KV blocks (see the module docstring)."""

    def __init__(self, block: int, max_bytes: int) -> None:
        if block < 1 or max_bytes < 0:
            raise ValueError(f"block ({block}) must be >= 1 and max_bytes ({max_bytes}) >= 0")
        self.block = block
        self.max_bytes = max_bytes
        self._by_key: dict[tuple[int, tuple[int, ...]], Block] = {}
        self._lru: collections.OrderedDict[int, Block] = collections.OrderedDict()  # oldest first
        self._next = 1
        self.bytes = 0
        self.hit_tokens = 0  # prompt tokens served from the cache (not computed)
        self.lookups = 0

    def __len__(self) -> int:
        return len(self._lru)

    def lookup(self, tokens: Sequence[int], limit: int) -> list[Block]:
        """The cached blocks that cover ``tokens`` from its start, at most ``limit`` tokens in all."""
        self.lookups += 1
        found: list[Block] = []
        parent = 0
        for lo in range(0, limit - self.block + 1, self.block):
            hit = self._by_key.get((parent, tuple(tokens[lo : lo + self.block])))
            if hit is None:
                break
            self._lru.move_to_end(hit.ident)
            found.append(hit)
            parent = hit.ident
        self.hit_tokens += len(found) * self.block
        return found

    def insert(self, tokens: Sequence[int], rows: Any) -> int:
        """Cache the full blocks of ``tokens`` (a prompt's fed tokens, its KV computed);
        ``rows(lo, hi)`` returns the KV rows of positions ``lo..hi-1`` (copied). Returns the new blocks."""
        if not self.max_bytes:
            return 0
        added = 0
        parent: Block | None = None
        for lo in range(0, len(tokens) - self.block + 1, self.block):
            key = ((parent.ident if parent else 0), tuple(tokens[lo : lo + self.block]))
            block = self._by_key.get(key)
            if block is None:
                block = Block(key, self._next, rows(lo, lo + self.block), parent)
                if block.nbytes > self.max_bytes:
                    break
                self._next += 1
                self._by_key[key] = block
                self._lru[block.ident] = block
                if parent is not None:
                    parent.children.add(block.ident)
                self.bytes += block.nbytes
                added += 1
                self._shrink(keep=block)
                if block.ident not in self._lru:  # no room even after evicting everything else
                    break
            else:
                self._lru.move_to_end(block.ident)
            parent = block
        return added

    def _shrink(self, keep: Block) -> None:
        """Evict least recently used blocks (and their descendants) until under ``max_bytes``;
        ``keep`` and its ancestors go last."""
        protected = set()
        node: Block | None = keep
        while node is not None:
            protected.add(node.ident)
            node = node.parent
        while self.bytes > self.max_bytes and self._lru:
            victim = next((b for i, b in self._lru.items() if i not in protected), None)
            if victim is None:  # only the new chain is left and it does not fit: drop the new block
                self._evict(keep)
                return
            self._evict(victim)

    def _evict(self, block: Block) -> None:
        stack = [block]
        while stack:
            b = stack.pop()
            if self._lru.pop(b.ident, None) is None:
                continue
            del self._by_key[b.key]
            self.bytes -= b.nbytes
            stack.extend(self._lru[i] for i in b.children if i in self._lru)
            if b.parent is not None:
                b.parent.children.discard(b.ident)
