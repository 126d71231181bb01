"""The orchestrator: runs draft -> verify -> accept -> advance and serves clients.

``loop`` holds the decode loop as named phases, ``service`` the request-level domain
object, ``transports`` the gRPC clients of the draft and target services (the in-process
alternative is the domain objects themselves), ``servicer``/``server`` the gRPC front door.
"""
