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
from tasks.teacher.base import Completion
from tasks.validate.judge import (
    TIE_MARGIN,
    Grade,
    grade,
    grades_preference,
    judge_messages,
    judge_pair,
    judge_predictions,
    judge_summary,
    letter_share,
    side_of,
    token_share,
    verdict_share,
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


def test_synthesize_instructions_rejects_empty_and_cut_off_responses():
    from tasks.core.recipe import SynthesizeConfig, TeacherConfig

    class Teacher:
        name = "fake:t"

        def complete(self, request):
            prompt = request.messages[-1].content
            return Completion(text="" if "empty" in prompt else "An answer that goes on and",
                              finish_reason="length" if "long" in prompt else "stop")

        def map(self, fn, items, concurrency=None, progress=None):
            return [fn(i) for i in items]

    items = [{"id": "a", "type": "qa", "prompt": "fine"}, {"id": "b", "type": "qa", "prompt": "empty"},
             {"id": "c", "type": "qa", "prompt": "long"}]
    examples, rejected = synthesize_instructions(items, SynthesizeConfig(generator="instructions", max_items=5,
                                                                         system_prompt="sys"),
                                                 TeacherConfig(max_tokens=99), Teacher())
    assert [e.id for e in examples] == ["instruction:a"] and examples[0].metadata["type"] == "qa"
    assert sorted(rejected, key=lambda r: r["item"]) == [{"item": "b", "reason": "empty response"},
                                                         {"item": "c", "reason": "cut off at teacher.max_tokens (99)"}]


@pytest.mark.parametrize("top, share", [
    ({"A": math.log(0.6), "B": math.log(0.2), "The": math.log(0.1)}, 0.75),
    ({" a": math.log(0.3), "A": math.log(0.3), " B": math.log(0.2)}, 0.75),   # variants of a letter add up
    ({"The": math.log(0.5), "I": math.log(0.3)}, None),                       # neither letter: no reading
    ({"B": math.log(0.5), "The": math.log(0.1)}, 0.1 / 0.6),                  # A missing: at most the last listed
])
def test_letter_share(top, share):
    assert letter_share(top) == (None if share is None else pytest.approx(share))


def test_verdict_share_and_side_of():
    assert [verdict_share(v) for v in ("A", "B", "tie", None)] == [1.0, 0.0, 0.5, 0.5]
    assert [side_of(p) for p in (0.9, 0.5 + TIE_MARGIN / 2, 0.5, 0.1)] == ["candidate", "tie", "tie", "base"]


def test_token_share_reads_yes_and_no():
    assert token_share({"Yes": math.log(0.3), " yes": math.log(0.3), "no": math.log(0.2)}, "yes", "no") \
        == pytest.approx(0.75)
    assert token_share({"The": math.log(0.5)}, "yes", "no") is None


@pytest.mark.parametrize("candidate, base, preference", [
    (0.9, 0.1, 0.81 / 0.82), (0.1, 0.9, 0.01 / 0.82), (0.6, 0.6, 0.5), (1.0, 1.0, 0.5), (0.0, 0.0, 0.5),
    (1.0, 0.5, 1.0),
])
def test_grades_preference_is_the_chance_the_candidate_is_the_good_one(candidate, base, preference):
    assert grades_preference(candidate, base) == pytest.approx(preference)


def test_judge_summary_counts_leans_within_the_margin_as_ties():
    rows = [{"preference": p, "consistent": c} for p, c in
            zip([1.0, 0.5, 0.75, 0.25, 0.52], [True, False, True, False, False])]
    summary = judge_summary(rows)
    assert (summary["judge_wins"], summary["judge_losses"], summary["judge_ties"]) == (2.0, 1.0, 2.0)
    assert summary["win_rate"] == pytest.approx(0.6)
    assert summary["judge_preference"] == pytest.approx(3.02 / 5)
    assert summary["judge_position_consistency"] == 0.4
    assert math.isnan(judge_summary([])["win_rate"])
    graded = judge_summary([{"preference": 0.9, "grade_candidate": 0.8, "grade_base": 0.3},
                            {"preference": 0.5, "identical": True}])
    assert graded["judge_grade_candidate"] == 0.8 and graded["judge_grade_base"] == 0.3
    assert "judge_position_consistency" not in graded and graded["win_rate"] == 0.75


def _answer_a(messages):
    return messages[-1].content.split("[Answer A]\n", 1)[1].split("\n\n[Answer B]", 1)[0]


class _VerdictJudge:
    """A judge without log-probabilities (its replies carry none): always A unless told which answer it
    prefers. The swap must turn its position bias into ties."""

    name = "fake:judge"

    def __init__(self, prefer=None):
        self.calls = []
        self.prefer = prefer

    def complete(self, request):
        assert request.top_logprobs and request.max_tokens == 1
        return Completion(text="A")

    def structured(self, messages, output, **_):
        self.calls.append(messages[-1].content)
        better = "A" if self.prefer is None else ("A" if _answer_a(messages) == self.prefer else "B")
        return output(reason="r", better=better), None

    def map(self, fn, items, concurrency=None, progress=None):
        return [fn(i) for i in items]


class _ProbabilityJudge(_VerdictJudge):
    """Gives the letter's probabilities: a strong lean to A, and a little more for the preferred answer."""

    def complete(self, request):
        self.calls.append("\n".join(m.content for m in request.messages))
        lean = 0.1 if _answer_a(request.messages) == self.prefer else -0.1
        return Completion(text="A", top_logprobs=({"A": math.log(0.7 + lean), "B": math.log(0.3 - lean),
                                                   "Answer": math.log(0.001)},))

    def structured(self, *_, **__):
        raise AssertionError("a judge that gives probabilities is not asked for a verdict")


def test_judge_pair_swaps_positions_and_neutralises_position_bias():
    teacher = _VerdictJudge()
    result = judge_pair(teacher, "Q?", "candidate answer", "base answer", method="compare")
    assert result["outcome"] == "tie" and result["preference"] == 0.5 and not result["consistent"]
    assert result["read_as"] == ["verdict", "verdict"]
    assert len(teacher.calls) == 2
    assert "[Answer A]\ncandidate answer" in teacher.calls[0] and "[Answer A]\nbase answer" in teacher.calls[1]
    fair = _VerdictJudge(prefer="candidate answer")
    assert judge_pair(fair, "Q?", "candidate answer", "base answer", method="compare")["preference"] == 1.0


def test_judge_pair_reads_a_position_biased_judges_probabilities():
    """Always answering A, the judge still gives the candidate's letter more probability in both orders."""
    judge = _ProbabilityJudge(prefer="candidate answer")
    result = judge_pair(judge, "Q?", "candidate answer", "base answer", method="compare")
    assert result["read_as"] == ["probability", "probability"]
    assert result["candidate_first"] == pytest.approx(0.8) and result["base_first"] == pytest.approx(0.4)
    assert result["preference"] == pytest.approx(0.6) and result["outcome"] == "candidate"
    assert not result["consistent"]  # the second order still answers A: position bias, yet a lean
    assert "one letter" in judge.calls[0]
    judge.prefer = "base answer"
    assert judge_pair(judge, "Q?", "candidate answer", "base answer", method="compare")["preference"] \
        == pytest.approx(0.4)


def test_judge_pair_identical_answers_tie_without_a_call():
    teacher = _VerdictJudge()
    for method in ("grade", "compare"):
        assert judge_pair(teacher, "Q?", "same  answer", "same answer\n", method=method)["outcome"] == "tie"
    assert teacher.calls == []


def test_judge_predictions_pairs_by_id_and_summarises():
    heldout = [{"id": i, "messages": [{"role": "system", "content": "s"}, {"role": "user", "content": f"Q{i}"},
                                      {"role": "assistant", "content": "ref"}]} for i in ("a", "b", "c")]
    candidate = [{"id": "a", "prediction": "good"}, {"id": "b", "prediction": "good"}, {"id": "z", "prediction": "x"}]
    base = [{"id": "a", "prediction": "bad"}, {"id": "b", "prediction": "good"}]
    summary, rows = judge_predictions(_VerdictJudge(prefer="good"), heldout, candidate, base, method="compare")
    assert [r["id"] for r in rows] == ["a", "b"]
    assert summary["judge_wins"] == 1 and summary["judge_ties"] == 1 and summary["win_rate"] == pytest.approx(0.75)
    assert summary["judge_pairs"] == 2 and summary["judge_position_consistency"] == 1.0
    assert "Q" in judge_messages("Q", "x", "y")[-1].content


class _GradingJudge:
    """Grades an answer alone: P(yes) is the number in ``grades`` of the first key the answer contains;
    with ``logprobs=False`` it gives no probabilities and writes a verdict instead."""

    name = "fake:grader"

    def __init__(self, grades, logprobs=True):
        self.grades, self.logprobs, self.calls = grades, logprobs, []

    def _grade(self, messages):
        text = messages[-1].content
        self.calls.append(text)
        assert "Instruction:\nQ?" in text and "[Answer B]" not in text  # one answer, alone
        return next(g for key, g in self.grades.items() if key in text.split("Answer:\n", 1)[1])

    def complete(self, request):
        assert request.max_tokens == 1 and "yes or no" in request.messages[-1].content
        if not self.logprobs:
            return Completion(text="yes")
        p = self._grade(request.messages)
        return Completion(text="yes", top_logprobs=({"yes": math.log(p), "no": math.log(1 - p),
                                                     "The": math.log(0.001)},))

    def structured(self, messages, output, **_):
        assert not self.logprobs, "a judge that gives probabilities is not asked for a verdict"
        return output(reason="r", good="yes" if self._grade(messages) > 0.5 else "no"), None

    def map(self, fn, items, concurrency=None, progress=None):
        return [fn(i) for i in items]


def test_judge_pair_grades_each_answer_alone():
    judge = _GradingJudge({"candidate": 0.8, "base": 0.4})
    result = judge_pair(judge, "Q?", "candidate answer", "base answer")
    assert result["grade_candidate"] == pytest.approx(0.8) and result["grade_base"] == pytest.approx(0.4)
    assert result["preference"] == pytest.approx(0.48 / 0.56) and result["outcome"] == "candidate"
    assert result["read_as"] == ["probability", "probability"] and len(judge.calls) == 2
    assert judge_pair(_GradingJudge({"candidate": 0.3, "base": 0.3}), "Q?", "candidate", "base")["outcome"] == "tie"


def test_judge_pair_grades_by_verdict_without_probabilities():
    judge = _GradingJudge({"candidate": 0.2, "base": 0.9}, logprobs=False)
    result = judge_pair(judge, "Q?", "candidate answer", "base answer")
    assert result["read_as"] == ["verdict", "verdict"]
    assert (result["grade_candidate"], result["grade_base"], result["preference"]) == (0.0, 1.0, 0.0)


def test_a_grade_whose_verdict_never_validates_says_so():
    class Mute(_GradingJudge):
        def structured(self, messages, output, **_):
            return None, "invalid JSON"

    assert grade(Mute({"a": 0.9}, logprobs=False), "Q?", "a") == (0.5, "invalid")
    assert grade(_GradingJudge({"a": 0.9}, logprobs=False), "Q?", "a") == (1.0, "verdict")


def test_with_context_adds_win_rate_and_pair_yield():
    judge = {"win_rate": 0.7, "judge_preference": 0.6, "judge_ties": 2.0, "teacher_calls": 8}
    candidate, base = with_context({"rouge_l": 0.2}, {"rouge_l": 0.1}, judge, {"pair_yield": 0.4})
    assert candidate == {"rouge_l": 0.2, "win_rate": 0.7, "judge_preference": 0.6, "judge_ties": 2.0,
                         "pair_yield": 0.4}
    assert base == {"rouge_l": 0.1, "win_rate": 0.5, "judge_preference": 0.5}
    assert with_context({"a": 1}, {"a": 2}, None, None) == ({"a": 1}, {"a": 2})
    graded = {"win_rate": 0.6, "judge_grade_candidate": 0.7, "judge_grade_base": 0.5}
    candidate, base = with_context({}, {}, graded, None)
    assert candidate == {"win_rate": 0.6, "judge_grade": 0.7}
    assert base == {"win_rate": 0.5, "judge_preference": 0.5, "judge_grade": 0.5}


class _LoopTeacher:
    """Critiques and improves; grades the original 0.3 and writes no valid verdict for the improvement,
    or, with ``grades``, gives each answer the P(yes) of the first key it contains."""

    def __init__(self, improvement="Use a two-sample t-test on the means.", grades=None):
        self.improvement = improvement
        self.grades = grades

    def structured(self, messages, output, **_):
        from tasks.pairs.build import Critique, Improved

        if output is Critique:
            return Critique(problems=["too vague"], suggestion="Name the test."), None
        if output is Improved:
            return Improved(response=self.improvement), None
        assert output is Grade and not self.grades, "a grade read from probabilities needs no verdict"
        return None, "output cut off at max_tokens"

    def complete(self, request):
        """A grade request: P(yes) in the first position's alternatives, or none (a verdict follows)."""
        answer = request.messages[-1].content.split("Answer:\n", 1)[1]
        assert request.max_tokens == 1 and request.top_logprobs
        if self.grades:
            p = next(g for k, g in self.grades.items() if k in answer)
        elif "t-test" in answer:
            return Completion(text="{")
        else:
            p = 0.3
        return Completion(text="yes" if p >= 0.5 else "no", top_logprobs=({"yes": math.log(p), "no": math.log(1 - p)},))


class _Student:
    def complete(self, request):
        return Completion(text="Compare them somehow.")


def test_a_pair_trace_says_why_an_answer_was_not_graded():
    from tasks.core.recipe import PairsConfig, TeacherConfig
    from tasks.pairs.build import build_pair

    item = {"id": "q1", "prompt": [{"role": "user", "content": "How do I compare two group means?"}]}
    pair, trace = build_pair(item, _Student(), _LoopTeacher(), PairsConfig(), TeacherConfig(), min_chars=10)
    assert pair is None
    assert trace["original_grade"] == pytest.approx(0.3) and trace["improved_grade"] is None
    assert trace["improved_evaluation"] == "the grade's JSON verdict never validated"
    assert "original_evaluation" not in trace


@pytest.mark.parametrize("original, improved, pass_grade, decision", [
    (0.3, 0.8, 0.5, "chosen_improved"),   # the improvement succeeds where the original fails
    (0.6, 0.8, 0.5, "chosen_improved"),   # both succeed
    (0.6, 0.8, 0.7, "chosen_improved"),   # the bar is the recipe's
    (0.8, 0.6, 0.7, "chosen_original"),   # the improvement made it worse
    (0.3, 0.4, 0.5, "no_pair"),           # neither succeeds
])
def test_pairs_succeed_by_the_teachers_probability_of_yes(original, improved, pass_grade, decision):
    from tasks.core.recipe import PairsConfig, TeacherConfig
    from tasks.pairs.build import build_pair

    item = {"id": "q1", "prompt": [{"role": "user", "content": "How do I compare two group means?"}]}
    teacher = _LoopTeacher(grades={"t-test": improved, "Compare": original})
    pair, trace = build_pair(item, _Student(), teacher, PairsConfig(pass_grade=pass_grade), TeacherConfig(),
                             min_chars=10)
    assert trace["decision"] == decision
    assert (trace["original_grade"], trace["improved_grade"]) == pytest.approx((original, improved))
    if pair is not None:
        assert pair.metadata["original_grade"] == pytest.approx(original)
        assert pair.metadata["critique"] == {"problems": ["too vague"], "suggestion": "Name the test."}


def test_build_pairs_runs_the_loop_a_step_at_a_time_and_decides_as_build_pair():
    """Every critique before any improvement, every improvement before any grade: a step's requests share
    their system turn, which a local teacher keeps between requests."""
    from tasks.core.recipe import PairsConfig, TeacherConfig
    from tasks.pairs.build import STEPS, build_pair, build_pairs

    class Recording(_LoopTeacher):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.asked = []

        def structured(self, messages, output, **kwargs):
            self.asked.append(output.__name__)
            return super().structured(messages, output, **kwargs)

        def complete(self, request):
            self.asked.append("grade")
            return super().complete(request)

        def map(self, fn, items, concurrency=None, progress=None):
            results = []
            for done, item in enumerate(items, 1):
                results.append(fn(item))
                if progress:
                    progress(done, len(items))
            return results

    class Student(_Student):
        map = Recording.map

    grades = {"t-test": 0.8, "Compare": 0.3}
    items = [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"How do I compare group means, case {i}?"}]}
             for i in range(3)]
    teacher, seen = Recording(grades=grades), []
    pairs, traces = build_pairs(items, Student(), teacher, PairsConfig(), TeacherConfig(), min_chars=10,
                                progress=lambda done, total: seen.append((done, total)))
    assert teacher.asked == ["Critique"] * 3 + ["Improved"] * 3 + ["grade"] * 6
    assert seen[-1] == (STEPS * 3, STEPS * 3) and [done for done, _ in seen] == list(range(1, STEPS * 3 + 1))
    one = [build_pair(item, _Student(), _LoopTeacher(grades=grades), PairsConfig(), TeacherConfig(), min_chars=10)
           for item in items]
    assert traces == [trace for _, trace in one] and pairs == [pair for pair, _ in one]
    assert [t["decision"] for t in traces] == ["chosen_improved"] * 3


