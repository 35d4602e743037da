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
from tasks.validate.judge import grade

CRITIC_SYSTEM = ("You are a strict reviewer. Check the answer against each principle of this constitution "
                 "and list the concrete problems where it falls short, then one suggestion.")
IMPROVER_SYSTEM = ("You rewrite answers so that they follow every principle of this constitution, fixing every "
                   "problem a reviewer found. Keep what was right. Reply with the improved answer only, inside "
                   "the JSON.")


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
                    ("user", (f"Question:\n{question}\n\nAnswer:\n{answer}\n\nProblems:\n{problems}\n"
                              f"Suggestion: {critique.suggestion}")))


def build_pair(item: dict[str, Any], student: Any, teacher: Any, config: PairsConfig,
               teacher_config: TeacherConfig, min_chars: int) -> tuple[PreferencePair | None, dict[str, Any]]:
    """Run one prompt through the loop. Returns the pair (or None) and a trace for the report.

    Each answer is graded alone by the teacher, as validation's judge grades (:func:`tasks.validate.judge.grade`:
    the probability it gives "yes" to "is this a good answer to the instruction?", or a JSON yes/no where
    the provider gives no log-probabilities), and succeeds at ``pass_grade`` or above. It replaced a 1-10
    score with a reason: Qwen2.5-Coder-1.5B scored all 16 answers of a run 10 (the decision was always
    "both succeed"), and the reason cost ~45 generated tokens a grade where a reading costs one.
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
    grades, failures = [], {}
    for side, answer in (("original", original), ("improved", improved)):
        value, how = grade(teacher, question, answer, seed=teacher_config.seed,
                           max_repairs=teacher_config.max_repairs)
        if how == "invalid":
            grades.append(None)
            failures[f"{side}_evaluation"] = "the grade's JSON verdict never validated"
        else:
            grades.append(round(value, 4))
    problems = {side: quality_problem(question, answer, min_chars)
                for side, answer in (("original", original), ("improved", improved))}
    ok = [False if problems[side] else None if value is None else value >= config.pass_grade
          for side, value in zip(("original", "improved"), grades)]
    decision, why = decide_pair(original, improved, ok[0], ok[1])
    trace.update(decision=decision, reason=why, original_grade=grades[0], improved_grade=grades[1], **failures,
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
                  "original_grade": grades[0], "improved_grade": grades[1], "type": item.get("type", "qa")},
    )
    return pair, trace


def grade_summary(traces: list[dict[str, Any]]) -> dict[str, float | int]:
    """How the teacher graded the loop's answers: the mean grade of the originals and of the improvements
    (over the prompts where both were graded) and in how many the improvement graded lower, a sign that
    the improver is not improving (the pair rules still choose it when both pass)."""
    graded = [t for t in traces if t.get("original_grade") is not None and t.get("improved_grade") is not None]
    if not graded:
        return {}
    return {"grade_original_mean": round(sum(t["original_grade"] for t in graded) / len(graded), 4),
            "grade_improved_mean": round(sum(t["improved_grade"] for t in graded) / len(graded), 4),
            "improved_graded_lower": sum(t["improved_grade"] < t["original_grade"] for t in graded)}


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
