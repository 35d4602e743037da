"""Pairwise judge: the teacher compares the candidate's and the base's answers to held-out prompts.

Every pair is judged twice with the answers in swapped positions (A/B, then B/A): LLM judges prefer a
position, and a preference that flips with the order is a position preference, not a quality one.
The candidate wins a pair only when both orders prefer it, loses only when both prefer the base, and
ties otherwise (MT-Bench's conservative rule). ``win_rate`` = (wins + ties / 2) / judged pairs, so
0.5 means "no better than the base". Identical answers tie without a call; a verdict that never
validates counts as a tie for that order. Formatting and the decision rules are pure.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.teacher.base import ChatMessage, messages

Side = Literal["candidate", "base", "tie"]

JUDGE_SYSTEM = ("You are an impartial judge. Compare two answers to the same instruction and decide which one "
                "follows the instruction better: correct, helpful, clear and complete. Ignore the order in which "
                "the answers are shown and their length. Reply in JSON.")


class Verdict(BaseModel):
    reason: str = Field(description="One sentence comparing the two answers.", max_length=200)
    better: Literal["A", "B", "tie"] = Field(description="The better answer: A, B, or tie.")


def judge_messages(instruction: str, answer_a: str, answer_b: str) -> tuple[ChatMessage, ...]:
    return messages(("system", JUDGE_SYSTEM),
                    ("user", f"Instruction:\n{instruction}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}"))


def side_of(better: str | None, candidate_is_a: bool) -> Side:
    """Which model one verdict prefers, given where the candidate's answer was shown."""
    if better == "A":
        return "candidate" if candidate_is_a else "base"
    if better == "B":
        return "base" if candidate_is_a else "candidate"
    return "tie"


def combine_verdicts(candidate_first: str | None, base_first: str | None) -> Side:
    """The outcome of a pair judged in both orders: a side wins only when both orders agree on it.

    Args:
        candidate_first: the verdict (A, B, tie or None) with the candidate shown as A.
        base_first: the verdict with the base shown as A (positions swapped).
    """
    first, second = side_of(candidate_first, True), side_of(base_first, False)
    return first if first == second else "tie"


def win_rate(outcomes: list[Side]) -> float:
    """(wins + ties / 2) / pairs; NaN for no pairs."""
    if not outcomes:
        return float("nan")
    return (outcomes.count("candidate") + 0.5 * outcomes.count("tie")) / len(outcomes)


def judge_summary(outcomes: list[Side], position_consistent: int) -> dict[str, float]:
    n = len(outcomes)
    return {"win_rate": win_rate(outcomes), "judge_wins": float(outcomes.count("candidate")),
            "judge_losses": float(outcomes.count("base")), "judge_ties": float(outcomes.count("tie")),
            "judge_pairs": float(n),
            "judge_position_consistency": position_consistent / n if n else float("nan")}


def judge_pair(teacher: Any, instruction: str, candidate: str, base: str, max_tokens: int = 128,
               seed: int = 0, max_repairs: int = 1) -> dict[str, Any]:
    """Judge one pair in both orders; returns the outcome and both raw verdicts."""
    if " ".join(candidate.split()) == " ".join(base.split()):
        return {"outcome": "tie", "candidate_first": None, "base_first": None, "identical": True,
                "consistent": True}
    verdicts = []
    for answer_a, answer_b in ((candidate, base), (base, candidate)):
        verdict, _ = teacher.structured(judge_messages(instruction, answer_a, answer_b), Verdict, temperature=0.0,
                                        max_tokens=max_tokens, seed=seed, max_repairs=max_repairs)
        verdicts.append(verdict.better if verdict is not None else None)
    outcome = combine_verdicts(verdicts[0], verdicts[1])
    consistent = side_of(verdicts[0], True) == side_of(verdicts[1], False)
    return {"outcome": outcome, "candidate_first": verdicts[0], "base_first": verdicts[1], "identical": False,
            "consistent": consistent}


def judge_predictions(teacher: Any, heldout: list[dict[str, Any]], candidate: list[dict[str, Any]],
                      base: list[dict[str, Any]], max_tokens: int = 128, seed: int = 0, max_repairs: int = 1,
                      progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Judge the candidate's against the base's prediction for every held-out id both answered."""
    prompts = {row["id"]: row["messages"][-2]["content"] for row in heldout}
    base_by_id = {row["id"]: row["prediction"] for row in base}
    items = [(row["id"], row["prediction"]) for row in candidate if row["id"] in base_by_id and row["id"] in prompts]

    def one(item: tuple[str, str]) -> dict[str, Any]:
        example_id, answer = item
        return {"id": example_id, **judge_pair(teacher, prompts[example_id], answer, base_by_id[example_id],
                                               max_tokens, seed, max_repairs)}

    rows = teacher.map(one, items, concurrency=1, progress=progress)
    outcomes: list[Side] = [row["outcome"] for row in rows]
    return judge_summary(outcomes, sum(1 for row in rows if row["consistent"])), rows
