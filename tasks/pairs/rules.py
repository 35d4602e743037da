"""The pair rules, pure: which of an original and an improved response is chosen, if any."""

from __future__ import annotations

from typing import Literal

from tasks.curate.filters import normalize

PairDecision = Literal["chosen_improved", "chosen_original", "no_pair"]


def decide_pair(original: str, improved: str, original_ok: bool | None,
                improved_ok: bool | None) -> tuple[PairDecision, str]:
    """Apply the seed's rules; return the decision and its reason.

    improved succeeds, original fails -> chosen improved; original succeeds, improved fails -> chosen
    original; both succeed -> chosen improved; neither -> no pair; identical -> no pair. A missing
    evaluation (the judge's output never validated) -> no pair.
    """
    if normalize(original) == normalize(improved):
        return "no_pair", "identical responses"
    if not original.strip() or not improved.strip():
        return "no_pair", "empty response"
    if original_ok is None or improved_ok is None:
        return "no_pair", "missing evaluation"
    if improved_ok and not original_ok:
        return "chosen_improved", "improved succeeds, original fails"
    if original_ok and not improved_ok:
        return "chosen_original", "original succeeds, improved fails"
    if improved_ok and original_ok:
        return "chosen_improved", "both succeed"
    return "no_pair", "neither succeeds"