def test_prompts_the_teachers_budget_stopped_before_have_no_pair_and_no_trace():
    from tasks.core.recipe import PairsConfig, TeacherConfig
    from tasks.pairs.build import STEPS, build_pairs

    class Budgeted(_LoopTeacher):
        """Teacher.map when the budget runs out after two items: the finished ones, in order."""

        def map(self, fn, items, concurrency=None, progress=None):
            results = [fn(item) for item in items[:2]]
            for done in range(1, len(results) + 1):
                progress(done, len(items))
            return results

    class Student(_Student):
        def map(self, fn, items, concurrency=None, progress=None):
            return [fn(item) for item in items]

    items = [{"id": f"q{i}", "prompt": [{"role": "user", "content": f"How do I compare group means, case {i}?"}]}
             for i in range(3)]
    seen = []
    pairs, traces = build_pairs(items, Student(), Budgeted(grades={"t-test": 0.8, "Compare": 0.3}), PairsConfig(),
                                TeacherConfig(), min_chars=10, progress=lambda done, total: seen.append(done))
    assert [t["id"] for t in traces] == ["q0", "q1"] and [p.id for p in pairs] == ["pair:q0", "pair:q1"]
    assert seen == [3 + 1, 3 + 2, 6 + 1, 6 + 2, 9 + 1, 9 + 2] and STEPS == 4  # each step's share of 4 x 3


