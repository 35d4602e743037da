"""paper-reviewer: BM25 retrieval, review formatting, representative reviews, rating metrics."""

import json

import pytest

from tasks.synthesize.retrieval import BM25Index, tokenize
from tasks.synthesize.review import (
    LIMITS,
    ReviewOutput,
    clip,
    format_review_prompt,
    group_papers,
    rating_problem,
    representative_review,
    retrieve_shots,
    review_json,
    synthesize_reviews,
)
from tasks.validate.scoring import extract_rating, rating_metrics


def review(forum, n, rating, title="T", abstract="An abstract.", summary="S"):
    return {"id": f"r:{forum}#{n}", "forum_id": forum, "paper_title": title, "paper_abstract": abstract,
            "summary": summary, "strengths": "good", "weaknesses": "bad", "questions": "why?", "rating": rating,
            "source": "peerread:test"}


def test_tokenize_drops_stopwords_case_and_punctuation():
    assert tokenize("The Gaussian-process RNN, and a GP!") == ["gaussian", "process", "rnn", "gp"]
    assert tokenize("") == []


def test_bm25_ranks_the_matching_document_first_and_breaks_ties_by_id():
    index = BM25Index([("b", "gaussian processes for sepsis"), ("a", "transformers for translation"),
                       ("c", "graph neural networks")])
    assert index.search("sepsis gaussian", 1)[0][0] == "b"
    # no query word known: k documents, score 0, in id order
    assert index.search("zebra", 2) == [("a", 0.0), ("b", 0.0)]
    assert index.search("zebra", 0) == []


def test_bm25_exclude_and_empty_corpus():
    index = BM25Index([("x1", "reinforcement learning reward"), ("x2", "reinforcement learning policy")])
    hits = index.search("reinforcement reward", 2, exclude=lambda doc: doc == "x1")
    assert [doc for doc, _ in hits] == ["x2"]
    assert BM25Index([]).search("anything", 3) == []
    with pytest.raises(ValueError, match="unique"):
        BM25Index([("a", "x"), ("a", "y")])


def test_bm25_indexes_a_corpus_with_an_empty_document():
    index = BM25Index([("a", ""), ("b", "bayesian optimisation")])
    assert index.search("bayesian", 1)[0][0] == "b"


def test_clip_cuts_at_a_word_boundary_within_the_limit():
    text = "word " * 100
    out = clip(text, 50)
    assert len(out) <= 50 and out.endswith("…") and "wor…" not in out
    assert clip("  short\n\n\ntext ", 50) == "short\ntext"


def test_review_json_follows_the_schema_and_limits():
    long = {"summary": "x " * 400, "strengths": "s", "weaknesses": "w", "questions": ""}
    value = json.loads(review_json(long, 5.6))
    assert value["rating"] == 6 and set(value) == {*LIMITS, "rating"}
    assert len(value["summary"]) <= LIMITS["summary"]
    ReviewOutput.model_validate(value)
    assert list(ReviewOutput.model_json_schema()["properties"]) == ["summary", "strengths", "weaknesses",
                                                                      "questions", "rating"]


def test_representative_review_is_closest_to_the_mean_ties_by_id():
    reviews = [review("f", 0, 3), review("f", 1, 6), review("f", 2, 6), review("f", 3, 8)]
    best, mean = representative_review(reviews)
    assert mean == pytest.approx(5.75) and best["id"] == "r:f#1"


def test_group_papers_skips_unrated_or_abstractless_reviews():
    papers = group_papers([review("a", 0, 5), review("a", 1, None), review("b", 0, 4, abstract=" ")])
    assert list(papers) == ["a"] and len(papers["a"]) == 1


def test_retrieval_never_returns_the_papers_own_reviews():
    corpus = [review("p1", 0, 5, title="sepsis gaussian process"), review("p2", 0, 7, title="sepsis gaussian model"),
              review("p3", 0, 3, title="language models arithmetic")]
    by_id = {r["id"]: r for r in corpus}
    index = BM25Index([(r["id"], r["paper_title"]) for r in corpus])
    shots = retrieve_shots(index, by_id, corpus[0], 2)
    assert [s["forum_id"] for s in shots] == ["p2", "p3"]


def test_review_prompt_carries_the_shots_and_the_paper():
    paper = review("p", 0, 5, title="My paper", abstract="We do things.")
    shot = review("q", 0, 8, title="Similar paper", summary="They did similar things.")
    messages = format_review_prompt(paper, [shot], source_chars=500)
    user = messages[-1].content
    assert "Similar paper" in user and '"rating": 8' in user and user.rstrip().endswith("We do things.")
    assert "(no similar reviews available)" in format_review_prompt(paper, [], 500)[-1].content


class _Teacher:
    name = "fake:teacher"

    def __init__(self):
        self.prompts = []

    def structured(self, messages, output, **_):
        self.prompts.append(messages[-1].content)
        return output(summary="A summary.", strengths="Clear.", weaknesses="Small data.", questions="Why?",
                      rating=4), None

    def map(self, fn, items, concurrency=None, progress=None):
        return [fn(item) for item in items]


