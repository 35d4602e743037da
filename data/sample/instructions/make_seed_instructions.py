"""Build ``seed_instructions.jsonl`` from the real public text in ``data/sample`` (deterministic).

``python data/sample/instructions/make_seed_instructions.py`` rewrites the file; running it twice gives
the same bytes. Every instruction's material is real text, quoted as it is, under a fixed lead line
per type (see PROVENANCE.md, "instructions/"):

* qa: Stack Exchange questions (title and body) from the ai.stackexchange.com and Cross Validated dumps;
* completion: the opening sentences of NeurIPS 2023 / ICLR 2026 paper abstracts, to be continued;
* generation: a paper abstract, for which a title is to be written;
* response: a weakness paragraph of a human NeurIPS 2023 / ICLR 2026 review, to be answered as the authors.
"""

from __future__ import annotations

import hashlib
import html
import json
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SAMPLE.parents[1]))  # the repo root: the collectors parse the review files
OUT = Path(__file__).resolve().parent / "seed_instructions.jsonl"
PER_TYPE = {"qa": 30, "completion": 20, "generation": 20, "response": 20}


def _plain(text: str) -> str:
    text = html.unescape(re.sub(r"<[^>]+>", " ", text or ""))
    return " ".join(text.split())


def _clip(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0]
    return cut.rstrip(",;:") + " …"


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]


def _id(kind: str, origin: str) -> str:
    return f"seed:{kind}:{hashlib.sha256(origin.encode()).hexdigest()[:12]}"


def questions() -> list[dict]:
    out = []
    for site, path, limit in (("ai.stackexchange.com", SAMPLE / "stackexchange/ai.stackexchange.com/Posts.xml", 22),
                              ("stats.stackexchange.com", SAMPLE / "stackexchange/stats.stackexchange.com/Posts_sample.xml", 8)):
        taken = 0
        for row in ET.parse(path).getroot().iter("row"):
            if row.get("PostTypeId") != "1" or not row.get("Title") or taken >= limit:
                continue
            taken += 1
            body = _clip(_plain(row.get("Body", "")), 600)
            title = _plain(row.get("Title"))
            origin = f"https://{site}/q/{row.get('Id')}"
            out.append({"id": _id("qa", origin), "type": "qa", "prompt": f"{title}\n\n{body}".strip(),
                        "origin": origin, "license": "CC BY-SA 3.0 (Stack Exchange)"})
    return out


def papers() -> list[dict]:
    """Distinct papers (title, abstract) and their human reviews, from the PeerRead and OpenReview samples."""
    from tasks.collect.openreview import read_openreview_files, read_peerread

    reviews = read_peerread(SAMPLE / "peerread/neurips_2023")[0] + read_openreview_files(
        SAMPLE / "openreview/api_v2_iclr2026")[0]
    by_forum: dict[str, dict] = {}
    for review in sorted(reviews, key=lambda r: r.id):
        paper = by_forum.setdefault(review.forum_id, {"forum": review.forum_id, "title": review.paper_title,
                                                      "abstract": _plain(review.paper_abstract), "source": review.source,
                                                      "weaknesses": []})
        if review.weaknesses.strip():
            paper["weaknesses"].append((review.id, " ".join(review.weaknesses.split())))
    return [p for _, p in sorted(by_forum.items()) if p["abstract"]]


def _license(source: str) -> str:
    if source.startswith("openreview"):
        return "CC BY 4.0 (OpenReview note licence field)"
    return "public OpenReview notes, converted upstream; no licence file (see data/sample/PROVENANCE.md)"


def main() -> None:
    rows = questions()[: PER_TYPE["qa"]]
    catalogue = papers()
    for paper in catalogue[: PER_TYPE["completion"]]:
        opening = " ".join(_sentences(paper["abstract"])[:2])
        origin = f"{paper['source']}:{paper['forum']}#abstract"
        rows.append({"id": _id("completion", origin), "type": "completion", "prompt": opening,
                     "origin": origin, "license": _license(paper["source"])})
    for paper in catalogue[-PER_TYPE["generation"]:]:
        origin = f"{paper['source']}:{paper['forum']}#title"
        rows.append({"id": _id("generation", origin), "type": "generation",
                     "prompt": f"Write a short, informative title for the paper with this abstract.\n\n"
                               f"{_clip(paper['abstract'], 900)}",
                     "origin": origin, "license": _license(paper["source"])})
    with_weaknesses = [p for p in catalogue if p["weaknesses"]]
    for paper in with_weaknesses[: PER_TYPE["response"]]:
        review_id, weakness = paper["weaknesses"][0]
        origin = f"{review_id}#weaknesses"
        rows.append({"id": _id("response", origin), "type": "response",
                     "prompt": f"A reviewer of the paper \"{paper['title']}\" wrote:\n\n\"{_clip(weakness, 700)}\"\n\n"
                               "Write the authors' reply to this comment.",
                     "origin": origin, "license": _license(paper["source"])})
    with open(OUT, "w", encoding="utf-8") as handle:
        handle.writelines(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)
    counts = {kind: sum(r["type"] == kind for r in rows) for kind in PER_TYPE}
    print(f"wrote {len(rows)} instructions to {OUT}: {counts}")


if __name__ == "__main__":
    main()
