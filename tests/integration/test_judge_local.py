"""The built-in local judge (Qwen2.5-Coder-1.5B, joined from its part packages) tells a good answer from
a wrong one when it grades each alone: what self-critique's quick profile measures its win rate with."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.core.models import resolve_gguf
from tasks.teacher.base import CompletionRequest, messages
from tasks.teacher.llama_cpp import LlamaCppChat
from tasks.validate.judge import grade, judge_pair

pytestmark = pytest.mark.integration

SEEDS = Path(__file__).resolve().parents[2] / "data" / "sample" / "instructions" / "seed_instructions.jsonl"

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
    # A grade does not depend on which side the answer is on or on the request before it: LlamaCppChat
    # evaluates every prompt in the same chunks (CanonicalPrefix). With llama-cpp-python's own prefix reuse
    # the same grade request read 0.952, then 0.948 (session 13), and 0.695, then 0.723 (CI, session 14).
    assert as_base["grade_base"] == as_candidate["grade_candidate"]


def test_a_grade_keeps_the_prompt_it_shares_with_the_last_and_reads_as_on_a_fresh_model(judge):
    """The second answer to an instruction is graded without evaluating the system turn and the instruction
    again, and reads exactly what a fresh instance reads (llama-cpp-python's own prefix reuse moved this
    reading's log-probabilities by up to 0.19: session 16)."""
    rows = [json.loads(line) for line in SEEDS.read_text().splitlines()]
    instruction = next(row["prompt"] for row in rows if row["type"] == "response")  # a reviewer's comment
    good = "We thank the reviewer and will add the missing baselines and an ablation of each component."
    bad = "It is a kind of cake."
    judge.complete(CompletionRequest(messages=messages(("user", "Name a colour.")), max_tokens=4))
    grade(judge, instruction, bad)
    kept = judge._prefix.kept
    after_bad, how = grade(judge, instruction, good)
    assert how == "probability"
    assert judge._prefix.kept - kept >= 128  # the system turn and at least two chunks of the instruction
    fresh = LlamaCppChat(resolve_gguf("qwen2.5-coder-1.5b"), n_ctx=1024)
    try:
        alone, _ = grade(fresh, instruction, good)
    finally:
        fresh.close()
    assert fresh._prefix is not None and fresh._prefix.kept == 0
    assert after_bad == alone
