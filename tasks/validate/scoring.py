"""Task metrics from predictions, pure: what each recipe's seed says to measure, beyond ROUGE-L.

``rating`` (paper-reviewer): the rating in the predicted review against the human rating of the
held-out paper (``metadata.paper_rating``, the mean of its human reviews; else the reference's
rating): ``rating_mae`` (lower is better), ``rating_pearson``, ``rating_spearman``, and
``rating_parsed`` (share of outputs with a rating on the review scale, 0-10). An output without one
counts in the share, not in the error: a rating off the scale (the grammar constrains JSON's shape,
not a number's range, so a small model can write 1000000000000000) is no rating, not a huge error.

``profile`` (profile-scorer): the per-example agreement score ``1 - |predicted - label|`` with scores
in [0, 1] (1: the API model's score exactly; an output with no parsable score scores 0), and over the
held-out set ``profile_score_avg``, ``profile_score_min`` and ``profile_label_pearson`` (Pearson
correlation of predicted scores with the labels, over the parsed outputs).

``persona`` (paper-explainer): ``format_followed``, the share of outputs in the persona's format
(every heading, in order, each with text; see :func:`tasks.synthesize.personas.parse_persona`).
"""

from __future__ import annotations

import json
import re
from typing import Any

from tasks.validate.metrics import mean, mean_absolute_error, pearson, spearman

_RATING = re.compile(r'"rating"\s*:\s*(-?\d+(?:\.\d+)?)')
_SCORE = re.compile(r'"score"\s*:\s*(-?\d+(?:\.\d+)?)')


def json_object(text: str) -> dict[str, Any] | None:
    """The JSON object in ``text`` (a ```json fence allowed), or None."""
    stripped = (text or "").strip()
    fence = re.match(r"^```(?:json)?\s*(.*?)\s*```$", stripped, re.DOTALL)
    if fence:
        stripped = fence.group(1)
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _number(text: str, key: str, pattern: re.Pattern[str]) -> float | None:
    value = (json_object(text) or {}).get(key)
    if isinstance(value, bool):
        value = None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    match = pattern.search(text or "")  # an output cut off after the field still carries it
    return float(match.group(1)) if match else None


RATING_SCALE = (0.0, 10.0)  # tasks/synthesize/review.py: the review schema's rating bounds


def extract_rating(text: str) -> float | None:
    """The review's ``rating`` (from the JSON, or from a cut-off output), or None if absent or off the scale."""
    rating = _number(text, "rating", _RATING)
    low, high = RATING_SCALE
    return rating if rating is not None and low <= rating <= high else None


def extract_score(text: str) -> float | None:
    """The profile ``score`` (from the JSON, or from a cut-off output), or None."""
    return _number(text, "score", _SCORE)


def profile_agreement(predicted: float | None, label: float) -> float:
    """``1 - |predicted - label|`` for scores in [0, 1], clipped to [0, 1]; 0 when nothing was predicted."""
    if predicted is None:
        return 0.0
    predicted = min(max(predicted, 0.0), 1.0)
    return max(0.0, 1.0 - abs(predicted - float(label)))


def _label(example: dict[str, Any], key: str, extract: Any) -> float | None:
    metadata = example.get("metadata") or {}
    if metadata.get(key) is not None:
        return float(metadata[key])
    reference = example.get("reference") or example["messages"][-1]["content"]
    return extract(reference)


def rating_metrics(examples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
    pairs = []
    for example, row in zip(examples, predictions):
        row["rating"] = extract_rating(row["prediction"])
        row["rating_label"] = _label(example, "paper_rating", extract_rating)
        if row["rating"] is not None and row["rating_label"] is not None:
            pairs.append((row["rating"], row["rating_label"]))
    predicted, labels = [p for p, _ in pairs], [label for _, label in pairs]
    return {"rating_mae": mean_absolute_error(predicted, labels), "rating_pearson": pearson(predicted, labels),
            "rating_spearman": spearman(predicted, labels),
            "rating_parsed": len(pairs) / len(predictions) if predictions else float("nan")}


def profile_metrics(examples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
    agreements, parsed = [], []
    for example, row in zip(examples, predictions):
        label = _label(example, "label", extract_score)
        row["score"], row["score_label"] = extract_score(row["prediction"]), label
        if label is None:
            continue
        row["agreement"] = profile_agreement(row["score"], label)
        agreements.append(row["agreement"])
        if row["score"] is not None:
            parsed.append((row["score"], label))
    return {"profile_score_avg": mean(agreements),
            "profile_score_min": min(agreements) if agreements else float("nan"),
            "profile_label_pearson": pearson([p for p, _ in parsed], [label for _, label in parsed]),
            "profile_score_mae": mean_absolute_error([p for p, _ in parsed], [label for _, label in parsed])}


def persona_metrics(examples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
    from tasks.synthesize.personas import format_followed

    followed = []
    for example, row in zip(examples, predictions):
        variant = (example.get("metadata") or {}).get("variant")
        row["format_followed"] = bool(variant) and format_followed(variant, row["prediction"])
        followed.append(1.0 if row["format_followed"] else 0.0)
    return {"format_followed": mean(followed)}


SCORERS = {"rating": rating_metrics, "profile": profile_metrics, "persona": persona_metrics}


def task_metrics(scorer: str, examples: list[dict[str, Any]], predictions: list[dict[str, Any]]) -> dict[str, float]:
    """The scorer's metrics over the held-out set; adds per-example fields to ``predictions`` in place."""
    if scorer == "text":
        return {}
    if scorer not in SCORERS:
        raise ValueError(f"unknown validate.scorer {scorer!r}; known: text, {', '.join(SCORERS)}")
    return SCORERS[scorer](examples, predictions)
