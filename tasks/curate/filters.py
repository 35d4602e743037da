"""Pure quality checks, dedup and split assignment. No I/O, no model: tested exhaustively."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable

# Text in a source that tries to steer the model reading it. Flagged and kept out of training.
INJECTION_PATTERNS = [
    r"\bignore\s+(all\s+|any\s+)?(the\s+)?(previous|prior|above|earlier)\s+(instructions|prompts?|rules)",
    r"\bdisregard\s+(all\s+|any\s+)?(the\s+)?(previous|prior|above|earlier|system)\b",
    r"\bforget\s+(all\s+|everything\s+)?(you\s+were\s+told|(the\s+)?previous\s+instructions)",
    r"\byou\s+are\s+now\s+(a|an|in)\b",
    r"\b(reveal|print|show|repeat)\s+(your|the)\s+(system\s+prompt|instructions|hidden\s+prompt)",
    r"\bnew\s+instructions\s*:",
    r"<\|im_start\|>|<\|system\|>|\[INST\]|<<SYS>>",
]
_INJECTION = re.compile("|".join(INJECTION_PATTERNS), re.IGNORECASE)

REFUSAL_PATTERNS = [
    r"^\s*(i'?m|i am)\s+(sorry|afraid)[,.]?\s+(but\s+)?i\s+(can(no|')t|am\s+(not\s+)?(able|unable))",
    r"\bas an ai (language )?model\b",
    r"^\s*i\s+(can(no|')t|won'?t)\s+(help|assist|answer|provide)",
]
_REFUSAL = re.compile("|".join(REFUSAL_PATTERNS), re.IGNORECASE)


def normalize(text: str) -> str:
    """Case-, accent- and whitespace-insensitive form used for exact dedup."""
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def has_injection(text: str) -> bool:
    return bool(_INJECTION.search(text))


def is_refusal(text: str) -> bool:
    return bool(_REFUSAL.search(text))


def is_degenerate(text: str, min_chars: int) -> bool:
    """Empty, too short, or one phrase repeated (a looping generation)."""
    stripped = text.strip()
    if len(stripped) < min_chars:
        return True
    words = stripped.split()
    return len(words) >= 12 and len(set(words)) / len(words) < 0.25


def latin_share(text: str) -> float:
    """Share of letters that are Latin script: a cheap wrong-language check for English recipes."""
    letters = [c for c in text if c.isalpha()]
    if not letters:
        return 1.0
    latin = sum(1 for c in letters if "LATIN" in unicodedata.name(c, ""))
    return latin / len(letters)


def quality_problem(user: str, assistant: str, min_chars: int) -> str | None:
    """The first reason an example must not be trained on, or None."""
    if has_injection(user) or has_injection(assistant):
        return "prompt injection in text"
    if is_degenerate(assistant, min_chars):
        return "empty or degenerate output"
    if is_refusal(assistant):
        return "refusal"
    if latin_share(user + " " + assistant) < 0.5:
        return "wrong language"
    return None


def split_of(example_id: str, heldout_fraction: float, salt: str) -> str:
    """'heldout' or 'train', a pure function of the id: an example never moves between weeks."""
    digest = hashlib.sha256(f"{salt}\0{example_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    return "heldout" if position < heldout_fraction else "train"


def shingles(text: str, k: int = 5) -> set[str]:
    words = normalize(text).split()
    if len(words) < k:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + k]) for i in range(len(words) - k + 1)}


def minhash(text: str, num_perm: int = 128):
    from datasketch import MinHash

    signature = MinHash(num_perm=num_perm, seed=1)
    for shingle in shingles(text):
        signature.update(shingle.encode())
    return signature


def _lsh_threshold(threshold: float) -> float:
    """LSH finds candidates at a slightly lower threshold (it needs at least two bands); every
    candidate is then confirmed against the real threshold."""
    return min(threshold, 0.9) * 0.95


def near_duplicate_groups(texts: dict[str, str], threshold: float, num_perm: int = 128) -> dict[str, str]:
    """Map every id to the id of the first item (in the given order) it nearly duplicates.

    Uses MinHash LSH, then confirms candidates with the estimated Jaccard similarity.
    """
    from datasketch import MinHashLSH

    lsh = MinHashLSH(threshold=_lsh_threshold(threshold), num_perm=num_perm)
    signatures = {}
    keep_of: dict[str, str] = {}
    for item_id, text in texts.items():
        sig = minhash(text, num_perm)
        signatures[item_id] = sig
        matches = [m for m in lsh.query(sig) if sig.jaccard(signatures[m]) >= threshold]
        if matches:
            keep_of[item_id] = keep_of[min(matches)]
        else:
            keep_of[item_id] = item_id
            lsh.insert(item_id, sig)
    return keep_of


def leaks(train_texts: dict[str, str], heldout_texts: Iterable[str], threshold: float,
          num_perm: int = 128) -> set[str]:
    """Ids of training items that are exact or near copies of any held-out item."""
    from datasketch import MinHashLSH

    heldout_list = list(heldout_texts)
    exact = {normalize(t) for t in heldout_list}
    lsh = MinHashLSH(threshold=_lsh_threshold(threshold), num_perm=num_perm)
    held_sigs = []
    for i, text in enumerate(heldout_list):
        sig = minhash(text, num_perm)
        held_sigs.append(sig)
        lsh.insert(str(i), sig)
    out = set()
    for item_id, text in train_texts.items():
        if normalize(text) in exact:
            out.add(item_id)
            continue
        sig = minhash(text, num_perm)
        if any(sig.jaccard(held_sigs[int(m)]) >= threshold for m in lsh.query(sig)):
            out.add(item_id)
    return out
