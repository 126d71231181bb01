"""The draft service's domain code: drafters that propose draft trees, and the worker.

One :class:`~draft_service.drafter.Drafter` per session and drafter name:
:mod:`spec_decode.prompt_lookup` (model-free n-gram lookup in the context),
:mod:`draft_service.model_drafter` (a small draft LM with its own KV cache) and
:mod:`draft_service.ouroboros` (either of those lengthened by a shared phrase pool; with a draft
LM it decodes by lookahead decoding, :mod:`draft_service.lookahead`).
:class:`~draft_service.service.DraftWorker` implements :class:`spec_decode.api.DraftAPI`
in-process: per-session token history, offsets, adaptive draft length, LRU eviction.

Nothing here imports protobuf or gRPC; servicers convert messages and call the worker.
"""
