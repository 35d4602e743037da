"""arXiv: search queries and id lists through the ``arxiv`` package, PDFs to Markdown sections.

A paper becomes one :class:`Paper` (metadata, the PDF's sha256) and its :class:`PaperSection` records:
title, abstract, then the numbered sections (subsections folded in); references and everything after
them are dropped. PDFs are untrusted input: they are converted in a child process
(:mod:`tasks.collect.pdf_worker`) with a wall-clock timeout and an address-space limit, and a PDF
that is corrupt, truncated, encrypted, not a PDF, too slow or too big becomes a :class:`Rejected`
record. Text a reader cannot see (white, tiny, invisible, off the page) is flagged on the sections
that contain it, so curation can keep it out of training data.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from tasks.collect.common import (
    BadSourceFile,
    CollectError,
    RetryPolicy,
    SourceConfigError,
    get_with_retries,
    logger,
    newest,
    utc,
)
from tasks.collect.records import Paper, PaperSection, Record, Rejected
from tasks.core.hashing import sha256_file

_WORKER = Path(__file__).with_name("pdf_worker.py")

_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
_BOLD_LINE = re.compile(r"^\s*\*\*(.+?)\*\*\s*$")
_NUMBERED = re.compile(r"^(?P<num>\d{1,2}|[IVXL]{1,5})\.?\s+(?P<title>\S.*)$")
_SUBNUMBERED = re.compile(r"^\d{1,2}\.\d{1,2}(\.\d{1,2})*\.?\s+\S")
_REFERENCES = re.compile(
    r"^((\d{1,2}|[IVXL]{1,5})\.?\s+)?(references?( and notes)?|bibliography|works cited|literature cited)$",
    re.IGNORECASE,
)
_ABSTRACT = re.compile(r"^abstract[.:]?$", re.IGNORECASE)
_INLINE_ABSTRACT = re.compile(r"^\W{0,4}abstract\W{0,4}[.:—–-]*\W{0,4}\s*", re.IGNORECASE)
# Unnumbered parts that are not the paper's content: dropped rather than folded into a section.
_BOILERPLATE = re.compile(
    r"^(acknowledge?ments?|keywords?|index terms|ccs concepts|funding|author contributions?"
    r"|conflicts? of interest|competing interests|data availability)\b",
    re.IGNORECASE,
)


def _clean_heading(text: str) -> str:
    text = re.sub(r"[*_`]+", "", text)
    text = re.sub(r"<[^>]+>", "", text)
    return re.sub(r"\s+", " ", text).strip(" #:.")


def _heading_of(line: str) -> str | None:
    match = _HEADING.match(line)
    if match:
        return _clean_heading(match.group(2))
    match = _BOLD_LINE.match(line)
    if match and len(line) < 100:
        # pymupdf4llm sometimes renders a section title as a bold line; only take the ones that
        # look like section titles, never a bold sentence.
        text = _clean_heading(match.group(1))
        if (
            _NUMBERED.match(text)
            or _SUBNUMBERED.match(text)
            or _ABSTRACT.match(text)
            or _REFERENCES.match(text)
        ):
            return text
    return None


@dataclass
class _Part:
    title: str
    kind: str  # front | abstract | numbered | sub | other | boilerplate
    lines: list[str] = field(default_factory=list)


def _parts(markdown: str) -> list[_Part]:
    parts = [_Part("", "front")]
    for line in markdown.splitlines():
        heading = _heading_of(line)
        if heading is None:
            parts[-1].lines.append(line)
            continue
        if _REFERENCES.match(heading):
            break  # references and everything after them (appendices) are dropped
        if _ABSTRACT.match(heading):
            kind = "abstract"
        elif _SUBNUMBERED.match(heading):
            kind = "sub"
        elif _NUMBERED.match(heading) and not heading.isdigit():
            kind = "numbered"
        elif _BOILERPLATE.match(heading):
            kind = "boilerplate"
        else:
            kind = "other"
        parts.append(_Part(heading, kind, [line] if kind in ("sub", "other") else []))
    return parts


def _text(lines: list[str]) -> str:
    return re.sub(r"\n{3,}", "\n\n", "\n".join(line.rstrip() for line in lines)).strip()


def _unlabelled_abstract(parts: list[_Part], known: str) -> list[tuple[str, str]]:
    """The abstract of a paper without an "Abstract" heading.

    In order: a paragraph that starts with "Abstract" (some templates), the abstract from the arXiv
    metadata, or the longest paragraph of the front matter (revtex puts the abstract there unlabelled).
    """
    first_section = next((i for i, p in enumerate(parts) if p.kind in ("numbered", "sub")), len(parts))
    front_lines = [
        line
        for p in parts[:first_section]
        if p.kind in ("front", "other")
        for line in (p.lines[1:] if p.kind == "other" else p.lines)
    ]
    paragraphs = [p.strip() for p in _text(front_lines).split("\n\n") if p.strip()]
    for paragraph in paragraphs:
        if _INLINE_ABSTRACT.match(paragraph) and len(paragraph) > 40:
            return [("Abstract", _INLINE_ABSTRACT.sub("", paragraph, count=1).strip())]
    if known.strip():
        return [("Abstract", known.strip())]
    longest = max(paragraphs, key=len, default="")
    return [("Abstract", longest)] if len(longest) >= 300 else []


def split_markdown_sections(
    markdown: str,
    paper_id: str,
    paper_title: str,
    *,
    source: str = "arxiv",
    updated: datetime | None = None,
    abstract: str = "",
) -> list[PaperSection]:
    """Split a paper's Markdown into title, abstract and numbered sections; drop the references.

    Subsections (``3.1 ...``) and unnumbered headings inside a numbered section are folded into it
    with their heading line kept; acknowledgements, keywords and similar are dropped. A paper with no
    numbered sections gets one section per heading; one with no headings at all, a single ``Body``.

    Args:
        markdown: The paper as Markdown (pymupdf4llm output).
        paper_id: The paper's id, e.g. ``2304.02623v1``; section ids are ``arxiv:<paper_id>#<index>``.
        paper_title: The title; when empty, the first heading is used.
        source: The ``source`` field of the records.
        updated: The ``updated`` field of the records (the paper's last change).
        abstract: The abstract from metadata, used when the Markdown has no labelled abstract.

    Returns:
        Sections in reading order, index 0 being the title.
    """
    parts = _parts(markdown)
    front = parts[0]
    if not paper_title:
        paper_title = next((p.title for p in parts[1:] if p.kind == "other"), "") or "Untitled"
    sections: list[tuple[str, str]] = [("Title", paper_title)]

    abstract_part = next((p for p in parts if p.kind == "abstract"), None)
    if abstract_part is not None:
        sections.append(("Abstract", _text(abstract_part.lines)))
    else:
        sections.extend(_unlabelled_abstract(parts, abstract))

    body = [p for p in parts[1:] if p.kind != "abstract"]
    if any(p.kind == "numbered" for p in body):
        current: _Part | None = None
        for part in body:
            if part.kind == "numbered":
                current = _Part(part.title, "numbered", list(part.lines))
                sections.append((current.title, ""))
            elif part.kind == "boilerplate":
                current = None
            elif current is not None:
                current.lines.extend(part.lines)
            if current is not None:
                sections[-1] = (current.title, _text(current.lines))
    else:
        headed = [p for p in body if p.kind in ("other", "sub") and p.title != paper_title]
        if headed:
            for part in headed:
                sections.append((part.title, _text(part.lines[1:])))
        else:
            text = _text([line for p in body for line in p.lines] or front.lines)
            if text:
                sections.append(("Body", text))

    records = []
    for title, text in sections:
        if not text.strip():
            continue
        records.append(
            PaperSection(
                id=f"arxiv:{paper_id}#{len(records)}",
                source=source,
                updated=updated,
                paper_id=paper_id,
                paper_title=paper_title,
                section_title=title,
                index=len(records),
                text=text,
            )
        )
    return records


def _normalize(text: str) -> str:
    return re.sub(r"[\W_]+", " ", text).strip().lower()


def flag_hidden_text(sections: list[PaperSection], hidden: list[dict[str, Any]]) -> list[PaperSection]:
    """Add ``hidden_text:<reason>`` flags to the sections that contain hidden spans.

    Hidden text that cannot be located in any section (pymupdf4llm may drop or reflow it) flags every
    section with ``hidden_text_unlocated:<reason>``: the paper is suspect as a whole.
    """
    if not hidden:
        return sections
    flags: dict[int, set[str]] = {}
    normalized = [_normalize(s.text) for s in sections]
    for span in hidden:
        needle = _normalize(span.get("text", ""))
        if len(needle) < 3:
            continue
        hits = [i for i, text in enumerate(normalized) if needle in text]
        if not hits:
            hits = list(range(len(sections)))
            label = f"hidden_text_unlocated:{span['reason']}"
        else:
            label = f"hidden_text:{span['reason']}"
        for i in hits:
            flags.setdefault(i, set()).add(label)
    return [
        s.model_copy(update={"flags": sorted(set(s.flags) | flags[i])}) if i in flags else s
        for i, s in enumerate(sections)
    ]


def pdf_to_sections(
    pdf_path: Path,
    paper_id: str,
    paper_title: str | None = None,
    timeout_s: float = 120,
    memory_mb: int = 2048,
    *,
    source: str = "arxiv",
    updated: datetime | None = None,
    abstract: str = "",
) -> tuple[list[PaperSection], list[Rejected]]:
    """Convert an untrusted PDF to sections in a child process with time and memory limits.

    Args:
        pdf_path: The PDF file.
        paper_id: arXiv id (or file stem) naming the sections.
        paper_title: Known title (arXiv metadata); else the first Markdown heading.
        timeout_s: Wall-clock limit for the child; it is killed after it.
        memory_mb: Address-space limit of the child (``RLIMIT_AS``).
        source: The ``source`` field of the records.
        updated: The ``updated`` field of the records.
        abstract: The abstract from metadata, for papers whose PDF does not label one.

    Returns:
        ``(sections, [])`` or ``([], [Rejected])``: never raises for a bad PDF.
    """
    item = f"arxiv:{paper_id}"
    with tempfile.TemporaryDirectory(prefix="distillery-pdf-") as tmp:
        out = Path(tmp) / "result.json"
        command = [
            sys.executable,
            "-I",
            str(_WORKER),
            str(Path(pdf_path).resolve()),
            str(out),
            str(int(memory_mb)),
            str(int(timeout_s) + 1),
        ]
        try:
            completed = subprocess.run(command, capture_output=True, timeout=timeout_s, cwd=tmp, check=False)
        except subprocess.TimeoutExpired:
            return [], [
                Rejected(source=source, item=item, reason=f"PDF conversion timed out after {timeout_s:g}s")
            ]
        try:
            result = json.loads(out.read_text(encoding="utf-8")) if out.is_file() else None
        except ValueError:  # a worker that died while writing (out of memory) leaves a partial file
            result = None
        if result is None:
            tail = completed.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            if completed.returncode < 0:
                reason = f"PDF worker killed by signal {-completed.returncode} (time or memory limit?)"
            elif "MemoryError" in tail[0] or "memory" in tail[0].lower() or "bad_alloc" in tail[0]:
                reason = f"memory limit of {memory_mb} MB exceeded"
            else:
                reason = f"PDF worker exited with code {completed.returncode}: {tail[0][:200]}"
            return [], [Rejected(source=source, item=item, reason=reason)]
    if not result.get("ok"):
        return [], [Rejected(source=source, item=item, reason=result.get("reason", "unknown failure"))]
    # Broken fonts can yield lone surrogates, which no UTF-8 file (or tokenizer) accepts.
    markdown = result["markdown"].encode("utf-8", "replace").decode("utf-8")
    sections = split_markdown_sections(
        markdown, paper_id, paper_title or "", source=source, updated=updated, abstract=abstract
    )
    if not sections:
        return [], [Rejected(source=source, item=item, reason="no sections found in the converted text")]
    return flag_hidden_text(sections, result.get("hidden", [])), []


@dataclass
class ArxivResult:
    """What one arXiv collection produced."""

    records: list[Record] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)
    watermark: datetime | None = None
    skipped_unchanged: int = 0
    # Update times of papers rejected this run: the watermark stays below them so that a paper that
    # failed (a download that kept failing, a PDF over the time limit) is tried again next run.
    failed_at: list[datetime] = field(default_factory=list)

    def reject(self, paper: Paper, rejected: list[Rejected]) -> None:
        self.rejected.extend(rejected)
        if paper.updated is not None:
            self.failed_at.append(paper.updated)

    def final_watermark(self) -> datetime | None:
        """The newest update seen, held just below the oldest paper that failed this run."""
        if self.watermark is None or not self.failed_at:
            return self.watermark
        return min(self.watermark, min(self.failed_at) - timedelta(microseconds=1))


def _convert_many(
    jobs: list[tuple[Paper, Path, str]], workers: int, timeout_s: float, memory_mb: int, out: ArxivResult
) -> None:
    """Convert PDFs (in parallel child processes) and add the Paper and its sections, or a rejection.

    Each job is (paper, PDF path, known title or "" to take the title from the PDF's first heading).
    """

    def one(job: tuple[Paper, Path, str]) -> tuple[Paper, list[PaperSection], list[Rejected]]:
        paper, path, title = job
        paper_id = paper.id.removeprefix("arxiv:")
        sections, rejected = pdf_to_sections(
            path,
            paper_id,
            title,
            timeout_s,
            memory_mb,
            source=paper.source,
            updated=paper.updated,
            abstract=paper.abstract,
        )
        return paper, sections, rejected

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for paper, sections, rejected in pool.map(one, jobs):
            if rejected:
                out.reject(paper, rejected)  # no Paper either: the next run tries the PDF again
            else:
                out.records.append(paper)
                out.records.extend(sections)


def _load_metadata(folder: Path) -> dict[str, dict[str, Any]]:
    path = folder / "metadata.json"
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            return {str(entry["file"]): dict(entry) for entry in data}
        return {str(name): dict(entry) for name, entry in data.items()}
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise BadSourceFile(
            f"arxiv_pdfs: {path} is not a metadata.json mapping file names (or a list of entries with "
            f"'file') to metadata: {type(exc).__name__}: {exc}"[:500]
        ) from exc


def collect_local_pdfs(
    path: Path,
    known: dict[str, str],
    options: dict[str, Any],
    limit: int | None = None,
    since: datetime | None = None,
) -> ArxivResult:
    """Papers from a folder of PDFs (or one PDF), with an optional ``metadata.json`` beside them.

    ``metadata.json`` maps a file name to ``{"id", "title", "abstract", "authors", "categories",
    "updated"}``; without it the id is the file stem and the title the file stem too (the sections
    carry the title found in the PDF). A PDF whose Paper record is unchanged is not parsed again.
    """
    if not path.exists():
        raise SourceConfigError(f"arxiv_pdfs: {path} does not exist")
    files = [path] if path.is_file() else sorted(path.glob("*.pdf"))
    metadata = _load_metadata(path if path.is_dir() else path.parent)
    out = ArxivResult()
    jobs: list[tuple[Paper, Path, str]] = []
    for file in files:
        meta = metadata.get(file.name, {})
        paper_id = str(meta.get("id") or file.stem)
        updated = datetime.fromisoformat(meta["updated"]) if meta.get("updated") else None
        if since is not None and updated is not None and utc(updated) <= since:
            continue
        paper = Paper(
            id=f"arxiv:{paper_id}",
            source=options.get("source_name", "arxiv:local"),
            updated=utc(updated) if updated else None,
            title=str(meta.get("title") or file.stem),
            abstract=str(meta.get("abstract", "")),
            authors=list(meta.get("authors", [])),
            categories=list(meta.get("categories", [])),
            pdf_url=meta.get("pdf_url"),
            pdf_sha256=sha256_file(file),
        )
        out.watermark = newest(out.watermark, paper.updated)
        if known.get(paper.id) == paper.content_sha():
            out.skipped_unchanged += 1
            continue
        jobs.append((paper, file, str(meta.get("title") or "")))
        if limit is not None and len(jobs) >= limit:
            if file != files[-1]:
                out.watermark = None  # files are in name order, not time order: unseen ones may be newer
            break
    _convert_many(
        jobs,
        int(options.get("workers", 2)),
        float(options.get("timeout_s", 120)),
        int(options.get("memory_mb", 2048)),
        out,
    )
    return out


def make_client(options: dict[str, Any]):
    """An ``arxiv.Client`` from options: ``base_url``, ``page_size``, ``delay_seconds``, ``num_retries``."""
    import arxiv

    client = arxiv.Client(
        page_size=int(options.get("page_size", 100)),
        delay_seconds=float(options.get("delay_seconds", 3.0)),
        num_retries=int(options.get("num_retries", 3)),
    )
    if options.get("base_url"):
        # arxiv 4.0.2 formats every request as ``query_url_format.format(urlencode(args))``.
        client.query_url_format = str(options["base_url"]).split("?")[0] + "?{}"
    return client


def _pdf_url(url: str, options: dict[str, Any]) -> str:
    base = options.get("pdf_base_url")
    if not base:
        return url
    parts = urlsplit(url)
    return str(base).rstrip("/") + parts.path + (f"?{parts.query}" if parts.query else "")


def _download(
    session: requests.Session, url: str, dest: Path, policy: RetryPolicy, max_mb: float
) -> str | None:
    """Download ``url`` to ``dest``; return None on success, else the reason it failed."""
    try:
        response = get_with_retries(session, url, what=f"arXiv PDF {url}", policy=policy, stream=True)
    except CollectError as exc:
        return str(exc)
    with response:
        if response.status_code != 200:
            return f"PDF download failed: HTTP {response.status_code}"
        limit = int(max_mb * 1024 * 1024)
        size = 0
        with open(dest, "wb") as handle:
            for chunk in response.iter_content(1 << 16):
                size += len(chunk)
                if size > limit:
                    return f"PDF larger than {max_mb:g} MB"
                handle.write(chunk)
    return None


def _search_results(
    client,
    query: str | None,
    ids: list[str],
    limit: int | None,
    options: dict[str, Any],
    what: str,
    rejected: list[Rejected],
    source: str,
) -> list[Any]:
    import arxiv

    max_results = limit or int(options.get("max_results", 100))
    if ids:
        try:
            results = list(client.results(arxiv.Search(id_list=ids, max_results=len(ids))))
        except arxiv.HTTPError as exc:
            if len(ids) == 1:
                rejected.append(
                    Rejected(
                        source=source, item=ids[0], reason=f"arXiv API answered HTTP {exc.status} for this id"
                    )
                )
                return []
            # One malformed id fails the whole request (HTTP 400): ask for each id alone.
            results = []
            for one in ids:
                results.extend(_search_results(client, None, [one], None, options, what, rejected, source))
            return results
        found = {r.get_short_id() for r in results} | {r.get_short_id().rsplit("v", 1)[0] for r in results}
        for missing in [i for i in ids if i not in found]:
            rejected.append(
                Rejected(source=source, item=missing, reason="arXiv returned no entry for this id")
            )
        return results[:max_results]
    sort_by = arxiv.SortCriterion(options.get("sort_by", "relevance"))
    sort_order = arxiv.SortOrder(options.get("sort_order", "descending"))
    try:
        return list(
            client.results(
                arxiv.Search(
                    query=query or "", max_results=max_results, sort_by=sort_by, sort_order=sort_order
                )
            )
        )
    except arxiv.HTTPError as exc:
        raise CollectError(f"{what}: arXiv API answered HTTP {exc.status}") from exc
    except arxiv.UnexpectedEmptyPageError as exc:
        raise CollectError(f"{what}: arXiv API returned an unexpected empty page") from exc
    except requests.RequestException as exc:
        raise CollectError(f"{what}: {type(exc).__name__}: {exc}") from exc


def collect_arxiv_query(
    query: str | None,
    ids: list[str],
    known: dict[str, str],
    options: dict[str, Any],
    limit: int | None = None,
    since: datetime | None = None,
) -> ArxivResult:
    """Papers from an arXiv search query and/or an id list; PDFs downloaded and converted.

    Options: ``base_url`` (API), ``pdf_base_url`` (replaces scheme and host of PDF links),
    ``download_pdfs`` (default true; false gives metadata-only :class:`Paper` records), ``page_size``,
    ``delay_seconds``, ``num_retries``, ``sort_by``, ``sort_order``, ``max_results`` (default 100),
    ``timeout_s``, ``memory_mb``, ``max_pdf_mb``, ``workers`` and the retry options.

    A versioned arXiv id names fixed content, so a paper the store already holds is not downloaded
    again. ``since`` keeps only results updated after it.
    """
    if not query and not ids:
        raise SourceConfigError("arxiv_query: needs a query or ids")
    what = f"arxiv_query {query!r}" if query else f"arxiv ids {ids[:3]}{'...' if len(ids) > 3 else ''}"
    source = f"arxiv:query:{query}" if query else "arxiv:ids"
    out = ArxivResult()
    results = _search_results(make_client(options), query, ids, limit, options, what, out.rejected, source)
    download = bool(options.get("download_pdfs", True))
    session = requests.Session()
    policy = RetryPolicy.from_options(options)
    with tempfile.TemporaryDirectory(prefix="distillery-arxiv-") as tmp:
        jobs: list[tuple[Paper, Path, str]] = []
        for result in results:
            updated = utc(result.updated) if result.updated else None
            out.watermark = newest(out.watermark, updated)
            if since is not None and updated is not None and updated <= since:
                continue
            short_id = result.get_short_id()
            paper = Paper(
                id=f"arxiv:{short_id}",
                source=source,
                updated=updated,
                title=re.sub(r"\s+", " ", result.title).strip(),
                abstract=result.summary.strip(),
                authors=[a.name for a in result.authors],
                categories=list(result.categories),
                pdf_url=result.pdf_url,
            )
            if not download:
                out.records.append(paper)
                continue
            if paper.id in known and f"{paper.id}#0" in known:
                # A versioned arXiv id names fixed content, and its sections are already stored.
                out.skipped_unchanged += 1
                continue
            if not result.pdf_url:
                out.reject(
                    paper, [Rejected(source=source, item=paper.id, reason="no PDF link in the arXiv entry")]
                )
                continue
            dest = Path(tmp) / f"{len(jobs)}.pdf"
            error = _download(
                session, _pdf_url(result.pdf_url, options), dest, policy, float(options.get("max_pdf_mb", 50))
            )
            if error:
                out.reject(paper, [Rejected(source=source, item=paper.id, reason=error)])
                continue
            jobs.append((paper.model_copy(update={"pdf_sha256": sha256_file(dest)}), dest, paper.title))
        _convert_many(
            jobs,
            int(options.get("workers", 2)),
            float(options.get("timeout_s", 120)),
            int(options.get("memory_mb", 2048)),
            out,
        )
    if not results:
        logger.info("%s: no results", what)
    return out