def test_grade_summary_counts_improvements_the_teacher_graded_lower():
    from tasks.pairs.build import grade_summary

    traces = [{"original_grade": 0.6, "improved_grade": 0.8}, {"original_grade": 0.8, "improved_grade": 0.5},
              {"original_grade": 0.7, "improved_grade": None}, {"decision": "no_pair"}]
    assert grade_summary(traces) == {"grade_original_mean": 0.7, "grade_improved_mean": 0.65,
                                     "improved_graded_lower": 1}
    assert grade_summary(traces[2:]) == {}


def test_a_degenerate_answer_fails_whatever_its_grade():
    """Seen with the 135M teacher: an "improvement" reading "The term", graded 10, chosen by DPO."""
    from tasks.core.recipe import PairsConfig, TeacherConfig
    from tasks.pairs.build import build_pair

    item = {"id": "q1", "prompt": [{"role": "user", "content": "How do I compare two group means?"}]}
    teacher = _LoopTeacher(improvement="The term", grades={"The term": 0.99, "Compare": 0.3})
    pair, trace = build_pair(item, _Student(), teacher, PairsConfig(), TeacherConfig(), min_chars=20)
    assert pair is None and trace["reason"] == "neither succeeds"
    assert trace["improved_grade"] == pytest.approx(0.99) and trace["improved_problem"] == "empty or degenerate output"
    teacher.grades = {"The term": 0.99, "Compare": 0.8}  # the original passes: it is chosen over the fragment
    pair, trace = build_pair(item, _Student(), teacher, PairsConfig(), TeacherConfig(), min_chars=20)
    assert trace["decision"] == "chosen_original" and pair.chosen[0]["content"] == "Compare them somehow."
    assert "original_problem" not in trace


