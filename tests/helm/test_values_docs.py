"""values.yaml documents every key, and values.schema.json covers and constrains every key.

A key is "the chart's" when the schema lists it under `properties`; free-form Kubernetes
objects (resources, securityContext, affinity, ...) are documented as a whole, at their key.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from chart_helpers import CHART

# Kubernetes objects the schema shapes (closed, optional keys) but the chart does not define.
KUBERNETES_DEFINITIONS = {"#/definitions/resources"}
KEY_LINE = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w.-]*):(?P<rest>.*)$")


def keys_with_comment_above() -> dict[tuple[str, ...], bool]:
    """Every mapping key of values.yaml (by path) → whether a comment line sits directly above it."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    stack: list[tuple[int, str]] = []
    found: dict[tuple[str, ...], bool] = {}
    for i, line in enumerate(lines):
        m = KEY_LINE.match(line)
        if m is None:
            continue
        indent = len(m["indent"])
        while stack and stack[-1][0] >= indent:
            stack.pop()
        stack.append((indent, m["key"]))
        above = lines[i - 1].strip() if i > 0 else ""
        found[tuple(k for _, k in stack)] = above.startswith("#")
    return found


def chart_keys(schema: dict[str, Any], root: dict[str, Any], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Key paths the schema defines: (path, ...) for every property, recursing into objects
    that list their properties (resolving $ref)."""
    if schema.get("$ref") in KUBERNETES_DEFINITIONS:
        return []
    if "$ref" in schema:
        schema = root["definitions"][schema["$ref"].rsplit("/", 1)[1]]
    out = []
    for key, sub in schema.get("properties", {}).items():
        out.append((*path, key))
        out.extend(chart_keys(sub, root, (*path, key)))
    return out


def schema_node(schema: dict[str, Any], path: tuple[str, ...]) -> dict[str, Any]:
    node = schema
    for key in path:
        node = node["properties"][key]
        if node.get("$ref") in KUBERNETES_DEFINITIONS:
            return {}
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    return node


def test_every_value_is_documented():
    schema = json.loads((CHART / "values.schema.json").read_text())
    documented = keys_with_comment_above()
    missing = []
    for path in chart_keys(schema, schema):
        if path == ("global",):  # Helm's own, not in values.yaml
            continue
        assert path in documented, f"{'.'.join(path)} is in the schema but not in values.yaml"
        is_header = "properties" in schema_node(schema, path)  # its keys carry the docs
        if not is_header and not documented[path]:
            missing.append(".".join(path))
    assert not missing, f"values.yaml keys without a comment directly above: {missing}"


def test_schema_constrains_every_value_yaml_key():
    """Every object the chart defines is closed (additionalProperties false) and lists every key
    as required, so a typo or a deleted key fails `helm install`."""
    schema = json.loads((CHART / "values.schema.json").read_text())
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def walk(node: dict[str, Any], value: Any, where: str) -> None:
        if node.get("$ref") in KUBERNETES_DEFINITIONS:
            return
        if "$ref" in node:
            node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        if "properties" not in node:
            return
        assert node.get("additionalProperties") is False, f"{where or 'top level'} is open"
        assert set(node["properties"]) - {"global"} == set(value), where
        assert set(node.get("required", [])) == set(value), f"{where}: not every key is required"
        for key, sub in node["properties"].items():
            if key in value:
                walk(sub, value[key], f"{where}.{key}".lstrip("."))

    walk(schema, values, "")
