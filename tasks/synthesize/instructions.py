"""self-critique: a reference response to every seed instruction (qa, completion, generation, response).

The examples carry the instruction as the user turn and the teacher's response as the reference; the
pairs stage then takes their prompts through respond -> critique -> improve -> pair rules, and the
model is trained with DPO only. Formatting is pure; the teacher call is in :func:`synthesize_instructions`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tasks.core.hashing import sha256_json
from tasks.core.recipe import SynthesizeConfig, TeacherConfig
from tasks.synthesize.records import Message, SyntheticExample
from tasks.teacher.base import ChatMessage, CompletionRequest, messages

# Only a completion needs a lead line: the other types' prompts are the question, the task or the
# message itself.
COMPLETION_LEAD = "Continue the text in the same style."


def instruction_prompt(instruction: dict[str, Any]) -> str:
    """The user turn for one seed instruction."""
    prompt = instruction["prompt"].strip()
    return f"{COMPLETION_LEAD}\n\n{prompt}" if instruction.get("type") == "completion" else prompt


def format_instruction(instruction: dict[str, Any], system_prompt: str) -> tuple[ChatMessage, ...]:
    return messages(("system", system_prompt), ("user", instruction_prompt(instruction)))


def select_instructions(instructions: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Up to ``limit`` instructions, interleaving the types so a small run sees every type."""
    by_type: dict[str, list[dict[str, Any]]] = {}
    for item in sorted(instructions, key=lambda i: sha256_json(i["id"])):
        by_type.setdefault(item.get("type", "qa"), []).append(item)
    out: list[dict[str, Any]] = []
    while len(out) < limit and any(by_type.values()):
        for kind in sorted(by_type):
            if by_type[kind] and len(out) < limit:
                out.append(by_type[kind].pop(0))
    return out


def example_from_instruction(instruction: dict[str, Any], response: str, system_prompt: str,
                             teacher_name: str) -> SyntheticExample:
    return SyntheticExample(
        id=f"instruction:{instruction['id']}",
        source=f"teacher:{teacher_name}",
        messages=(Message(role="system", content=system_prompt),
                  Message(role="user", content=instruction_prompt(instruction)),
                  Message(role="assistant", content=response.strip())),
        reference=response.strip(),
        metadata={"type": instruction.get("type", "qa"), "instruction_source": instruction.get("source")},
    )


def synthesize_instructions(instructions: list[dict[str, Any]], config: SynthesizeConfig,
                            teacher_config: TeacherConfig, teacher: Any,
                            progress: Callable[[int, int], None] | None = None,
                            ) -> tuple[list[SyntheticExample], list[dict[str, str]]]:
    """The teacher's response (at the teacher's temperature) to up to ``max_items`` instructions.

    A response cut off by ``teacher.max_tokens`` is rejected: trained on, it teaches the student to stop
    mid-sentence, and as a held-out reference it is not the answer."""

    def one(instruction: dict[str, Any]) -> SyntheticExample | dict[str, str]:
        completion = teacher.complete(CompletionRequest(
            messages=format_instruction(instruction, config.system_prompt), temperature=teacher_config.temperature,
            max_tokens=teacher_config.max_tokens, seed=teacher_config.seed))
        if not completion.text.strip():
            return {"item": instruction["id"], "reason": "empty response"}
        if completion.finish_reason == "length":
            return {"item": instruction["id"], "reason": f"cut off at teacher.max_tokens ({teacher_config.max_tokens})"}
        return example_from_instruction(instruction, completion.text, config.system_prompt, teacher.name)

    examples: list[SyntheticExample] = []
    rejected: list[dict[str, str]] = []
    chosen = select_instructions(instructions, config.max_items)
    for result in teacher.map(one, chosen, concurrency=teacher_config.concurrency, progress=progress):
        (examples if isinstance(result, SyntheticExample) else rejected).append(result)
    return examples, rejected