def test_the_critic_and_the_improver_are_given_the_recipes_constitution():
    from tasks.core.recipe import DEFAULT_CONSTITUTION, PairsConfig, TeacherConfig, load_recipe
    from tasks.pairs.build import Critique, Improved, build_pair

    class Recording(_LoopTeacher):
        def __init__(self):
            super().__init__()
            self.systems = {}

        def structured(self, messages, output, **kwargs):
            self.systems.setdefault(output, messages[0].content)
            return super().structured(messages, output, **kwargs)

    item = {"id": "q1", "prompt": [{"role": "user", "content": "Write a title for this abstract."}]}
    rules = ["Answer in one line.", "Never use jargon."]
    teacher = Recording()
    build_pair(item, _Student(), teacher, PairsConfig(constitution=rules), TeacherConfig(), min_chars=10)
    for output in (Critique, Improved):
        assert "1. Answer in one line.\n2. Never use jargon." in teacher.systems[output]
        assert "statistics" not in teacher.systems[output]
    # A recipe that names none gets the general principles; stats-qa names its own.
    assert PairsConfig().constitution == list(DEFAULT_CONSTITUTION)
    assert load_recipe("self-critique").pairs.constitution == list(DEFAULT_CONSTITUTION)
    stats = load_recipe("stats-qa").pairs.constitution
    assert stats != list(DEFAULT_CONSTITUTION) and any("caveats" in rule for rule in stats)
    with pytest.raises(ValueError):
        PairsConfig(constitution=[])
