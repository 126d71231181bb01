"""Training prompts built from text every machine has: the Python standard library's own source.

Drafters trained by self-distillation learn the target's habits on whatever they are shown, so
the prompts should span what users ask (Spec-Bench's categories: writing, coding, extraction,
summarization, rewriting, QA, ...), not only the math of ``../shared/train/gsm8k_train.jsonl``.
The standard library ships with every Python, so these prompts are reproducible anywhere
without a download: module and function docstrings become texts to summarize, rewrite, translate
or question, and function bodies become code to explain, review or extend.

The set is deterministic for a given Python version (modules in sorted order, a seeded shuffle)
and never touches the benchmark prompts. ``specd train-prompts --out FILE`` writes it as JSONL
of ``{"question_id", "category", "turns": [text]}``, the format ``specd train-redrafter`` reads.
"""

from __future__ import annotations

import ast
import functools
import json
import random
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

# (category, template); {text} is a docstring paragraph, {code} a function's source, {name} its name.
_DOC_TEMPLATES = (
    ("summarization", "Summarize the following passage in two or three sentences:\n\n{text}"),
    ("rewriting", "Rewrite this text so that a beginner can understand it:\n\n{text}"),
    ("extraction", "List the key facts stated in this text as bullet points:\n\n{text}"),
    ("qa", "Read the text and write three questions it answers, each with its answer:\n\n{text}"),
    ("translation", "Translate the following text into French:\n\n{text}"),
    ("writing", "Write a short blog post introducing this idea to programmers:\n\n{text}"),
)
_CODE_TEMPLATES = (
    ("coding", "Explain what this Python function does, step by step:\n\n```python\n{code}\n```"),
    ("coding", "Review this Python function and suggest improvements:\n\n```python\n{code}\n```"),
    ("coding", "Write unit tests with pytest for this function:\n\n```python\n{code}\n```"),
    ("coding", "Write a Python function `{name}` that does the following: {text}"),
)
_MAX_CODE_LINES = 30
_MAX_TEXT_CHARS = 1200


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


_SKIP_DIRS = {"test", "tests", "idlelib", "lib2to3", "site-packages", "ensurepip", "turtledemo", "__pycache__"}


def _modules(root: Path) -> Iterator[Path]:
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if not any(p in _SKIP_DIRS or p.startswith("_") for p in parts):
            yield path


def _paragraph(doc: str) -> str:
    """The docstring's first paragraph of prose (at least 120 characters, mostly letters), or ''."""
    for block in doc.strip().split("\n\n"):
        text = " ".join(line.strip() for line in block.splitlines()).strip()
        letters = sum(c.isalpha() or c.isspace() for c in text)
        if len(text) >= 120 and letters >= 0.85 * len(text) and not text.startswith((">>>", "..", "-", "=")):
            return text[:_MAX_TEXT_CHARS]
    return ""


def _items(path: Path) -> Iterator[tuple[str, str, str]]:
    """(kind, text, code/name) items of one module: its docstring, and documented short functions."""
    try:
        source = path.read_text(encoding="utf-8")
        tree = ast.parse(source)
    except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
        return
    text = _paragraph(ast.get_docstring(tree) or "")
    if text:
        yield "doc", text, ""
    lines = source.splitlines()
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef) and not node.name.startswith("_"):
            text = _paragraph(ast.get_docstring(node) or "")
            if text:
                yield "doc", text, ""
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        end = node.end_lineno or node.lineno
        if not 4 <= end - node.lineno + 1 <= _MAX_CODE_LINES:
            continue
        doc = ast.get_docstring(node) or ""
        first = doc.strip().split("\n\n")[0].replace("\n", " ").strip()
        code = "\n".join(lines[node.lineno - 1 : end])
        yield "code", first, f"{node.name}\n{code}"


@functools.cache
def _corpus(root: Path) -> tuple[tuple[str, ...], tuple[tuple[str, str, str], ...]]:
    """(docstring paragraphs, (description, name, source) of short functions) under ``root``."""
    docs: list[str] = []
    codes: list[tuple[str, str, str]] = []
    for path in _modules(root):
        for kind, text, extra in _items(path):
            if kind == "doc":
                docs.append(text)
            else:
                name, _, code = extra.partition("\n")
                codes.append((text, name, code))
    return tuple(docs), tuple(codes)


def build_prompts(count: int, seed: int = 0, root: Path | None = None) -> list[dict[str, object]]:
    """``count`` prompts (fewer if the library runs out), deterministic for ``seed`` and the Python version."""
    rng = random.Random(seed)
    corpus_docs, corpus_codes = _corpus(root or stdlib_dir())
    docs, codes = list(corpus_docs), list(corpus_codes)
    rng.shuffle(docs)
    rng.shuffle(codes)
    prompts: list[dict[str, object]] = []
    doc_i = code_i = 0
    while len(prompts) < count and (doc_i < len(docs) or code_i < len(codes)):
        n = len(prompts)
        if n % 2 == 0 and doc_i < len(docs):
            category, template = _DOC_TEMPLATES[(n // 2) % len(_DOC_TEMPLATES)]
            turn = template.format(text=docs[doc_i])
            doc_i += 1
        elif code_i < len(codes):
            text, name, code = codes[code_i]
            code_i += 1
            category, template = _CODE_TEMPLATES[(n // 2) % len(_CODE_TEMPLATES)]
            if "{name}" in template and len(text) < 20:  # needs a real description
                category, template = _CODE_TEMPLATES[0]
            turn = template.format(code=code, name=name, text=text)
        else:
            category, template = _DOC_TEMPLATES[n % len(_DOC_TEMPLATES)]
            turn = template.format(text=docs[doc_i])
            doc_i += 1
        prompts.append({"question_id": f"stdlib-{len(prompts)}", "category": category, "turns": [turn]})
    return prompts


KINDS = ("stdlib", "chat")


def write_prompts(out: Path, count: int, seed: int = 0, kind: str = "stdlib") -> int:
    """Write ``count`` prompts of ``kind`` (``stdlib``: this module; ``chat``: ``chat_prompts.py``) as JSONL."""
    if kind == "chat":
        from draft_service.chat_prompts import build_chat_prompts

        prompts = build_chat_prompts(count, seed)
        source = "everyday chat templates (draft_service/chat_prompts.py)"
    elif kind == "stdlib":
        prompts = build_prompts(count, seed)
        source = f"the Python {sys.version_info.major}.{sys.version_info.minor} standard library"
    else:
        raise ValueError(f"unknown prompt kind {kind!r}; expected one of {', '.join(KINDS)}")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w") as fh:
        for row in prompts:
            fh.write(json.dumps(row) + "\n")
    print(f"wrote {len(prompts)} prompts built from {source} to {out}")
    return len(prompts)
