"""The ``specd`` command line: run services, the local stack, generate, benchmark."""
