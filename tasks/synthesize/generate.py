"""Plain functions of the synthesize stage: prompt formatting, output parsing, example building.

Formatting and parsing are pure (distilabel's format_input / format_output); the only side effect is
the teacher call in :func:`synthesize`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from tasks.core.hashing import sha256_json
from tasks.core.recipe import SynthesizeConfig, TeacherConfig
from tasks.curate.filters import normalize
from tasks.synthesize.records import GroundedQA, Message, SyntheticExample
from tasks.teacher.base import ChatMessage, messages

GROUNDED_QA_SYSTEM = (
    "You write training data for a statistics and machine-learning assistant. Given a passage from a "
    "paper, write one question a practitioner might ask that the passage answers, a concise answer based "
    "only on the passage, and a short exact quote from the passage that supports it. Reply in JSON."
)


def format_grounded_qa(section: dict[str, Any], source_chars: int) -> tuple[ChatMessage, ...]:
    text = section["text"][:source_chars]
    user = (f"Paper: {section['paper_title']} (arXiv:{section['paper_id']})\n"
            f"Section: {section['section_title']}\n\nPassage:\n{text}")
    return messages(("system", GROUNDED_QA_SYSTEM), ("user", user))


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def quote_support(quote: str, passage: str) -> float:
    """Share of the quote's words that appear in the passage (1.0 for an exact quote)."""
    words = _words(quote)
    if not words:
        return 0.0
    vocab = set(_words(passage))
    return sum(w in vocab for w in words) / len(words)


def citation(section: dict[str, Any]) -> str:
    return f"[arXiv:{section['paper_id']}, §{section['section_title']}]"


def qa_problem(qa: GroundedQA, section: dict[str, Any]) -> str | None:
    """Why a teacher's Q&A must not be trained on, or None.

    The 135M default teacher copies instead of asking: its "questions" were the paper's or the
    section's title, and an answer that repeated the question, each teaching the student to echo.
    """
    question, answer = normalize(qa.question), normalize(qa.answer)
    if not question or not answer:
        return "empty question or answer"
    if question in (normalize(section["paper_title"]), normalize(section["section_title"])):
        return "the question is a title"
    if question in answer:
        return "the answer restates the question"
    return None


def example_from_grounded_qa(section: dict[str, Any], qa: GroundedQA, system_prompt: str,
                             teacher_name: str) -> SyntheticExample:
    """The SFT example for one grounded Q&A: the answer ends with its citation."""
    answer = f"{qa.answer.strip()} {citation(section)}"
    return SyntheticExample(
        id=f"qa:{section['id']}",
        source=f"teacher:{teacher_name}",
        messages=(Message(role="system", content=system_prompt),
                  Message(role="user", content=qa.question.strip()),
                  Message(role="assistant", content=answer)),
        reference=answer,
        metadata={"paper_id": section["paper_id"], "section": section["section_title"], "quote": qa.quote,
                  "quote_support": round(quote_support(qa.quote, section["text"]), 3)},
    )


def example_from_qa_pair(pair: dict[str, Any], system_prompt: str) -> SyntheticExample:
    """A human question with its accepted answer, as an SFT example."""
    title = pair.get("title", "").strip()
    question = pair.get("question", "").strip()
    user = f"{title}\n\n{question}" if title and title not in question else (question or title)
    return SyntheticExample(
        id=f"human:{pair['id']}",
        source=f"human:{pair.get('source', 'unknown')}",
        messages=(Message(role="system", content=system_prompt),
                  Message(role="user", content=user),
                  Message(role="assistant", content=pair["answer"].strip())),
        reference=pair["answer"].strip(),
        metadata={"tags": pair.get("tags", []), "url": pair.get("url")},
    )


def select_sections(sections: list[dict[str, Any]], limit: int, min_chars: int = 300) -> list[dict[str, Any]]:
    """Sections worth asking about, spread across papers, in a stable order."""
    usable = [s for s in sections if len(s.get("text", "")) >= min_chars and not s.get("flags")]
    usable.sort(key=lambda s: (s.get("index", 0), sha256_json(s["id"])))
    return usable[:limit]


def synthesize(
    records: list[dict[str, Any]],
    config: SynthesizeConfig,
    teacher_config: TeacherConfig,
    teacher: Any,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[SyntheticExample], list[dict[str, str]]]:
    """Build the SFT examples for a recipe from collected records.

    Returns the examples and the rejected items (``{"item", "reason"}``): teacher outputs that never
    validated, and records of a kind this generator cannot use.
    """
    examples: list[SyntheticExample] = []
    rejected: list[dict[str, str]] = []
    by_type: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_type.setdefault(record.get("record_type", "unknown"), []).append(record)

    if config.include_human:
        humans = sorted(by_type.get("QAPair", []), key=lambda r: r["id"])
        if config.max_human is not None:
            humans = humans[: config.max_human]
        examples.extend(example_from_qa_pair(pair, config.system_prompt) for pair in humans)

    if config.generator == "grounded_qa":
        sections = select_sections(by_type.get("PaperSection", []), config.max_items)

        def one(section: dict[str, Any]) -> SyntheticExample | dict[str, str]:
            qa, reason = teacher.structured(
                format_grounded_qa(section, config.source_chars), GroundedQA,
                temperature=teacher_config.temperature, max_tokens=teacher_config.max_tokens,
                seed=teacher_config.seed, max_repairs=teacher_config.max_repairs,
            )
            if qa is None:
                return {"item": section["id"], "reason": reason or "invalid output"}
            problem = qa_problem(qa, section)
            if problem:
                return {"item": section["id"], "reason": problem}
            return example_from_grounded_qa(section, qa, config.system_prompt, teacher.name)

        for result in teacher.map(one, sections, concurrency=teacher_config.concurrency, progress=progress):
            (examples if isinstance(result, SyntheticExample) else rejected).append(result)
    elif config.generator == "review":
        from tasks.synthesize.review import synthesize_reviews

        more, bad = synthesize_reviews(by_type.get("Review", []), config, teacher_config, teacher, progress)
        examples.extend(more)
        rejected.extend(bad)
    elif config.generator == "personas":
        from tasks.synthesize.personas import synthesize_personas

        more, bad = synthesize_personas(by_type.get("PaperSection", []), config, teacher_config, teacher, progress)
        examples.extend(more)
        rejected.extend(bad)
    elif config.generator == "instructions":
        from tasks.synthesize.instructions import synthesize_instructions

        more, bad = synthesize_instructions(by_type.get("Instruction", []), config, teacher_config, teacher, progress)
        examples.extend(more)
        rejected.extend(bad)
    elif config.generator == "profile_labels":
        from tasks.synthesize.profiles import examples_from_profiles

        more, bad = examples_from_profiles(by_type.get("Profile", []), config.system_prompt, config.source_chars)
        examples.extend(more)
        rejected.extend(bad)
    elif config.generator == "passthrough":
        pass  # human examples only (include_human)
    unused = sorted(set(by_type) - _USED_BY[config.generator] - {"QAPair"} - {"Paper"})
    rejected.extend({"item": f"{len(by_type[kind])} {kind} records", "reason": f"generator {config.generator} "
                     f"does not use {kind} records"} for kind in unused)
    return examples, rejected


# Record types each generator reads (QAPair records are read by include_human; Paper records only
# carry metadata for their sections).
_USED_BY = {"grounded_qa": {"PaperSection"}, "review": {"Review"}, "personas": {"PaperSection"},
            "instructions": {"Instruction"}, "profile_labels": {"Profile"}, "passthrough": set()}
