"""paper-explainer: passages of arXiv sections explained for three personas, one model per persona.

Each persona has a structured output (a pydantic model the teacher fills) and a fixed Markdown format
the student learns and is validated on: one bold heading per field, in order. Formatting, parsing and
the format check are pure; the only side effect is the teacher call in :func:`synthesize_personas`.
Examples carry ``metadata.variant`` = the persona: the pipeline trains one adapter per persona, and
curates each persona's examples on their own. An example's id names the passage, not the persona
(``explain:<passage id>``): ids are unique within a persona, and a passage lands in the same split
(held out or trained on) for every persona, so the personas' results are measured on the same passages.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field

from tasks.core.hashing import sha256_json
from tasks.core.recipe import SynthesizeConfig, TeacherConfig
from tasks.synthesize.records import Message, SyntheticExample
from tasks.teacher.base import ChatMessage, messages


class Eli5Output(BaseModel):
    analogy: str = Field(description="One everyday analogy a ten-year-old knows that mirrors the idea.", max_length=240)
    explanation: str = Field(description="The idea in plain words, short sentences, no jargon.", max_length=320)


# Field names are words a small model reads as prose: named "value" and "cost", SmolLM2-135M wrote
# "1.1.1.1..." into them until max_tokens; named "core_idea", it wrote a bare number into 5 of 14
# (what_the_idea_is: 3 of 14 rejected for any reason, against 6).
class IntuitiveOutput(BaseModel):
    what_the_idea_is: str = Field(description="The idea from first principles, in one or two sentences.",
                                  max_length=200)
    mechanism: str = Field(description="How it works, step by step: the mechanism.", max_length=320)
    why_it_works: str = Field(description="Why the mechanism achieves the result.", max_length=240)


class ExecutiveOutput(BaseModel):
    why_it_matters: str = Field(description="What it is useful for and who benefits.", max_length=240)
    what_it_takes: str = Field(description="What it costs or needs: data, compute, people, risk.", max_length=200)
    bottom_line: str = Field(description="The decision-relevant takeaway in one sentence.", max_length=160)


@dataclass(frozen=True)
class Persona:
    name: str
    audience: str
    system_prompt: str  # the student's (and the served model's) system message
    teacher_instruction: str
    output: type[BaseModel]
    headings: tuple[tuple[str, str], ...]  # (output field, heading shown to the reader), in order


PERSONAS: dict[str, Persona] = {
    "eli5": Persona(
        name="eli5", audience="a curious ten-year-old",
        system_prompt="You explain research to a ten-year-old. Start with an everyday analogy, then explain the "
                      "idea in plain words. Use the headings **Analogy:** and **Explanation:**.",
        teacher_instruction="Explain the passage to a curious ten-year-old: first one everyday analogy, then the "
                            "idea in plain words and short sentences, without jargon.",
        output=Eli5Output, headings=(("analogy", "Analogy"), ("explanation", "Explanation"))),
    "intuitive": Persona(
        name="intuitive", audience="an engineer who wants the intuition",
        system_prompt="You explain research from first principles, focused on the mechanism. Use the headings "
                      "**Core idea:**, **Mechanism:** and **Why it works:**.",
        teacher_instruction="Explain the passage from first principles for an engineer: the core idea, the "
                            "mechanism step by step, and why the mechanism achieves the result.",
        output=IntuitiveOutput,
        headings=(("what_the_idea_is", "Core idea"), ("mechanism", "Mechanism"), ("why_it_works", "Why it works"))),
    "executive": Persona(
        name="executive", audience="a busy executive",
        system_prompt="You brief executives on research: utility, cost and value. Use the headings **Value:**, "
                      "**Cost:** and **Bottom line:**.",
        teacher_instruction="Brief a busy executive on the passage: what it is useful for and who benefits, what "
                            "it costs or needs, and the bottom line in one sentence.",
        output=ExecutiveOutput,
        headings=(("why_it_matters", "Value"), ("what_it_takes", "Cost"), ("bottom_line", "Bottom line"))),
}

TEACHER_SYSTEM = ("You write explanations of passages from machine-learning papers for a given audience. Stay "
                  "faithful to the passage; never invent results. Reply in JSON.")


def persona(name: str) -> Persona:
    try:
        return PERSONAS[name]
    except KeyError:
        raise ValueError(f"unknown persona {name!r}; known: {', '.join(PERSONAS)}") from None


def split_passages(text: str, max_chars: int) -> list[str]:
    """Paragraph-aligned chunks of at most ``max_chars`` (a longer paragraph is cut at sentence ends)."""
    pieces: list[str] = []
    for paragraph in (p.strip() for p in re.split(r"\n\s*\n", text or "")):
        if not paragraph:
            continue
        while len(paragraph) > max_chars:
            window = paragraph[:max_chars]
            cut = max(window.rfind(". "), window.rfind("? "), window.rfind("! "))
            cut = cut + 1 if cut > max_chars // 3 else (window.rfind(" ") if window.rfind(" ") > 0 else max_chars)
            pieces.append(paragraph[:cut].strip())
            paragraph = paragraph[cut:].strip()
        if paragraph:
            pieces.append(paragraph)
    chunks: list[str] = []
    for piece in pieces:
        if chunks and len(chunks[-1]) + 2 + len(piece) <= max_chars:
            chunks[-1] = f"{chunks[-1]}\n\n{piece}"
        else:
            chunks.append(piece)
    return chunks


def select_passages(sections: list[dict[str, Any]], limit: int, max_chars: int,
                    min_chars: int = 300) -> list[dict[str, Any]]:
    """Passages worth explaining, spread across papers and sections, in a stable order.

    Sections shorter than ``min_chars`` or flagged (hidden text) are skipped; the rest are cut into
    passages of at most ``max_chars``; the first passage of every section comes before any second one.
    """
    passages = []
    for section in sections:
        if len(section.get("text", "")) < min_chars or section.get("flags"):
            continue
        for number, chunk in enumerate(split_passages(section["text"], max_chars)):
            if len(chunk) < min_chars // 2:
                continue
            passages.append({"id": f"{section['id']}.{number}", "paper_id": section["paper_id"],
                             "paper_title": section["paper_title"], "section_title": section["section_title"],
                             "order": (number, section.get("index", 0), sha256_json(section["id"])), "text": chunk})
    passages.sort(key=lambda p: p["order"])
    return [{k: v for k, v in p.items() if k != "order"} for p in passages[:limit]]


def passage_prompt(passage: dict[str, Any]) -> str:
    """The student's user turn (the same for every persona: the persona is in the system prompt)."""
    return (f"Explain this passage from the paper \"{passage['paper_title'].strip()}\" "
            f"(section: {passage['section_title'].strip()}).\n\n{passage['text']}")


