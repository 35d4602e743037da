"""paper-reviewer: human reviews as SFT examples, teacher reviews with BM25-retrieved few-shot.

Pure formatting and parsing; the only side effect is the teacher call in :func:`synthesize_reviews`.

One human example per paper: the review whose rating is closest to the paper's mean human rating
(the most representative one). Every example of a paper has the same prompt (title + abstract), so
curate's leakage guard would drop all training reviews of any paper with one review in the held-out
set; one review per paper keeps the split clean at the paper level, which is also what validation
measures (rating error on held-out *papers*). The rating label for validation is the paper's mean
human rating (``metadata.paper_rating``).
"""

from __future__ import annotations

import json
import re
import statistics
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, Field

from tasks.core.hashing import sha256_json
from tasks.core.recipe import SynthesizeConfig, TeacherConfig
from tasks.synthesize.records import Message, SyntheticExample
from tasks.synthesize.retrieval import BM25Index
from tasks.teacher.base import ChatMessage, messages

# Field limits are part of the JSON schema: a grammar-constrained model cannot ramble past them, and
# a whole review fits in about 220 tokens (cheap to train on and to generate on a CPU). Every limit
# stays under llama.cpp's grammar repeat limit.
LIMITS = {"summary": 240, "strengths": 200, "weaknesses": 240, "questions": 120}


class ReviewOutput(BaseModel):
    """A structured peer review of an ML paper (the student's output, and the teacher's)."""

    summary: str = Field(description="What the paper does and claims, in two or three sentences.",
                         max_length=LIMITS["summary"])
    strengths: str = Field(description="The main strengths.", max_length=LIMITS["strengths"])
    weaknesses: str = Field(description="The main weaknesses.", max_length=LIMITS["weaknesses"])
    questions: str = Field(description="Questions for the authors.", max_length=LIMITS["questions"])
    rating: int = Field(description="Overall rating from 0 (strong reject) to 10 (strong accept).", ge=0, le=10)


REVIEW_TEACHER_SYSTEM = (
    "You are an experienced reviewer for a machine-learning conference. You write a peer review of a paper "
    "from its title and abstract: a short summary, the main strengths, the main weaknesses, questions for the "
    "authors, and an overall rating from 0 (strong reject) to 10 (strong accept). Calibrate the rating on the "
    "example reviews of similar papers. Reply in JSON."
)


