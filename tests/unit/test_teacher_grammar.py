"""llama.cpp's grammar parser recurses once per character of a maxLength: long limits must not reach it."""

from pydantic import BaseModel, Field

from tasks.teacher.llama_cpp import GRAMMAR_MAX_REPEAT, grammar_safe


class Long(BaseModel):
    short: str = Field(max_length=50)
    long: str = Field(max_length=5000)
    items: list[str] = Field(max_length=3)


def test_long_limits_are_dropped_short_ones_kept():
    schema = grammar_safe(Long.model_json_schema())
    assert schema["properties"]["short"]["maxLength"] == 50
    assert "maxLength" not in schema["properties"]["long"]
    assert schema["properties"]["items"]["maxItems"] == 3
    assert GRAMMAR_MAX_REPEAT <= 400
    assert Long.model_json_schema()["properties"]["long"]["maxLength"] == 5000  # the original is untouched
