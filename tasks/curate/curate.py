"""The curate stage's plain functions: token limits with the student's own tokenizer, then filters,
dedup, stable splits and the leakage guard."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tasks.core.recipe import CurateConfig
from tasks.curate.filters import leaks, near_duplicate_groups, normalize, quality_problem, split_of
from tasks.synthesize.records import Message, SyntheticExample


class CurateResult(BaseModel):
    train: list[SyntheticExample] = Field(default_factory=list)
    heldout: list[SyntheticExample] = Field(default_factory=list)
    rejected: list[dict[str, str]] = Field(default_factory=list)
    counts: dict[str, int] = Field(default_factory=dict)


def count_tokens(example: SyntheticExample, tokenizer: Any) -> int:
    """Tokens of the whole conversation as the student will see it (chat template included)."""
    ids = tokenizer.apply_chat_template([m.model_dump() for m in example.messages], tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def _truncate(text: str, tokenizer: Any, keep_tokens: int) -> str:
    ids = tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.decode(ids[: max(keep_tokens, 0)]).rstrip()


def fit_to_limit(example: SyntheticExample, tokenizer: Any, max_tokens: int,
                 overflow: str) -> tuple[SyntheticExample | None, int, bool]:
    """Return (example or None if dropped, its token count, whether it was trimmed).

    Trimming cuts the longest of the user and assistant turns by the excess (plus a small margin for
    re-tokenization at the cut), at most three rounds.
    """
    n = count_tokens(example, tokenizer)
    if n <= max_tokens:
        return example, n, False
    if overflow == "drop":
        return None, n, False
    current = example
    for _ in range(3):
        excess = n - max_tokens
        messages = list(current.messages)
        candidates = [i for i, m in enumerate(messages) if m.role in ("user", "assistant")]
        longest = max(candidates, key=lambda i: len(messages[i].content))
        length = len(tokenizer.encode(messages[longest].content, add_special_tokens=False))
        keep = length - excess - 4
        if keep < 8:
            return None, n, False
        messages[longest] = Message(role=messages[longest].role,
                                    content=_truncate(messages[longest].content, tokenizer, keep))
        reference = messages[-1].content if current.reference is not None else None
        current = current.model_copy(update={"messages": tuple(messages), "reference": reference,
                                             "metadata": {**current.metadata, "trimmed": True}})
        n = count_tokens(current, tokenizer)
        if n <= max_tokens:
            return current, n, True
    return None, n, False


def _user_text(example: SyntheticExample) -> str:
    return " ".join(m.content for m in example.messages if m.role == "user")


def curate(examples: list[SyntheticExample], tokenizer: Any, config: CurateConfig,
           frozen_heldout: set[str] | None = None) -> CurateResult:
    """Filter, trim, dedup and split ``examples``; no held-out item or near copy enters training."""
    frozen_heldout = frozen_heldout or set()
    counts = {"input": len(examples), "quality_rejected": 0, "over_limit_dropped": 0, "trimmed": 0,
              "exact_duplicates": 0, "near_duplicates": 0, "leakage_dropped": 0}
    rejected: list[dict[str, str]] = []
    kept: list[SyntheticExample] = []
    for example in sorted(examples, key=lambda e: e.id):
        problem = quality_problem(_user_text(example), example.completion, config.min_chars)
        if problem:
            counts["quality_rejected"] += 1
            rejected.append({"item": example.id, "reason": problem})
            continue
        fitted, n_tokens, trimmed = fit_to_limit(example, tokenizer, config.max_tokens, config.overflow)
        if fitted is None:
            counts["over_limit_dropped"] += 1
            rejected.append({"item": example.id, "reason": f"{n_tokens} tokens > limit {config.max_tokens}"})
            continue
        counts["trimmed"] += int(trimmed)
        kept.append(fitted.model_copy(update={"metadata": {**fitted.metadata, "tokens": n_tokens}}))

    seen: dict[str, str] = {}
    unique: list[SyntheticExample] = []
    for example in kept:
        key = normalize(" ".join(m.content for m in example.messages if m.role != "system"))
        if key in seen:
            counts["exact_duplicates"] += 1
            rejected.append({"item": example.id, "reason": f"exact duplicate of {seen[key]}"})
            continue
        seen[key] = example.id
        unique.append(example)

    groups = near_duplicate_groups({e.id: _user_text(e) + " " + e.completion for e in unique},
                                   config.near_duplicate_threshold)
    distinct = []
    for example in unique:
        if groups[example.id] != example.id:
            counts["near_duplicates"] += 1
            rejected.append({"item": example.id, "reason": f"near duplicate of {groups[example.id]}"})
        else:
            distinct.append(example)

    heldout = [e for e in distinct
               if e.id in frozen_heldout or split_of(e.id, config.heldout_fraction, config.split_salt) == "heldout"]
    heldout_ids = {e.id for e in heldout}
    candidates = [e for e in distinct if e.id not in heldout_ids]
    leaked = leaks({e.id: _user_text(e) for e in candidates}, [_user_text(e) for e in heldout],
                   config.near_duplicate_threshold)
    train = []
    for example in candidates:
        if example.id in leaked:
            counts["leakage_dropped"] += 1
            rejected.append({"item": example.id, "reason": "near copy of a held-out item"})
        else:
            train.append(example)
    counts.update({"train": len(train), "heldout": len(heldout), "rejected": len(rejected)})
    return CurateResult(train=train, heldout=heldout, rejected=rejected, counts=counts)
