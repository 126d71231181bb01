"""CPU kernels shared by the services: linear-layer weight formats (``linear``), the exact int8
kernels (``q8``) and the per-layer C ops (``cpu_ops``), built on first use from ``csrc/``.

The target's engine runs every layer on them; the draft service runs a ReDrafter head's LM head
on them. Imports torch and ``spec_decode.errors`` only.
"""
