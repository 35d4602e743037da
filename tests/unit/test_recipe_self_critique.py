"""self-critique: seed instructions, the pairwise judge with position swap, win rate, pair yield."""

import json
import math
from pathlib import Path

import pytest

from tasks.collect.sources import read_instructions
from tasks.synthesize.instructions import (
    COMPLETION_LEAD,
    instruction_prompt,
    select_instructions,
    synthesize_instructions,
)
from tasks.validate.judge import (
    combine_verdicts,
    judge_messages,
    judge_pair,
    judge_predictions,
    side_of,
    win_rate,
)
from tasks.validate.tasks import with_context

SEEDS = Path(__file__).resolve().parents[2] / "data" / "sample" / "instructions" / "seed_instructions.jsonl"


def test_seed_file_is_valid_and_covers_every_type_with_provenance():
    instructions, rejected = read_instructions(SEEDS)
    assert not rejected and len(instructions) == 90
    assert {i.type for i in instructions} == {"qa", "completion", "generation", "response"}
    rows = [json.loads(line) for line in SEEDS.read_text().splitlines()]
    assert all(row["origin"] and row["license"] for row in rows)
    assert len({row["id"] for row in rows}) == len(rows)


def test_instruction_prompt_adds_a_lead_only_to_completions():
    assert instruction_prompt({"type": "qa", "prompt": " What is X? "}) == "What is X?"
    assert instruction_prompt({"type": "completion", "prompt": "Once"}) == f"{COMPLETION_LEAD}\n\nOnce"


def test_select_instructions_interleaves_types_and_is_stable():
    items = [{"id": f"{kind}{n}", "type": kind, "prompt": "p"} for kind in ("qa", "response") for n in range(5)]
    chosen = select_instructions(items, 4)
    assert [c["type"] for c in chosen].count("qa") == 2 and len(chosen) == 4
    assert chosen == select_instructions(list(reversed(items)), 4)
    assert select_instructions(items, 0) == [] and len(select_instructions(items, 50)) == 10


def test_synthesize_instructions_rejects_empty_responses():
    from tasks.core.recipe import SynthesizeConfig, TeacherConfig
    from tasks.teacher.base import Completion

    class Teacher:
        name = "fake:t"

        def complete(self, request):
            return Completion(text="" if "empty" in request.messages[-1].content else "An answer.")

        def map(self, fn, items, concurrency=None, progress=None):
            return [fn(i) for i in items]

    items = [{"id": "a", "type": "qa", "prompt": "fine"}, {"id": "b", "type": "qa", "prompt": "empty"}]
    examples, rejected = synthesize_instructions(items, SynthesizeConfig(generator="instructions", max_items=5,
                                                                         system_prompt="sys"), TeacherConfig(), Teacher())
    assert [e.id for e in examples] == ["instruction:a"] and examples[0].metadata["type"] == "qa"
    assert rejected == [{"item": "b", "reason": "empty response"}]


@pytest.mark.parametrize("better, candidate_is_a, side", [
    ("A", True, "candidate"), ("B", True, "base"), ("A", False, "base"), ("B", False, "candidate"),
    ("tie", True, "tie"), (None, False, "tie")])
def test_side_of(better, candidate_is_a, side):
    assert side_of(better, candidate_is_a) == side


@pytest.mark.parametrize("candidate_first, base_first, outcome", [
    ("A", "B", "candidate"),   # both orders prefer the candidate
    ("B", "A", "base"),        # both orders prefer the base
    ("A", "A", "tie"),         # always the first position: position bias, not quality
    ("B", "B", "tie"),         # always the second position
    ("A", "tie", "tie"),
    ("tie", "tie", "tie"),
    (None, "B", "tie"),        # one order's verdict never validated
])
def test_combine_verdicts_counts_only_order_consistent_preferences(candidate_first, base_first, outcome):
    assert combine_verdicts(candidate_first, base_first) == outcome


def test_win_rate():
    assert win_rate(["candidate", "base", "tie", "tie"]) == pytest.approx(0.5)
    assert win_rate(["candidate", "candidate", "tie"]) == pytest.approx(5 / 6)
    assert math.isnan(win_rate([]))


