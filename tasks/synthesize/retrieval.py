"""BM25 retrieval of similar human examples, pure: the few-shot examples put in a teacher prompt.

The corpus is small (a few hundred reviews), so the index is built in memory per stage run with
rank-bm25's BM25+ (Okapi BM25 with a lower-bounded term frequency normalization, Lv & Zhai 2011): its
IDF never drops to zero or below, which Okapi's does for a word in half the documents of a small
corpus. Tokenization is lower-cased words minus a short stop list. Ties are broken by
id, so the same corpus and query always give the same examples (and the same teacher cache key).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

_TOKEN = re.compile(r"[a-z0-9]+")
STOPWORDS = frozenset(
    ["a", "an", "and", "are", "as", "at", "be", "by", "for", "from", "has", "have", "in", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "we", "with", "our", "which", "these", "those", "their", "they", "was", "were", "be", "been", "can", "not", "but", "into", "than", "then", "there", "such", "also", "more", "most"]
)


def tokenize(text: str) -> list[str]:
    """Lower-cased alphanumeric words without stop words (and without one-letter tokens)."""
    return [t for t in _TOKEN.findall(text.lower()) if len(t) > 1 and t not in STOPWORDS]


class BM25Index:
    """BM25+ over ``(id, text)`` documents.

    Args:
        documents: the corpus; ids must be unique.
    """

    def __init__(self, documents: Sequence[tuple[str, str]]):
        ids = [doc_id for doc_id, _ in documents]
        if len(set(ids)) != len(ids):
            raise ValueError("BM25Index: document ids must be unique")
        self.ids = ids
        self._bm25 = None
        tokens = [tokenize(text) for _, text in documents]
        if any(tokens):
            from rank_bm25 import BM25Plus

            # rank-bm25 divides by the average document length: an empty document is given one
            # placeholder token so a corpus with an empty text still indexes.
            self._bm25 = BM25Plus([t or ["\0"] for t in tokens])

    def __len__(self) -> int:
        return len(self.ids)

    def search(self, query: str, k: int, exclude: Callable[[str], bool] | None = None) -> list[tuple[str, float]]:
        """The ``k`` best documents for ``query`` as ``(id, score)``, best first, ties by id.

        Documents for which ``exclude(id)`` is true are never returned (e.g. the paper's own reviews).
        A query with no known word still returns ``k`` documents (score 0), so a prompt always gets
        its few-shot examples; an empty corpus returns none.
        """
        if k <= 0 or not self.ids:
            return []
        terms = tokenize(query)
        if self._bm25 is not None and terms:
            scores = [float(s) for s in self._bm25.get_scores(terms)]
        else:
            scores = [0.0] * len(self.ids)
        ranked = sorted(
            ((doc_id, score) for doc_id, score in zip(self.ids, scores) if not (exclude and exclude(doc_id))),
            key=lambda item: (-item[1], item[0]),
        )
        return ranked[:k]
