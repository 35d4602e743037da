"""The longest JSON a schema allows: how many tokens a grammar-constrained answer can need.

A structured request whose ``max_tokens`` is below its schema's worst case can be cut off mid-JSON and
wasted (a small model filling a 160-character reason with one-token digits did exactly that). Counting
one token per character is the worst case a BPE tokenizer can produce, so a request sized to
:func:`worst_case_chars` is never cut off by its budget. The count follows llama.cpp's JSON grammar:
at most one space between tokens, every declared property possibly present.
"""

from __future__ import annotations

import json
from typing import Any

# llama.cpp's grammar for an unbounded integer allows a sign and 16 digits; a number adds a fraction
# of up to 16 digits and an exponent.
INTEGER_CHARS = 18
NUMBER_CHARS = 54


def worst_case_chars(schema: dict[str, Any]) -> int | None:
    """The most characters a JSON value following ``schema`` can take, or None when unbounded
    (a string without ``maxLength``, an array without ``maxItems``, a free-form object)."""
    return _chars(schema, schema.get("$defs", {}))


def _chars(schema: dict[str, Any], defs: dict[str, Any]) -> int | None:
    if "$ref" in schema:
        return _chars(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "const" in schema:
        return len(json.dumps(schema["const"]))
    if "enum" in schema:
        return max(len(json.dumps(value)) for value in schema["enum"])
    for key in ("anyOf", "oneOf"):
        if key in schema:
            return _most([_chars(option, defs) for option in schema[key]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return _most([_chars({**schema, "type": one}, defs) for one in kind])
    if kind == "string":
        return None if "maxLength" not in schema else schema["maxLength"] + 2
    if kind in ("integer", "number"):
        low, high = schema.get("minimum"), schema.get("maximum")
        if kind == "integer" and low is not None and high is not None:
            return max(len(str(int(low))), len(str(int(high))))
        return INTEGER_CHARS if kind == "integer" else NUMBER_CHARS
    if kind == "boolean":
        return 5
    if kind == "null":
        return 4
    if kind == "array":
        item, count = _chars(schema.get("items", {}), defs), schema.get("maxItems")
        if item is None or count is None:
            return None
        return 2 + count * (item + 2)  # brackets; a comma and a space after each item
    if kind == "object" and schema.get("properties"):
        values = [_chars(value, defs) for value in schema["properties"].values()]
        if any(value is None for value in values):
            return None
        keys = sum(len(json.dumps(name)) + 2 for name in schema["properties"])  # "name": (colon, space)
        return 2 + keys + sum(values) + 2 * len(values)  # braces; a comma and a space after each value
    return None


def _most(values: list[int | None]) -> int | None:
    return None if not values or any(value is None for value in values) else max(values)
