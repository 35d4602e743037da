"""Typed records the collect stage produces. Every record carries a stable ``id`` and the
``source`` it came from; ``content_sha`` lets an incremental run skip an item it already holds."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from tasks.core.hashing import sha256_json
from tasks.core.refs import Frozen


class Record(Frozen):
    id: str = Field(description="Stable id, unique within its source (e.g. 'arxiv:1804.07821v1#3').")
    source: str = Field(description="Which source and query produced it, e.g. 'stackexchange:stats'.")
    updated: datetime | None = Field(default=None, description="Last change at the source: the watermark field.")

    def content_sha(self) -> str:
        return sha256_json(self.model_dump(mode="json", exclude={"updated"}))


class Paper(Record):
    title: str
    abstract: str = ""
    authors: list[str] = Field(default_factory=list)
    categories: list[str] = Field(default_factory=list)
    pdf_url: str | None = None
    pdf_sha256: str | None = Field(
        default=None, description="sha256 of the PDF the sections came from: an unchanged PDF is not parsed again.")


class PaperSection(Record):
    """One section of a paper's Markdown (references dropped)."""

    paper_id: str
    paper_title: str
    section_title: str
    index: int
    text: str
    flags: list[str] = Field(
        default_factory=list,
        description="Warnings curation acts on, e.g. 'hidden_text:white' when the PDF hides text in this section.")


class QAPair(Record):
    """A question with its accepted (human) answer, Markdown bodies."""

    title: str
    question: str
    answer: str
    tags: list[str] = Field(default_factory=list)
    score: int | None = None
    url: str | None = None


class Review(Record):
    """One human review of a submission, normalized across OpenReview v1/v2 and PeerRead."""

    forum_id: str
    paper_title: str
    paper_abstract: str = ""
    summary: str = ""
    strengths: str = ""
    weaknesses: str = ""
    questions: str = ""
    rating: float | None = None
    confidence: float | None = None
    decision: str | None = None


class Profile(Record):
    """A researcher profile with the score an API model gave it (profile-scorer)."""

    handle: str
    bio: str
    score: float | None = None
    reason: str | None = None
    scored_by: str | None = None


class Instruction(Record):
    """A seed instruction for the self-critique pipeline."""

    type: str = Field(description="qa, completion, generation or response")
    prompt: str


class Rejected(Frozen):
    """An input that could not be used, and why. Rejected items are counted, never silently lost."""

    source: str
    item: str
    reason: str
