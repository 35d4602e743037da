"""The judge: the teacher compares the candidate's and the base's answers to held-out prompts.

Two methods (``validate.judge_method``):

- ``grade`` (the default): each answer is graded on its own, without the other in sight, as the
  probability the judge gives "yes" (out of yes and no) to "is this a good answer to the
  instruction?" (P(True) grading, Kadavath et al. 2022). The pair's preference for the candidate is
  the chance that it, not the base's, is the good one when exactly one of them is:
  ``g_c (1 - g_b) / (g_c (1 - g_b) + g_b (1 - g_c))``. No position, so no position bias; and small
  judges read answers one at a time far better than side by side (on twelve hand-made pairs,
  Qwen2.5-Coder-1.5B graded the good answer higher in 12 where, asked to compare, it preferred the
  first answer shown, whichever it was).
- ``compare``: every pair is judged twice with the answers in swapped positions (A/B, then B/A):
  LLM judges prefer a position, and averaging the two orders cancels a preference for a position but
  keeps one for an answer.

Where the provider returns log-probabilities, the judge is asked for one token (yes/no, or a letter)
and its probabilities are read (AlpacaEval's weighted win rate does the same): a small judge with a
strong lean still shows which answer it leans to. Otherwise, or when neither token is among the likely
first tokens, the judge writes a JSON verdict with a reason, and the reading is 1, 0 or 0.5 (tie or
invalid). A pair is a win or a loss when its preference is more than ``TIE_MARGIN`` from 0.5, a tie
otherwise (identical answers without a call); ``win_rate`` = (wins + ties / 2) / pairs, so 0.5 means
"no better than the base", and a judge that cannot tell the answers apart leaves it there rather than
adding its noise. ``judge_preference``, the mean preference, is reported beside it. Formatting and the
decision rules are pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.teacher.base import ChatMessage, CompletionRequest, messages

Side = Literal["candidate", "base", "tie"]
JudgeMethod = Literal["grade", "compare"]

JUDGE_SYSTEM = ("You are an impartial judge. Compare two answers to the same instruction and decide which one "
                "follows the instruction better: correct, helpful, clear and complete. Ignore the order in which "
                "the answers are shown and their length.")
VERDICT_REQUEST = "Reply in JSON."
LETTER_REQUEST = "Which answer is better? Reply with one letter: A or B."
GRADE_SYSTEM = ("You are a strict grader. Decide whether the answer follows the instruction: correct, helpful, "
                "clear and complete.")
GRADE_REQUEST = "Is this a good answer to the instruction? Reply with one word: yes or no."

# How many likely first tokens are asked for (OpenAI's maximum): the letters must be among them.
TOP_LOGPROBS = 20
# A pair whose preference is within this of 0.5 counts as a tie in the win/loss counts.
TIE_MARGIN = 0.05
# The base judged against itself: every pair a tie.
BASE_AGAINST_ITSELF: Mapping[str, float] = MappingProxyType({"win_rate": 0.5, "judge_preference": 0.5})


class Verdict(BaseModel):
    reason: str = Field(description="One sentence comparing the two answers.", max_length=200)
    better: Literal["A", "B", "tie"] = Field(description="The better answer: A, B, or tie.")


class Grade(BaseModel):
    reason: str = Field(description="One sentence on the answer.", max_length=200)
    good: Literal["yes", "no"] = Field(description="Is it a good answer to the instruction?")


def judge_messages(instruction: str, answer_a: str, answer_b: str, request: str = VERDICT_REQUEST
                   ) -> tuple[ChatMessage, ...]:
    return messages(("system", f"{JUDGE_SYSTEM} {request}"),
                    ("user", f"Instruction:\n{instruction}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}"))


def grade_messages(instruction: str, answer: str, request: str = GRADE_REQUEST) -> tuple[ChatMessage, ...]:
    return messages(("system", GRADE_SYSTEM),
                    ("user", f"Instruction:\n{instruction}\n\nAnswer:\n{answer}\n\n{request}"))


def token_share(top_logprobs: dict[str, float], first: str, second: str) -> float | None:
    """P(first) / (P(first) + P(second)) from a first token's alternatives, case and surrounding space
    ignored (" A", "a" count as A), or None when neither is among them. One missing beside the other is
    given the least likely listed token's probability, the most it can have: the share leans to the
    listed one no more than it must."""
    mass = {first.upper(): 0.0, second.upper(): 0.0}
    for token, logprob in top_logprobs.items():
        word = token.strip().upper()
        if word in mass:
            mass[word] += math.exp(logprob)
    if not any(mass.values()):
        return None
    floor = math.exp(min(top_logprobs.values()))
    a, b = mass[first.upper()] or floor, mass[second.upper()] or floor
    return a / (a + b)


def letter_share(top_logprobs: dict[str, float]) -> float | None:
    """P(A) / (P(A) + P(B)): :func:`token_share` of the letters."""
    return token_share(top_logprobs, "A", "B")


def grades_preference(candidate: float, base: float) -> float:
    """The chance the candidate is the good one of the two when exactly one is, from each one's
    probability of being good; 0.5 when both are certainly good or certainly bad."""
    candidate_only, base_only = candidate * (1 - base), base * (1 - candidate)
    total = candidate_only + base_only
    return candidate_only / total if total else 0.5


def verdict_share(better: str | None) -> float:
    """A verdict as a preference for answer A: 1, 0, or 0.5 for a tie or no valid verdict."""
    return {"A": 1.0, "B": 0.0}.get(better or "", 0.5)


def side_of(preference: float) -> Side:
    """The side a preference for the candidate counts for."""
    if preference > 0.5 + TIE_MARGIN:
        return "candidate"
    if preference < 0.5 - TIE_MARGIN:
        return "base"
    return "tie"


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def judge_summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    """``win_rate`` = (wins + ties / 2) / pairs and the mean preference (NaN for no pairs), with the counts;
    with the ``grade`` method the mean grade of each side's answers, with ``compare`` how often both
    orders leaned the same way (identical answers count as consistent)."""
    preferences = [row["preference"] for row in rows]
    n = len(preferences)
    sides = [side_of(p) for p in preferences]
    wins = sides.count("candidate") + 0.5 * sides.count("tie")
    summary = {"win_rate": wins / n if n else float("nan"), "judge_preference": _mean(preferences),
               "judge_wins": float(sides.count("candidate")),
               "judge_losses": float(sides.count("base")), "judge_ties": float(sides.count("tie")),
               "judge_pairs": float(n)}
    graded = [row for row in rows if "grade_candidate" in row]
    if graded:
        summary["judge_grade_candidate"] = _mean([row["grade_candidate"] for row in graded])
        summary["judge_grade_base"] = _mean([row["grade_base"] for row in graded])
    if any("consistent" in row for row in rows):
        summary["judge_position_consistency"] = _mean([float(row.get("consistent", True)) for row in rows])
    return summary


def judge_grades(judge: Mapping[str, Any] | None) -> tuple[float, float] | None:
    """The (candidate, base) mean grades of a judge summary, or None (no judge, or the compare method)."""
    judge = judge or {}
    if "judge_grade_candidate" not in judge or "judge_grade_base" not in judge:
        return None
    return judge["judge_grade_candidate"], judge["judge_grade_base"]


def prefer_a(teacher: Any, instruction: str, answer_a: str, answer_b: str, seed: int = 0,
             max_repairs: int = 1) -> tuple[float, str]:
    """The judge's preference for answer A and how it was read: ``probability`` or ``verdict``."""
    letter = teacher.complete(CompletionRequest(
        messages=judge_messages(instruction, answer_a, answer_b, LETTER_REQUEST), temperature=0.0, max_tokens=1,
        seed=seed, top_logprobs=TOP_LOGPROBS))
    share = letter_share(letter.top_logprobs[0]) if letter.top_logprobs else None
    if share is not None:
        return share, "probability"
    verdict, _ = teacher.structured(judge_messages(instruction, answer_a, answer_b), Verdict, temperature=0.0,
                                    seed=seed, max_repairs=max_repairs)
    return verdict_share(verdict.better if verdict is not None else None), "verdict"


