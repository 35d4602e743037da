"""Pairwise judge: the teacher compares the candidate's and the base's answers to held-out prompts.

Every pair is judged twice with the answers in swapped positions (A/B, then B/A): LLM judges prefer a
position, and averaging the two orders cancels a preference for a position but keeps one for an answer.

Each order gives the judge's preference for the candidate, between 0 and 1. Where the provider returns
log-probabilities, the judge is asked for one letter and the preference is the probability it gives
the candidate's letter, out of the two letters (AlpacaEval's weighted win rate does the same): a
small judge with a strong position bias still shows which answer it leans to. Otherwise, or when
neither letter is among the likely first tokens, the judge writes a JSON verdict with a reason, and
the preference is 1, 0 or 0.5 (tie or invalid). The pair's preference is the mean of its two orders.
A pair is a win or a loss when its preference is more than ``TIE_MARGIN`` from 0.5, a tie otherwise
(identical answers without a call); ``win_rate`` = (wins + ties / 2) / pairs, so 0.5 means "no better
than the base", and a judge that cannot tell the answers apart leaves it there rather than adding its
noise. ``judge_preference``, the mean preference, is reported beside it. Formatting and the decision
rules are pure.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.teacher.base import ChatMessage, CompletionRequest, messages

Side = Literal["candidate", "base", "tie"]

JUDGE_SYSTEM = ("You are an impartial judge. Compare two answers to the same instruction and decide which one "
                "follows the instruction better: correct, helpful, clear and complete. Ignore the order in which "
                "the answers are shown and their length.")
VERDICT_REQUEST = "Reply in JSON."
LETTER_REQUEST = "Which answer is better? Reply with one letter: A or B."

# How many likely first tokens are asked for (OpenAI's maximum): the letters must be among them.
TOP_LOGPROBS = 20
# A pair whose preference is within this of 0.5 counts as a tie in the win/loss counts.
TIE_MARGIN = 0.05
# The base judged against itself: every pair a tie.
BASE_AGAINST_ITSELF: Mapping[str, float] = MappingProxyType({"win_rate": 0.5, "judge_preference": 0.5})


class Verdict(BaseModel):
    reason: str = Field(description="One sentence comparing the two answers.", max_length=200)
    better: Literal["A", "B", "tie"] = Field(description="The better answer: A, B, or tie.")


def judge_messages(instruction: str, answer_a: str, answer_b: str, request: str = VERDICT_REQUEST
                   ) -> tuple[ChatMessage, ...]:
    return messages(("system", f"{JUDGE_SYSTEM} {request}"),
                    ("user", f"Instruction:\n{instruction}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}"))


def letter_share(top_logprobs: dict[str, float]) -> float | None:
    """P(A) / (P(A) + P(B)) from a first token's alternatives (" A", "a" count as A), or None when
    neither letter is among them. A letter missing beside the other is given the least likely listed
    token's probability, the most it can have: the share leans to the listed letter no more than it must."""
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in top_logprobs.items():
        letter = token.strip().upper()
        if letter in mass:
            mass[letter] += math.exp(logprob)
    if not mass["A"] and not mass["B"]:
        return None
    floor = math.exp(min(top_logprobs.values()))
    a, b = mass["A"] or floor, mass["B"] or floor
    return a / (a + b)


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


def judge_summary(preferences: list[float], position_consistent: int) -> dict[str, float]:
    """``win_rate`` = (wins + ties / 2) / pairs and the mean preference (NaN for no pairs), with the counts."""
    n = len(preferences)
    sides = [side_of(p) for p in preferences]
    wins = sides.count("candidate") + 0.5 * sides.count("tie")
    return {"win_rate": wins / n if n else float("nan"),
            "judge_preference": sum(preferences) / n if n else float("nan"),
            "judge_wins": float(sides.count("candidate")),
            "judge_losses": float(sides.count("base")), "judge_ties": float(sides.count("tie")),
            "judge_pairs": float(n),
            "judge_position_consistency": position_consistent / n if n else float("nan")}


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


def judge_pair(teacher: Any, instruction: str, candidate: str, base: str, seed: int = 0,
               max_repairs: int = 1) -> dict[str, Any]:
    """Judge one pair in both orders; returns the preference for the candidate and each order's reading."""
    if " ".join(candidate.split()) == " ".join(base.split()):
        return {"preference": 0.5, "outcome": "tie", "identical": True, "consistent": True}
    first, how_first = prefer_a(teacher, instruction, candidate, base, seed, max_repairs)
    second, how_second = prefer_a(teacher, instruction, base, candidate, seed, max_repairs)
    candidate_first, base_first = first, 1.0 - second  # both: the preference for the candidate
    preference = (candidate_first + base_first) / 2
    return {"preference": preference, "outcome": side_of(preference), "identical": False,
            "candidate_first": candidate_first, "base_first": base_first, "read_as": [how_first, how_second],
            "consistent": (candidate_first - 0.5) * (base_first - 0.5) > 0}


def judge_predictions(teacher: Any, heldout: list[dict[str, Any]], candidate: list[dict[str, Any]],
                      base: list[dict[str, Any]], seed: int = 0, max_repairs: int = 1,
                      progress: Callable[[int, int], None] | None = None) -> tuple[dict[str, float], list[dict]]:
    """Judge the candidate's against the base's prediction for every held-out id both answered."""
    prompts = {row["id"]: row["messages"][-2]["content"] for row in heldout}
    base_by_id = {row["id"]: row["prediction"] for row in base}
    items = [(row["id"], row["prediction"]) for row in candidate if row["id"] in base_by_id and row["id"] in prompts]

    def one(item: tuple[str, str]) -> dict[str, Any]:
        example_id, answer = item
        return {"id": example_id, **judge_pair(teacher, prompts[example_id], answer, base_by_id[example_id],
                                               seed, max_repairs)}

    rows = teacher.map(one, items, concurrency=1, progress=progress)
    return judge_summary([row["preference"] for row in rows], sum(1 for row in rows if row["consistent"])), rows
