"""Security tests. A package, so its conftest is ``security.conftest`` and does not take over
the module name ``conftest`` that other folders import helpers from."""
