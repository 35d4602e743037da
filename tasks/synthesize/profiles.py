"""profile-scorer: profiles with the score an API model gave them, as JSON-scorer SFT examples.

No teacher call: the labels are already in the database (``profile_scores.scored_by``). The student
learns to answer a profile with ``{"handle", "score", "reason"}``; validation compares its score with
the stored label (``metadata.label``). Pure functions only.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel, Field

from tasks.synthesize.records import Message, SyntheticExample


class ProfileScore(BaseModel):
    """The scorer's output for one profile."""

    handle: str = Field(description="The profile's handle, copied exactly.", max_length=120)
    score: float = Field(description="Score from 0 (weak) to 1 (strong).", ge=0, le=1)
    reason: str = Field(description="One sentence: why this score.", max_length=200)


def profile_prompt(handle: str, bio: str, bio_chars: int) -> str:
    """The student's user turn: the profile to score."""
    return f"Score this profile.\n\nHandle: {handle}\n\nProfile:\n{bio.strip()[:bio_chars]}"


def label_json(handle: str, score: float, reason: str | None) -> str:
    """The stored label as the student's JSON output (score rounded to 2 decimals, reason clipped)."""
    text = " ".join((reason or "").split())
    if len(text) > 200:
        text = text[:199].rsplit(" ", 1)[0] + "…"
    value = ProfileScore(handle=handle, score=round(min(max(float(score), 0.0), 1.0), 2), reason=text)
    return json.dumps(value.model_dump(), ensure_ascii=False)


def examples_from_profiles(profiles: list[dict[str, Any]], system_prompt: str, bio_chars: int,
                           limit: int | None = None) -> tuple[list[SyntheticExample], list[dict[str, str]]]:
    """One example per labelled profile; a profile without a score is rejected with the reason."""
    examples: list[SyntheticExample] = []
    rejected: list[dict[str, str]] = []
    for profile in sorted(profiles, key=lambda p: p["id"]):
        if profile.get("score") is None:
            rejected.append({"item": profile["id"], "reason": "profile without a score"})
            continue
        if not (profile.get("bio") or "").strip():
            rejected.append({"item": profile["id"], "reason": "profile without a bio"})
            continue
        if limit is not None and len(examples) >= limit:
            break
        output = label_json(profile["handle"], profile["score"], profile.get("reason"))
        examples.append(SyntheticExample(
            id=f"profile:{profile['handle']}",
            source=f"api:{profile.get('scored_by') or 'unknown'}",
            messages=(Message(role="system", content=system_prompt),
                      Message(role="user", content=profile_prompt(profile["handle"], profile["bio"], bio_chars)),
                      Message(role="assistant", content=output)),
            reference=output,
            metadata={"label": float(profile["score"]), "scored_by": profile.get("scored_by"),
                      "handle": profile["handle"]},
        ))
    return examples, rejected
