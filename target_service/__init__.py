"""The target service's domain code: a tree-scoring engine, per-session state, the verifier.

``engine.TreeEngine`` runs the target model (prefill, one pass over a draft tree, KV commit);
``sessions.SessionStore`` holds per-session state under LRU and context caps;
``verifier.TargetVerifier`` implements :class:`spec_decode.api.TargetAPI` on top of both.
No gRPC here: servicers convert messages and call the verifier.
"""