def grade(teacher: Any, instruction: str, answer: str, seed: int = 0, max_repairs: int = 1) -> tuple[float, str]:
    """The judge's probability that ``answer`` is a good answer to ``instruction``, and how it was read:
    ``probability`` (of "yes" out of yes and no), ``verdict`` (1 or 0), or ``invalid`` (0.5: the JSON
    verdict never validated)."""
    reply = teacher.complete(CompletionRequest(
        messages=grade_messages(instruction, answer), temperature=0.0, max_tokens=1, seed=seed,
        top_logprobs=TOP_LOGPROBS))
    share = token_share(reply.top_logprobs[0], "yes", "no") if reply.top_logprobs else None
    if share is not None:
        return share, "probability"
    verdict, _ = teacher.structured(grade_messages(instruction, answer, VERDICT_REQUEST), Grade, temperature=0.0,
                                    seed=seed, max_repairs=max_repairs)
    if verdict is None:
        return 0.5, "invalid"
    return {"yes": 1.0, "no": 0.0}[verdict.good], "verdict"


def judge_pair(teacher: Any, instruction: str, candidate: str, base: str, seed: int = 0,
               max_repairs: int = 1, method: JudgeMethod = "grade") -> dict[str, Any]:
    """Judge one pair: each answer graded alone (``grade``), or compared in both orders (``compare``).
    Returns the preference for the candidate and how each reading was made."""
    if " ".join(candidate.split()) == " ".join(base.split()):
        return {"preference": 0.5, "outcome": "tie", "identical": True}
    if method == "grade":
        (grade_candidate, how_candidate), (grade_base, how_base) = (
            grade(teacher, instruction, answer, seed, max_repairs) for answer in (candidate, base))
        preference = grades_preference(grade_candidate, grade_base)
        return {"preference": preference, "outcome": side_of(preference), "identical": False,
                "grade_candidate": grade_candidate, "grade_base": grade_base, "read_as": [how_candidate, how_base]}
    first, how_first = prefer_a(teacher, instruction, candidate, base, seed, max_repairs)
    second, how_second = prefer_a(teacher, instruction, base, candidate, seed, max_repairs)
    candidate_first, base_first = first, 1.0 - second  # both: the preference for the candidate
    preference = (candidate_first + base_first) / 2
    return {"preference": preference, "outcome": side_of(preference), "identical": False,
            "candidate_first": candidate_first, "base_first": base_first, "read_as": [how_first, how_second],
            "consistent": (candidate_first - 0.5) * (base_first - 0.5) > 0}


def judge_predictions(teacher: Any, heldout: list[dict[str, Any]], candidate: list[dict[str, Any]],
                      base: list[dict[str, Any]], seed: int = 0, max_repairs: int = 1,
                      progress: Callable[[int, int], None] | None = None,
                      method: JudgeMethod = "grade") -> tuple[dict[str, float], list[dict]]:
    """Judge the candidate's against the base's prediction for every held-out id both answered."""
    prompts = {row["id"]: row["messages"][-2]["content"] for row in heldout}
    base_by_id = {row["id"]: row["prediction"] for row in base}
    items = [(row["id"], row["prediction"]) for row in candidate if row["id"] in base_by_id and row["id"] in prompts]

    def one(item: tuple[str, str]) -> dict[str, Any]:
        example_id, answer = item
        return {"id": example_id, **judge_pair(teacher, prompts[example_id], answer, base_by_id[example_id],
                                               seed, max_repairs, method)}

    rows = teacher.map(one, items, concurrency=1, progress=progress)
    return judge_summary(rows), rows
