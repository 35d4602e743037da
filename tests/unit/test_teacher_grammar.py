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
    assert GRAMMAR_MAX_REPEAT <= 800  # ~1200 overflows llama.cpp's parser (see test_teacher_llama)
    assert Long.model_json_schema()["properties"]["long"]["maxLength"] == 5000  # the original is untouched


class Scored(BaseModel):
    rating: int = Field(ge=0, le=10)
    score: float = Field(ge=0, le=1)
    count: int = Field(ge=0)  # one bound only: left to the grammar's plain integer
    huge: int = Field(ge=0, le=10**6)  # too many values to list


def test_bounded_numbers_are_decoded_as_their_values():
    original = Scored.model_json_schema()
    schema = grammar_safe(original)
    props = schema["properties"]
    assert props["rating"]["enum"] == list(range(11))
    score = props["score"]["enum"]
    # every value on the 0.01 grid, and the whole ones written both ways ("1" and "1.0")
    assert [type(v) for v in score if v in (0, 1)] == [int, int, float, float] and len(score) == 103
    assert {0.01, 0.37, 0.5, 0.99} <= set(score)
    assert all(0 <= value <= 1 for value in score) and 0.505 not in score
    assert "enum" not in props["count"] and "enum" not in props["huge"]
    assert props["rating"]["minimum"] == 0 and props["rating"]["maximum"] == 10  # the bounds stay
    assert "enum" not in original["properties"]["rating"]


def test_the_bounded_schema_compiles_to_a_grammar_that_lists_the_values():
    import json

    from llama_cpp.llama_grammar import LlamaGrammar

    grammar = LlamaGrammar.from_json_schema(json.dumps(grammar_safe(Scored.model_json_schema())), verbose=False)
    rules = dict(line.split(" ::= ", 1) for line in grammar._grammar.splitlines() if " ::= " in line)
    assert rules["rating"] == " | ".join(f'"{n}"' for n in range(11))
    assert '"0.37"' in rules["score"] and '"1.0"' in rules["score"] and '"1.01"' not in rules["score"]


def test_the_json_grammar_keeps_the_schema_field_order_and_keeps_control_characters_out_of_strings():
    from tasks.synthesize.review import ReviewOutput
    from tasks.teacher.llama_cpp import json_grammar

    rules = json_grammar(ReviewOutput.model_json_schema())._grammar
    root = next(line for line in rules.splitlines() if line.startswith("root ::="))
    fields = ["summary", "strengths", "weaknesses", "questions", "rating"]  # as the student was trained
    assert [root.index(f"{name}-kv") for name in fields] == sorted(root.index(f"{name}-kv") for name in fields)
    char = next(line for line in rules.splitlines() if line.startswith("char ::="))
    assert r"\x00-\x1F" in char