def format_persona_prompt(name: str, passage: dict[str, Any]) -> tuple[ChatMessage, ...]:
    """Teacher messages for one persona and passage."""
    spec = persona(name)
    return messages(("system", TEACHER_SYSTEM),
                    ("user", f"Audience: {spec.audience}.\nTask: {spec.teacher_instruction}\n\n{passage_prompt(passage)}"))


def render_persona(name: str, output: BaseModel | dict[str, Any]) -> str:
    """The structured output as the persona's Markdown: ``**Heading:** text`` per field, in order."""
    values = output.model_dump() if isinstance(output, BaseModel) else output
    return "\n\n".join(f"**{heading}:** {' '.join(str(values[field]).split())}"
                       for field, heading in persona(name).headings)


def parse_persona(name: str, text: str) -> dict[str, str] | None:
    """The fields of a persona-formatted answer, or None when the format is not followed.

    Followed means: every heading of the persona appears once, in order, each followed by some text,
    and nothing but whitespace comes before the first heading.
    """
    spec = persona(name)
    pattern = r"\*\*(" + "|".join(re.escape(h) for _, h in spec.headings) + r"):\*\*"
    matches = list(re.finditer(pattern, text or ""))
    if [m.group(1) for m in matches] != [h for _, h in spec.headings] or text[: matches[0].start()].strip():
        return None
    fields = {}
    for (field, _), match, following in zip(spec.headings, matches, [*matches[1:], None]):
        body = text[match.end(): following.start() if following else len(text)].strip()
        if not body:
            return None
        fields[field] = body
    return fields


def format_followed(name: str, text: str) -> bool:
    return parse_persona(name, text) is not None


def example_from_persona(name: str, passage: dict[str, Any], output: BaseModel, teacher_name: str) -> SyntheticExample:
    answer = render_persona(name, output)
    return SyntheticExample(
        id=f"explain:{passage['id']}",
        source=f"teacher:{teacher_name}",
        messages=(Message(role="system", content=persona(name).system_prompt),
                  Message(role="user", content=passage_prompt(passage)),
                  Message(role="assistant", content=answer)),
        reference=answer,
        metadata={"variant": name, "paper_id": passage["paper_id"], "section": passage["section_title"],
                  "passage": passage["id"]},
    )


# A field the reader gets must be a sentence's worth of words: a small local teacher can fill the
# schema with a bare number (`**Core idea:** 1348543468729`) or a word, and a student trained on that
# learns junk in the persona's format.
MIN_PROSE_WORDS = 3
_WORD = re.compile(r"[^\W\d_]{2,}")  # two or more letters


def prose_problem(fields: dict[str, Any]) -> str | None:
    """Why a persona output cannot be shown to a reader (a field that is empty or not prose), or None."""
    for field, value in fields.items():
        text = " ".join(str(value).split())
        if not text:
            return f"empty field {field!r}"
        if len(_WORD.findall(text)) < MIN_PROSE_WORDS:
            return f"field {field!r} is not prose: {text[:40]!r}"
    return None


def synthesize_personas(sections: list[dict[str, Any]], config: SynthesizeConfig, teacher_config: TeacherConfig,
                        teacher: Any, progress: Callable[[int, int], None] | None = None,
                        ) -> tuple[list[SyntheticExample], list[dict[str, str]]]:
    """One teacher explanation per (passage, persona): ``max_items`` passages x ``config.personas``."""
    names = [persona(name).name for name in config.personas]
    passages = select_passages(sections, config.max_items, config.source_chars)
    jobs = [(passage, name) for passage in passages for name in names]

    def one(job: tuple[dict[str, Any], str]) -> SyntheticExample | dict[str, str]:
        passage, name = job
        output, reason = teacher.structured(
            format_persona_prompt(name, passage), persona(name).output, temperature=teacher_config.temperature,
            max_tokens=teacher_config.max_tokens, seed=teacher_config.seed, max_repairs=teacher_config.max_repairs)
        item = f"explain:{passage['id']} ({name})"
        if output is None:
            return {"item": item, "reason": reason or "invalid output"}
        problem = prose_problem(output.model_dump())
        if problem:
            return {"item": item, "reason": problem}
        return example_from_persona(name, passage, output, teacher.name)

    examples: list[SyntheticExample] = []
    rejected: list[dict[str, str]] = []
    for result in teacher.map(one, jobs, concurrency=teacher_config.concurrency, progress=progress):
        (examples if isinstance(result, SyntheticExample) else rejected).append(result)
    return examples, rejected
