"""stats-qa: which teacher Q&A grounded in a paper are trained on, and how they cite it."""

import pytest

from tasks.synthesize.generate import example_from_grounded_qa, qa_problem
from tasks.synthesize.records import GroundedQA

SECTION = {"id": "arxiv:1708.05894v1#3", "paper_id": "1708.05894v1", "section_title": "2. Related Works",
           "paper_title": "An Improved Multi-Output Gaussian Process RNN with Real-Time Validation for Early "
                          "Sepsis Detection", "text": "Prior work models vital signs with Gaussian processes."}


@pytest.mark.parametrize("question, answer, problem", [
    # What the 135M teacher wrote (stats-qa quick run, 2026-11-22):
    ("2. Related Works", "2.1. Related Works", "the question is a title"),
    (SECTION["paper_title"], "A better RNN for sepsis.", "the question is a title"),
    ("What is the purpose of the passage?", "What is the purpose of the passage? The passage says so.",
     "the answer restates the question"),
    ("  ", "Something.", "empty question or answer"),
    ("How is sepsis detected early?", "With a multi-output Gaussian process RNN validated in real time.", None),
])
def test_qa_problem(question, answer, problem):
    assert qa_problem(GroundedQA(question=question, answer=answer, quote="q"), SECTION) == problem


def test_a_grounded_answer_ends_with_its_citation():
    qa = GroundedQA(question="How are vital signs modelled?", answer="With Gaussian processes.",
                    quote="models vital signs with Gaussian processes")
    example = example_from_grounded_qa(SECTION, qa, "sys", "llama_cpp:smollm2-135m")
    assert example.completion == "With Gaussian processes. [arXiv:1708.05894v1, §2. Related Works]"
    assert example.metadata["quote_support"] == 1.0 and example.id == "qa:arxiv:1708.05894v1#3"
