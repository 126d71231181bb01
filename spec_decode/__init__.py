"""Speculative-decoding primitives shared by every specd service.

Value types at the seams (:mod:`spec_decode.types`), draft-tree utilities
(:mod:`spec_decode.tree`), logit warping (:mod:`spec_decode.sampling`), the acceptance
rules as pure functions (:mod:`spec_decode.acceptance`), model loading
(:mod:`spec_decode.models`), timing/counters (:mod:`spec_decode.stats`) and the domain
errors that servicers map to gRPC status codes (:mod:`spec_decode.errors`).

Nothing here imports protobuf or gRPC.
"""
