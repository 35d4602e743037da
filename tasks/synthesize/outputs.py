"""The JSON schema of the student's output, per generator (None for free-text outputs).

Validation constrains generation with it (llama.cpp grammar, as Ollama's ``format`` does when
served), and deploy smoke-tests the served model with it.
"""

from __future__ import annotations

from typing import Any


def output_schema(generator: str, output_format: str) -> dict[str, Any] | None:
    """The schema a JSON recipe's answers follow; None for text recipes or generators without one."""
    if output_format != "json":
        return None
    if generator == "review":
        from tasks.synthesize.review import ReviewOutput

        return ReviewOutput.model_json_schema()
    if generator == "profile_labels":
        from tasks.synthesize.profiles import ProfileScore

        return ProfileScore.model_json_schema()
    return None
