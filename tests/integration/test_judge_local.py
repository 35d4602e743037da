"""The built-in local judge (Qwen2.5-Coder-1.5B, joined from its part packages) tells a good answer from
a wrong one when it grades each alone: what self-critique's quick profile measures its win rate with."""

from __future__ import annotations

import pytest

from tasks.core.models import resolve_gguf
from tasks.teacher.llama_cpp import LlamaCppChat
from tasks.validate.judge import judge_pair

pytestmark = pytest.mark.integration

# (instruction, a good answer, a wrong or useless one)
PAIRS = [
    ("What is the capital of France?", "The capital of France is Paris.", "The capital of France is Berlin."),
    ("What is 12 multiplied by 11?", "12 multiplied by 11 is 132.", "12 multiplied by 11 is 112."),
    ("How do I reverse a list in Python?",
     "Use `my_list.reverse()` to reverse it in place, or `my_list[::-1]` to get a reversed copy.",
     "You cannot reverse a list in Python; you must write it again by hand."),
    ("Explain what photosynthesis is in one sentence.",
     ("Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make glucose "
      "and release oxygen."),
     "Photosynthesis is when animals breathe in oxygen at night to digest food."),
]


@pytest.fixture(scope="module")
def judge():
    path = resolve_gguf("qwen2.5-coder-1.5b")  # joined into the machine's model cache on first use
    assert path.stat().st_size > 1_000_000_000
    llm = LlamaCppChat(path, n_ctx=1024)
    yield llm
    llm.close()


@pytest.mark.parametrize("instruction, good, bad", PAIRS, ids=[p[0][:24] for p in PAIRS])
def test_the_local_judge_grades_the_good_answer_higher_in_either_role(judge, instruction, good, bad):
    as_candidate = judge_pair(judge, instruction, good, bad)
    as_base = judge_pair(judge, instruction, bad, good)
    assert as_candidate["read_as"] == ["probability", "probability"]
    assert as_candidate["grade_candidate"] > as_candidate["grade_base"]
    assert as_candidate["outcome"] == "candidate" and as_base["outcome"] == "base"
    # Each answer is graded alone, from its whole prompt (LlamaCppChat resets the context for a reading), so
    # its grade does not depend on which side it is on or on the request before it. Before the reset the
    # same grade request read 0.952, then 0.948 (session 13), and 0.695, then 0.723 (CI, session 14).
    assert as_base["grade_base"] == pytest.approx(as_candidate["grade_candidate"], abs=1e-6)