def test_synthesize_reviews_one_human_example_per_paper_plus_teacher_reviews():
    from tasks.core.recipe import SynthesizeConfig, TeacherConfig

    reviews = [review("a", 0, 4, title="alpha"), review("a", 1, 6, title="alpha"), review("b", 0, 8, title="beta"),
               review("c", 0, 2, title="gamma")]
    teacher = _Teacher()
    examples, rejected = synthesize_reviews(reviews, SynthesizeConfig(generator="review", max_items=2,
                                                                      system_prompt="sys"), TeacherConfig(), teacher)
    human = [e for e in examples if e.source.startswith("human")]
    synthetic = [e for e in examples if e.source.startswith("teacher")]
    assert sorted(e.metadata["forum_id"] for e in human) == ["a", "b", "c"]
    assert next(e for e in human if e.metadata["forum_id"] == "a").metadata["paper_rating"] == 5.0
    assert len(synthetic) == 2 and not rejected
    assert all(json.loads(e.completion)["rating"] == 4 for e in synthetic)
    assert all(e.messages[0].content == "sys" for e in examples)


def test_a_teacher_rating_far_from_the_human_mean_is_rejected():
    from tasks.core.recipe import SynthesizeConfig, TeacherConfig

    # the fake teacher rates every paper 4: "a" (humans 4 and 6, mean 5) is within 2, "b" (8) is not
    reviews = [review("a", 0, 4, title="alpha"), review("a", 1, 6, title="alpha"), review("b", 0, 8, title="beta")]
    config = SynthesizeConfig(generator="review", max_items=2, max_rating_gap=2)
    examples, rejected = synthesize_reviews(reviews, config, TeacherConfig(), _Teacher())
    assert sorted(e.metadata["forum_id"] for e in examples if e.source.startswith("teacher")) == ["a"]
    assert rejected == [{"item": "review:teacher:b", "reason": "rating 4 is more than 2 from the human mean 8.0"}]
    assert len([e for e in examples if e.source.startswith("human")]) == 2  # human labels are never filtered


def test_rating_problem_bounds():
    assert rating_problem(7, 5.0, 2) is None and rating_problem(3, 5.0, 2) is None
    assert rating_problem(8, 5.0, 2) and rating_problem(0, 5.0, 2.5)
    assert rating_problem(10, 0.0, None) is None  # no gap configured: every rating is kept


@pytest.mark.parametrize("text, expected", [
    ('{"summary": "s", "rating": 7}', 7.0),
    ('```json\n{"rating": 3}\n```', 3.0),
    ('{"summary": "cut off", "rating": 5, "quest', 5.0),
    ('{"rating": "6"}', 6.0),
    ('{"rating": true}', None),
    ("no rating here", None),
    ('{"rating": 0}', 0.0), ('{"rating": 10}', 10.0),
    ('{"rating": 1000000000000000}', None),  # off the 0-10 scale: what a quick-profile model really wrote
    ('{"rating": -2}', None), ('{"summary": "cut", "rating": 11', None),
])
def test_extract_rating(text, expected):
    assert extract_rating(text) == expected


def test_rating_metrics_against_the_paper_rating():
    examples = [{"metadata": {"paper_rating": 4.0}}, {"metadata": {"paper_rating": 5.0}},
                {"metadata": {}, "reference": '{"rating": 8}', "messages": []}, {"metadata": {"paper_rating": 5.0}}]
    predictions = [{"prediction": '{"rating": 5}'}, {"prediction": '{"rating": 6}'}, {"prediction": '{"rating": 9}'},
                   {"prediction": "garbage"}]
    metrics = rating_metrics(examples, predictions)
    assert metrics["rating_mae"] == pytest.approx(1.0)
    assert metrics["rating_parsed"] == pytest.approx(0.75)
    assert metrics["rating_pearson"] == pytest.approx(1.0) and metrics["rating_spearman"] == pytest.approx(1.0)
    assert predictions[3]["rating"] is None and predictions[2]["rating_label"] == 8.0


def test_an_off_scale_rating_is_unparsed_not_a_huge_error():
    examples = [{"metadata": {"paper_rating": 4.0}}, {"metadata": {"paper_rating": 6.0}}]
    metrics = rating_metrics(examples, [{"prediction": '{"rating": 5}'}, {"prediction": '{"rating": 1000000000000000}'}])
    assert metrics["rating_mae"] == pytest.approx(1.0) and metrics["rating_parsed"] == pytest.approx(0.5)


def test_rating_metrics_constant_predictions_have_no_correlation():
    import math

    metrics = rating_metrics([{"metadata": {"paper_rating": r}} for r in (3.0, 5.0)],
                             [{"prediction": '{"rating": 5}'}, {"prediction": '{"rating": 5}'}])
    assert math.isnan(metrics["rating_pearson"]) and metrics["rating_mae"] == 1.0