def clip(text: str, limit: int) -> str:
    """``text`` with whitespace runs collapsed, cut at a word boundary to at most ``limit`` characters."""
    text = re.sub(r"[ \t]+", " ", re.sub(r"\n\s*\n+", "\n", text or "")).strip()
    if len(text) <= limit:
        return text
    cut = text[: limit - 1]
    space = max(cut.rfind(" "), cut.rfind("\n"))
    return (cut[:space] if space > limit // 2 else cut).rstrip(" ,;:-\n") + "…"


def review_json(review: dict[str, Any], rating: float) -> str:
    """A review (human or teacher) as the student's JSON output, every field within its limit."""
    value = {name: clip(str(review.get(name) or ""), limit) for name, limit in LIMITS.items()}
    value["rating"] = round(float(rating))
    ReviewOutput.model_validate(value)  # what the student learns must follow the served schema
    return json.dumps(value, ensure_ascii=False)


def paper_prompt(title: str, abstract: str, source_chars: int) -> str:
    """The student's user turn: the submission to review."""
    return f"Review this submission.\n\nTitle: {title.strip()}\n\nAbstract: {clip(abstract, source_chars)}"


def group_papers(reviews: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rated reviews by forum id (reviews without a rating or abstract cannot teach the task)."""
    papers: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for review in sorted(reviews, key=lambda r: r["id"]):
        if review.get("rating") is not None and (review.get("paper_abstract") or "").strip():
            papers[review["forum_id"]].append(review)
    return dict(papers)


def representative_review(reviews: list[dict[str, Any]]) -> tuple[dict[str, Any], float]:
    """The review whose rating is closest to the paper's mean rating (ties: the lowest id), and the mean."""
    mean = statistics.fmean(float(r["rating"]) for r in reviews)
    best = min(reviews, key=lambda r: (abs(float(r["rating"]) - mean), r["id"]))
    return best, mean


def example_from_human_review(review: dict[str, Any], paper_rating: float, n_reviews: int, system_prompt: str,
                              source_chars: int) -> SyntheticExample:
    output = review_json(review, review["rating"])
    return SyntheticExample(
        id=f"review:human:{review['forum_id']}",
        source=f"human:{review.get('source', 'unknown')}",
        messages=(Message(role="system", content=system_prompt),
                  Message(role="user", content=paper_prompt(review["paper_title"], review["paper_abstract"],
                                                            source_chars)),
                  Message(role="assistant", content=output)),
        reference=output,
        metadata={"forum_id": review["forum_id"], "review_id": review["id"], "rating": float(review["rating"]),
                  "paper_rating": round(paper_rating, 3), "reviews": n_reviews, "decision": review.get("decision")},
    )


def _document(review: dict[str, Any]) -> str:
    return " ".join([review["paper_title"], review["paper_abstract"], review.get("summary") or ""])


def format_review_prompt(paper: dict[str, Any], shots: list[dict[str, Any]], source_chars: int,
                         shot_chars: int = 600) -> tuple[ChatMessage, ...]:
    """Teacher messages: the retrieved human reviews of similar papers as few-shot, then the paper."""
    parts = []
    for number, shot in enumerate(shots, 1):
        shown = {name: clip(str(shot.get(name) or ""), min(limit, shot_chars // 3)) for name, limit in LIMITS.items()}
        shown["rating"] = round(float(shot["rating"]))
        parts.append(f"Example review {number} (of a similar paper, \"{shot['paper_title'].strip()}\"):\n"
                     f"{json.dumps(shown, ensure_ascii=False)}")
    examples = "\n\n".join(parts) if parts else "(no similar reviews available)"
    user = f"{examples}\n\nNow review this paper.\n\n{paper_prompt(paper['paper_title'], paper['paper_abstract'], source_chars)}"
    return messages(("system", REVIEW_TEACHER_SYSTEM), ("user", user))


def retrieve_shots(index: BM25Index, by_id: dict[str, dict[str, Any]], paper: dict[str, Any],
                   k: int) -> list[dict[str, Any]]:
    """The ``k`` human reviews most similar to ``paper`` (BM25 on title + abstract), never its own."""
    query = f"{paper['paper_title']} {paper['paper_abstract']}"
    hits = index.search(query, k, exclude=lambda doc_id: by_id[doc_id]["forum_id"] == paper["forum_id"])
    return [by_id[doc_id] for doc_id, _ in hits]


def example_from_teacher_review(paper: dict[str, Any], output: ReviewOutput, paper_rating: float,
                                shots: list[dict[str, Any]], system_prompt: str, source_chars: int,
                                teacher_name: str) -> SyntheticExample:
    text = review_json(output.model_dump(), output.rating)
    return SyntheticExample(
        id=f"review:teacher:{paper['forum_id']}",
        source=f"teacher:{teacher_name}",
        messages=(Message(role="system", content=system_prompt),
                  Message(role="user", content=paper_prompt(paper["paper_title"], paper["paper_abstract"],
                                                            source_chars)),
                  Message(role="assistant", content=text)),
        reference=text,
        metadata={"forum_id": paper["forum_id"], "rating": float(output.rating), "paper_rating": round(paper_rating, 3),
                  "retrieved": [s["id"] for s in shots]},
    )


def rating_problem(rating: float, human_mean: float, max_gap: float | None) -> str | None:
    """Why a teacher's rating cannot be a training label (too far from the humans' mean), or None.

    The training papers' human ratings are known, so a teacher review that contradicts them (a small
    teacher rates a paper the reviewers rejected an 8) would teach the student a wrong rating.
    """
    if max_gap is None or abs(float(rating) - human_mean) <= max_gap:
        return None
    return f"rating {rating:g} is more than {max_gap:g} from the human mean {human_mean:.1f}"


def synthesize_reviews(reviews: list[dict[str, Any]], config: SynthesizeConfig, teacher_config: TeacherConfig,
                       teacher: Any, progress: Callable[[int, int], None] | None = None,
                       ) -> tuple[list[SyntheticExample], list[dict[str, str]]]:
    """Human examples (one per paper) and up to ``max_items`` teacher reviews with BM25 few-shot.

    A teacher review is rejected when its rating is more than ``config.max_rating_gap`` from the
    paper's mean human rating (:func:`rating_problem`)."""
    papers = group_papers(reviews)
    examples: list[SyntheticExample] = []
    rejected: list[dict[str, str]] = [
        {"item": r["id"], "reason": "review without a rating or paper abstract"}
        for r in reviews if r.get("rating") is None or not (r.get("paper_abstract") or "").strip()]
    representative = {forum: representative_review(items) for forum, items in papers.items()}
    if config.include_human:
        forums = sorted(papers)[: config.max_human] if config.max_human is not None else sorted(papers)
        examples.extend(example_from_human_review(representative[f][0], representative[f][1], len(papers[f]),
                                                  config.system_prompt, config.source_chars) for f in forums)
    corpus = [review for items in papers.values() for review in items]
    by_id = {review["id"]: review for review in corpus}
    index = BM25Index([(review["id"], _document(review)) for review in corpus])
    targets = sorted(papers, key=lambda forum: sha256_json(forum))[: config.max_items]

    def one(forum: str) -> SyntheticExample | dict[str, str]:
        paper, mean = representative[forum]
        shots = retrieve_shots(index, by_id, paper, config.retrieved_examples)
        output, reason = teacher.structured(
            format_review_prompt(paper, shots, config.source_chars), ReviewOutput,
            temperature=teacher_config.temperature, max_tokens=teacher_config.max_tokens,
            seed=teacher_config.seed, max_repairs=teacher_config.max_repairs)
        if output is None:
            return {"item": f"review:teacher:{forum}", "reason": reason or "invalid output"}
        if not output.summary.strip() or not output.weaknesses.strip():
            return {"item": f"review:teacher:{forum}", "reason": "empty summary or weaknesses"}
        problem = rating_problem(output.rating, mean, config.max_rating_gap)
        if problem:
            return {"item": f"review:teacher:{forum}", "reason": problem}
        return example_from_teacher_review(paper, output, mean, shots, config.system_prompt, config.source_chars,
                                           teacher.name)

    for result in teacher.map(one, targets, concurrency=teacher_config.concurrency, progress=progress):
        (examples if isinstance(result, SyntheticExample) else rejected).append(result)
    return examples, rejected
