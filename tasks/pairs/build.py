"""Plain functions of the pairs stage: prompts, the respond/critique/improve/evaluate loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field

from tasks.core.recipe import PairsConfig, TeacherConfig
from tasks.curate.filters import quality_problem
from tasks.pairs.rules import decide_pair
from tasks.teacher.base import ChatMessage, CompletionRequest, messages
from tasks.teacher.llama_cpp import GRAMMAR_MAX_REPEAT

CRITIC_SYSTEM = ("You are a strict reviewer. Check the answer against each principle of this constitution "
                 "and list the concrete problems where it falls short, then one suggestion.")
IMPROVER_SYSTEM = ("You rewrite answers so that they follow every principle of this constitution, fixing every "
                   "problem a reviewer found. Keep what was right. Reply with the improved answer only, inside "
                   "the JSON.")
JUDGE_SYSTEM = ("You grade an answer to a question from 1 (useless or wrong) to 10 (correct, clear, "
                "complete). Be strict and consistent.")


# Length limits are part of the JSON schema, so a grammar-constrained local model cannot ramble and be
# cut off mid-JSON: each request is sized to its schema's worst case (``structured`` without max_tokens;
# with hand-picked budgets 3 to 5 of 10 grades of the 135M teacher were cut off, each costing the prompt
# its pair). The limits stay within what llama.cpp's grammar can enforce (GRAMMAR_MAX_REPEAT): an
# improvement limited to 1200 characters was unbounded in the grammar, and 4 of 10 were cut off.
class Critique(BaseModel):
    problems: list[Annotated[str, Field(max_length=120)]] = Field(description="Concrete problems with the answer.",
                                                                  max_length=3)
    suggestion: str = Field(description="The single most useful change.", max_length=200)


class Improved(BaseModel):
    response: str = Field(description="The improved answer.", max_length=GRAMMAR_MAX_REPEAT)


class Evaluation(BaseModel):
    score: int = Field(description="1 to 10.", ge=1, le=10)
    reason: str = Field(description="One sentence.", max_length=160)


class PreferencePair(BaseModel):
    """One DPO row in trl's conversational format, with the critique kept as metadata."""

    id: str
    prompt: list[dict[str, str]]
    chosen: list[dict[str, str]]
    rejected: list[dict[str, str]]
    metadata: dict[str, Any] = Field(default_factory=dict)


def with_constitution(system: str, constitution: list[str]) -> str:
    """A critic's or improver's instructions followed by the recipe's principles, numbered."""
    return system + "\n\nConstitution:\n" + "\n".join(f"{i}. {rule}" for i, rule in enumerate(constitution, 1))


def critique_messages(question: str, answer: str, constitution: list[str]) -> tuple[ChatMessage, ...]:
    return messages(("system", with_constitution(CRITIC_SYSTEM, constitution)),
                    ("user", f"Question:\n{question}\n\nAnswer:\n{answer}"))


def improve_messages(question: str, answer: str, critique: Critique, constitution: list[str]
                     ) -> tuple[ChatMessage, ...]:
    problems = "\n".join(f"- {p}" for p in critique.problems) or "- (none listed)"
    return messages(("system", with_constitution(IMPROVER_SYSTEM, constitution)),
                    ("user", f"Question:\n{question}\n\nAnswer:\n{answer}\n\nProblems:\n{problems}\n"
                             f"Suggestion: {critique.suggestion}"))


def judge_messages(question: str, answer: str) -> tuple[ChatMessage, ...]:
    return messages(("system", JUDGE_SYSTEM), ("user", f"Question:\n{question}\n\nAnswer:\n{answer}"))


def build_pair(item: dict[str, Any], student: Any, teacher: Any, config: PairsConfig,
               teacher_config: TeacherConfig, min_chars: int) -> tuple[PreferencePair | None, dict[str, Any]]:
    """Run one prompt through the loop. Returns the pair (or None) and a trace for the report.

    An answer curate would not train on (degenerate: shorter than ``min_chars`` or looping; a refusal;
    an injection) fails whatever its grade: the 135M teacher graded an "improvement" reading "The term"
    10 of 10, and DPO on that pair taught the model to stop after a few words.
    """
    prompt = item["prompt"]
    question = prompt[-1]["content"]
    original = student.complete(CompletionRequest(
        messages=tuple(ChatMessage(**m) for m in prompt), temperature=config.student_temperature,
        max_tokens=config.max_tokens, seed=teacher_config.seed)).text.strip()
    trace: dict[str, Any] = {"id": item["id"], "type": item.get("type", "qa")}
    crit, reason = teacher.structured(critique_messages(question, original, config.constitution), Critique,
                                      temperature=config.critique_temperature,
                                      seed=teacher_config.seed, max_repairs=teacher_config.max_repairs)
    if crit is None:
        trace.update(decision="no_pair", reason=f"critique invalid: {reason}")
        return None, trace
    imp, reason = teacher.structured(improve_messages(question, original, crit, config.constitution), Improved,
                                     temperature=config.critique_temperature,
                                     seed=teacher_config.seed, max_repairs=teacher_config.max_repairs)
    if imp is None:
        trace.update(decision="no_pair", reason=f"improvement invalid: {reason}")
        return None, trace
    improved = imp.response.strip()
    scores, failures = [], {}
    for side, answer in (("original", original), ("improved", improved)):
        ev, reason = teacher.structured(judge_messages(question, answer), Evaluation, temperature=0.0,
                                        seed=teacher_config.seed, max_repairs=teacher_config.max_repairs)
        scores.append(None if ev is None else ev.score)
        if ev is None:
            failures[f"{side}_evaluation"] = reason or "invalid output"
    problems = {side: quality_problem(question, answer, min_chars)
                for side, answer in (("original", original), ("improved", improved))}
    ok = [False if problems[side] else None if score is None else score >= config.pass_score
          for side, score in zip(("original", "improved"), scores)]
    decision, why = decide_pair(original, improved, ok[0], ok[1])
    trace.update(decision=decision, reason=why, original_score=scores[0], improved_score=scores[1], **failures,
                 **{f"{side}_problem": problem for side, problem in problems.items() if problem})
    if decision == "no_pair":
        return None, trace
    chosen, rejected = (improved, original) if decision == "chosen_improved" else (original, improved)
    pair = PreferencePair(
        id=f"pair:{item['id']}",
        prompt=prompt,
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        metadata={"critique": crit.model_dump(), "decision": decision, "reason": why,
                  "original_score": scores[0], "improved_score": scores[1], "type": item.get("type", "qa")},
    )
    return pair, trace


def prompts_from_examples(rows: list[dict[str, Any]], limit: int) -> list[dict[str, Any]]:
    """Seed prompts for the loop: the training examples' conversations without the answer."""
    out = []
    for row in sorted(rows, key=lambda r: r["id"])[:limit]:
        prompt = [m for m in row["messages"][:-1]]
        out.append({"id": row["id"], "prompt": prompt, "type": row.get("metadata", {}).get("type", "qa")})
    return out


def build_pairs(prompts: list[dict[str, Any]], student: Any, teacher: Any, config: PairsConfig,
                teacher_config: TeacherConfig, min_chars: int,
                progress: Callable[[int, int], None] | None = None) -> tuple[list[PreferencePair], list[dict]]:
    results = teacher.map(lambda item: build_pair(item, student, teacher, config, teacher_config, min_chars),
                          prompts, concurrency=1, progress=progress)
    pairs = [p for p, _ in results if p is not None]
    traces = [t for _, t in results]
    return pairs, traces
