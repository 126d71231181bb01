"""Reference decoding and random draft trees for the target-service tests."""

from __future__ import annotations

import ctypes
import random
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from spec_decode.tree import merge_paths
from spec_decode.types import DraftTree
from target_service.verifier import TargetVerifier

MakeVerifier = Callable[..., TargetVerifier]  # the make_verifier fixture: limits -> fresh verifier


@torch.inference_mode()
def sequential_decode(model: Any, tokens: list[int]) -> tuple[DynamicCache, torch.Tensor]:
    """Feed ``tokens`` one at a time with plain HF forwards: (cache, logits ``[L, V]``)."""
    cache = DynamicCache()
    rows = []
    for tok in tokens:
        out = model(input_ids=torch.tensor([[tok]]), past_key_values=cache, use_cache=True)
        rows.append(out.logits[0, -1])
    return cache, torch.stack(rows)


@torch.inference_mode()
def greedy_reference(model: Any, prompt: list[int], new_tokens: int) -> list[int]:
    """The target's own greedy continuation, from ``model.generate(do_sample=False)``."""
    ids = torch.tensor([prompt])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        do_sample=False,
        max_new_tokens=new_tokens,
        eos_token_id=None,
    )
    return [int(t) for t in out[0, len(prompt) :].tolist()]


def kv_layers(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(keys, values) per layer, each ``[Hkv, L, D]``, for a DynamicCache or a native KVCache."""
    if isinstance(cache, DynamicCache):
        return [(layer.keys[0], layer.values[0]) for layer in cache.layers if getattr(layer, "keys", None) is not None]
    n = cache.length
    return [(cache.data[i, 0, :, :n], cache.data[i, 1, :, :n]) for i in range(cache.data.shape[0])]


def assert_cache_equal(got: Any, want: Any, atol: float = 1e-10) -> None:
    """Same length and same key/value tensors on every layer (either engine's cache)."""
    got_layers, want_layers = kv_layers(got), kv_layers(want)
    assert len(got_layers) == len(want_layers)
    for i, ((gk, gv), (wk, wv)) in enumerate(zip(got_layers, want_layers, strict=True)):
        assert gk.shape == wk.shape, f"layer {i}: keys {tuple(gk.shape)} vs {tuple(wk.shape)}"
        torch.testing.assert_close(gk, wk, atol=atol, rtol=0, msg=f"layer {i} keys differ")
        torch.testing.assert_close(gv, wv, atol=atol, rtol=0, msg=f"layer {i} values differ")


def shuffle_tree(tree: DraftTree, rng: random.Random) -> DraftTree:
    """The same tree with its nodes renumbered in a random topological order."""
    n = tree.size
    kids: dict[int, list[int]] = {}
    for i, parent in enumerate(tree.parents):
        kids.setdefault(parent, []).append(i)
    order: list[int] = []
    ready = list(kids.get(-1, []))
    while ready:
        node = ready.pop(rng.randrange(len(ready)))
        order.append(node)
        ready.extend(kids.get(node, []))
    new_index = {old: new for new, old in enumerate(order)}
    tokens = tuple(tree.tokens[old] for old in order)
    parents = tuple(-1 if tree.parents[old] < 0 else new_index[tree.parents[old]] for old in order)
    probs = tuple(tree.draft_probs[old] for old in order) if tree.draft_probs else ()
    assert len(order) == n
    return DraftTree(tokens, parents, probs)


def random_tree(rng: random.Random, vocab: int, max_nodes: int = 12, max_depth: int = 4) -> DraftTree:
    """A random tree: random branching, random tokens, depth at most ``max_depth``."""
    n = rng.randint(1, max_nodes)
    parents: list[int] = []
    depth: list[int] = []
    for i in range(n):
        choices = [-1] + [j for j in range(i) if depth[j] < max_depth]
        parent = rng.choice(choices)
        parents.append(parent)
        depth.append(1 if parent < 0 else depth[parent] + 1)
    tokens = tuple(rng.randrange(vocab) for _ in range(n))
    return shuffle_tree(DraftTree(tokens, tuple(parents)), rng)


def lossless_tree(rng: random.Random, continuation: list[int], vocab: int) -> DraftTree:
    """A random tree that contains a prefix of the target's own ``continuation`` as one branch.

    The "good" branch has a random length (0-6) and is sometimes corrupted at a random
    depth; other branches are random, or share a prefix of the good one and then diverge.
    """
    good = continuation[: rng.randint(0, 6)]
    if good and rng.random() < 0.3:
        good[rng.randrange(len(good))] = rng.randrange(vocab)
    paths = [good]
    for _ in range(rng.randint(0, 3)):
        shared = good[: rng.randint(0, len(good))] if good and rng.random() < 0.5 else []
        paths.append(shared + [rng.randrange(vocab) for _ in range(rng.randint(1, 4))])
    rng.shuffle(paths)
    return shuffle_tree(merge_paths(paths), rng)


def inject_failure(engine: Any, patch: Any, message: str = "simulated device failure") -> dict[str, int]:
    """Make the engine's next forward fail after layer 0 has written its KV; returns a call counter.

    ``patch`` is a ``pytest.MonkeyPatch`` (or its context). Works for both engines.
    """
    calls = {"n": 0}
    if engine.kind == "hf":

        def boom(*args: object, **kwargs: object) -> None:
            calls["n"] += 1
            raise RuntimeError(message)

        patch.setattr(engine.model.model.layers[1].mlp, "forward", boom)
        return calls
    original = engine.run_layers  # both native paths (eager and static) run their layers through it

    def failing_layers(ids: Any, cos: Any, sin: Any, attend: Any) -> Any:
        def failing_attend(layer: int, *args: Any) -> Any:
            if layer == 1:
                calls["n"] += 1
                raise RuntimeError(message)
            return attend(layer, *args)

        return original(ids, cos, sin, failing_attend)

    patch.setattr(engine, "run_layers", failing_layers)
    return calls


HAS_C_COMPILER = shutil.which("cc") is not None or shutil.which("gcc") is not None


def portable_kernels(directory: Path) -> ctypes.CDLL:
    """The kernel library (``q8._SOURCES``) built for baseline x86-64: its element-by-element code paths."""
    return kernel_build(directory, "portable", ["-mno-avx512f"])


def kernel_build(directory: Path, name: str, arch: list[str]) -> ctypes.CDLL:
    """The kernel library built with other ``-m`` flags than the engine's ``-march=native``, declared."""
    from specd_kernels import q8

    compiler = shutil.which("cc") or shutil.which("gcc")
    assert compiler is not None
    out = directory / f"{name}.so"
    flags = ["-O3", *arch, "-ffp-contract=off", "-fopenmp", "-shared", "-fPIC"]
    subprocess.run([compiler, *flags, *(str(p) for p in q8._SOURCES), "-o", str(out)], check=True, capture_output=True)
    return q8.declare(ctypes.CDLL(str(out)))
