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


class _Prompt:
    """One prompt's way through the loop."""

    def __init__(self, item: dict[str, Any]):
        self.item, self.question = item, item["prompt"][-1]["content"]
        self.trace: dict[str, Any] = {"id": item["id"], "type": item.get("type", "qa")}
        self.original = self.improved = ""
        self.critique: Critique | None = None
        self.grades: list[float | None] = []
        self.decided = False  # no pair: an invalid critique or improvement


def _steps(student: Any, teacher: Any, config: PairsConfig, teacher_config: TeacherConfig
           ) -> list[tuple[Any, Callable[[_Prompt], _Prompt]]]:
    """The loop's steps, each with the model it asks: respond (the student), critique, improve, grade."""
    seed, repairs = teacher_config.seed, teacher_config.max_repairs

    def respond(p: _Prompt) -> _Prompt:
        p.original = student.complete(CompletionRequest(
            messages=tuple(ChatMessage(**m) for m in p.item["prompt"]), temperature=config.student_temperature,
            max_tokens=config.max_tokens, seed=seed)).text.strip()
        return p

    def critique(p: _Prompt) -> _Prompt:
        p.critique, reason = teacher.structured(critique_messages(p.question, p.original, config.constitution),
                                                Critique, temperature=config.critique_temperature, seed=seed,
                                                max_repairs=repairs)
        if p.critique is None:
            p.trace.update(decision="no_pair", reason=f"critique invalid: {reason}")
            p.decided = True
        return p

    def improve(p: _Prompt) -> _Prompt:
        if p.decided:
            return p
        imp, reason = teacher.structured(improve_messages(p.question, p.original, p.critique, config.constitution),
                                         Improved, temperature=config.critique_temperature, seed=seed,
                                         max_repairs=repairs)
        if imp is None:
            p.trace.update(decision="no_pair", reason=f"improvement invalid: {reason}")
            p.decided = True
        else:
            p.improved = imp.response.strip()
        return p

    def grade_both(p: _Prompt) -> _Prompt:
        if p.decided:
            return p
        for side, answer in (("original", p.original), ("improved", p.improved)):
            value, how = grade(teacher, p.question, answer, seed=seed, max_repairs=repairs)
            if how == "invalid":
                p.grades.append(None)
                p.trace[f"{side}_evaluation"] = "the grade's JSON verdict never validated"
            else:
                p.grades.append(round(value, 4))
        return p

    return [(student, respond), (teacher, critique), (teacher, improve), (teacher, grade_both)]


STEPS = 4  # respond, critique, improve, grade: build_pairs' progress counts each prompt once a step


def _decide(p: _Prompt, config: PairsConfig, min_chars: int) -> PreferencePair | None:
    """The pair rules on the graded answers: the pair, or None (the trace says why)."""
    if p.decided:
        return None
    original, improved = p.original, p.improved
    problems = {side: quality_problem(p.question, answer, min_chars)
                for side, answer in (("original", original), ("improved", improved))}
    ok = [False if problems[side] else None if value is None else value >= config.pass_grade
          for side, value in zip(("original", "improved"), p.grades)]
    decision, why = decide_pair(original, improved, ok[0], ok[1])
    p.trace.update(decision=decision, reason=why, original_grade=p.grades[0], improved_grade=p.grades[1],
                   **{f"{side}_problem": problem for side, problem in problems.items() if problem})
    if decision == "no_pair":
        return None
    chosen, rejected = (improved, original) if decision == "chosen_improved" else (original, improved)
    return PreferencePair(
        id=f"pair:{p.item['id']}",
        prompt=p.item["prompt"],
        chosen=[{"role": "assistant", "content": chosen}],
        rejected=[{"role": "assistant", "content": rejected}],
        metadata={"critique": p.critique.model_dump(), "decision": decision, "reason": why,
                  "original_grade": p.grades[0], "improved_grade": p.grades[1], "type": p.item.get("type", "qa")},
    )


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
    p = _Prompt(item)
    for _, step in _steps(student, teacher, config, teacher_config):
        step(p)
    return _decide(p, config, min_chars), p.trace


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
    """:func:`build_pair` for every prompt, a step at a time: every answer, then every critique, every
    improvement, every grade. A step's requests share their system turn (the critic's or the improver's
    instructions and constitution, the grader's), which a local teacher keeps from one request to the next
    (``CanonicalPrefix``); and a step's requests go to the teacher ``teacher.concurrency`` at a time.
    A prompt the teacher's budget stopped before has no pair and no trace."""
    loop = [_Prompt(item) for item in prompts]
    for index, (client, step) in enumerate(_steps(student, teacher, config, teacher_config)):
        def report(done: int, total: int, offset: int = index * len(prompts)) -> None:
            progress(offset + done, STEPS * len(prompts))

        finished = client.map(step, loop, concurrency=teacher_config.concurrency,
                              progress=report if progress is not None else None)
        kept = {id(p) for p in finished}
        loop = [p for p in loop if id(p) in kept]
    pairs = [_decide(p, config, min_chars) for p in loop]
    return [pair for pair in pairs if pair is not None], [p.trace for p in loop]
