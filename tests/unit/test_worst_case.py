"""The longest JSON a schema allows: what a structured request is sized to."""

import json
from typing import Annotated, Literal

import pytest
from pydantic import BaseModel, Field

from tasks.pairs.build import Critique, Improved
from tasks.teacher.llama_cpp import GRAMMAR_MAX_REPEAT, grammar_safe
from tasks.teacher.worst_case import worst_case_chars
from tasks.validate.judge import Grade, Verdict


class Inner(BaseModel):
    flag: bool
    note: str | None = Field(default=None, max_length=10)


class Longest(BaseModel):
    label: Literal["short", "a longer label"]
    rating: int = Field(ge=0, le=10)
    share: float = Field(ge=0, le=1)
    items: list[Annotated[str, Field(max_length=5)]] = Field(max_length=2)
    inner: Inner


def test_the_longest_instance_fits_the_worst_case():
    longest = Longest(label="a longer label", rating=10, share=0.99, items=["x" * 5] * 2,
                      inner=Inner(flag=False, note="n" * 10))
    text = json.dumps(longest.model_dump())  # ", " and ": ": a space wherever llama.cpp's grammar allows one
    worst = worst_case_chars(grammar_safe(Longest.model_json_schema()))
    assert len(text) <= worst < 2 * len(text)


@pytest.mark.parametrize("model", [Critique, Improved, Grade, Verdict])
def test_the_teachers_own_schemas_are_bounded_within_the_grammar(model):
    """Each is sized to its worst case; a limit above what llama.cpp enforces would leave it unbounded."""
    worst = worst_case_chars(grammar_safe(model.model_json_schema()))
    assert worst is not None and worst <= GRAMMAR_MAX_REPEAT + 300


@pytest.mark.parametrize("schema", [
    {"type": "string"},
    {"type": "array", "items": {"type": "string", "maxLength": 3}},
    {"type": "object"},
    {"type": "object", "properties": {"a": {"type": "string", "maxLength": GRAMMAR_MAX_REPEAT + 1}}},
])
def test_an_unbounded_schema_has_no_worst_case(schema):
    assert worst_case_chars(grammar_safe(schema)) is None