class _PositionBiasedTeacher:
    """Always prefers answer A unless told otherwise: the swap must turn that into ties."""

    name = "fake:judge"

    def __init__(self, prefer=None):
        self.calls = []
        self.prefer = prefer

    def structured(self, messages, output, **_):
        user = messages[-1].content
        self.calls.append(user)
        answer_a = user.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]
        better = "A" if self.prefer is None else ("A" if answer_a == self.prefer else "B")
        return output(reason="r", better=better), None

    def map(self, fn, items, concurrency=None, progress=None):
        return [fn(i) for i in items]


def test_judge_pair_swaps_positions_and_neutralises_position_bias():
    teacher = _PositionBiasedTeacher()
    result = judge_pair(teacher, "Q?", "candidate answer", "base answer")
    assert result["outcome"] == "tie" and not result["consistent"]
    assert len(teacher.calls) == 2
    assert "[Answer A]\ncandidate answer" in teacher.calls[0] and "[Answer A]\nbase answer" in teacher.calls[1]
    fair = _PositionBiasedTeacher(prefer="candidate answer")
    assert judge_pair(fair, "Q?", "candidate answer", "base answer")["outcome"] == "candidate"


def test_judge_pair_identical_answers_tie_without_a_call():
    teacher = _PositionBiasedTeacher()
    assert judge_pair(teacher, "Q?", "same  answer", "same answer\n")["outcome"] == "tie"
    assert teacher.calls == []


def test_judge_predictions_pairs_by_id_and_summarises():
    heldout = [{"id": i, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"Q{i}"},
                                      {"role": "assistant", "content": "ref"}]} for i in ("a", "b", "c")]
    candidate = [{"id": "a", "prediction": "good"}, {"id": "b", "prediction": "good"}, {"id": "z", "prediction": "x"}]
    base = [{"id": "a", "prediction": "bad"}, {"id": "b", "prediction": "good"}]
    summary, rows = judge_predictions(_PositionBiasedTeacher(prefer="good"), heldout, candidate, base)
    assert [r["id"] for r in rows] == ["a", "b"]
    assert summary["judge_wins"] == 1 and summary["judge_ties"] == 1 and summary["win_rate"] == pytest.approx(0.75)
    assert summary["judge_pairs"] == 2 and summary["judge_position_consistency"] == 1.0
    assert "Q" in judge_messages("Q", "x", "y")[-1].content


def test_with_context_adds_win_rate_and_pair_yield():
    candidate, base = with_context({"rouge_l": 0.2}, {"rouge_l": 0.1}, {"win_rate": 0.7, "judge_ties": 2.0,
                                                                        "teacher_calls": 8}, {"pair_yield": 0.4})
    assert candidate == {"rouge_l": 0.2, "win_rate": 0.7, "judge_ties": 2.0, "pair_yield": 0.4}
    assert base == {"rouge_l": 0.1, "win_rate": 0.5}
    assert with_context({"a": 1}, {"a": 2}, None, None) == ({"a": 1}, {"a": 2})


class _LoopTeacher:
    """Critiques and improves; the judge grades the original 3 and cannot grade the improvement."""

    def structured(self, messages, output, **_):
        from tasks.pairs.build import Critique, Evaluation, Improved

        if output is Critique:
            return Critique(problems=["too vague"], suggestion="Name the test."), None
        if output is Improved:
            return Improved(response="Use a two-sample t-test on the means."), None
        assert output is Evaluation
        if "t-test" in messages[-1].content:
            return None, "output cut off at max_tokens"
        return Evaluation(score=3, reason="Vague."), None


class _Student:
    def complete(self, request):
        from tasks.teacher.base import Completion

        return Completion(text="Compare them somehow.")


def test_a_pair_trace_says_why_an_answer_was_not_graded():
    from tasks.core.recipe import PairsConfig, TeacherConfig
    from tasks.pairs.build import build_pair

    item = {"id": "q1", "prompt": [{"role": "user", "content": "How do I compare two group means?"}]}
    pair, trace = build_pair(item, _Student(), _LoopTeacher(), PairsConfig(), TeacherConfig())
    assert pair is None
    assert trace["original_score"] == 3 and trace["improved_score"] is None
    assert trace["improved_evaluation"] == "output cut off at max_tokens"
    assert "original_evaluation" not in trace
