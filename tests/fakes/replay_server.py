"""A local HTTP server that replays real recorded responses for the collectors' tests.

It binds 127.0.0.1 on an ephemeral port and serves, under one base URL:

* ``/arxiv/api/query``: the recorded arXiv API responses (``tests/fixtures/collect/arxiv/atom/*.json``,
  keyed by their exact query string, status code included: the empty feed and the HTTP 400 one), plus
  the 2016 legacy feed for ``id_list=1111.2011v2``; ``/arxiv/pdf/<id>``: the real PDFs.
* ``/se/2.3/questions`` and ``/se/2.3/answers/{ids}``: Stack Exchange API 2.3 answers built from a real
  data dump (``Posts.xml``), since no captured question-list response exists. The envelope keys and
  ``quota_max`` come from the real recorded ``/sites`` response; items follow the API documentation for
  ``filter=withbody`` (epoch dates, HTML-escaped titles, HTML bodies). Supports ``sort=activity``,
  ``order``, ``min``, ``page``, ``pagesize``, ``has_more``, ``quota_remaining`` and a ``backoff`` field.
* ``/openreview2/notes`` and ``/openreview1/notes``: OpenReview ``GET /notes`` envelopes
  ``{"notes": [...], "count": N}`` rebuilt from the real ICLR 2026 (v2) and NIPS 2018 workshop (v1)
  notes, as the data's provenance describes; ``invitation``, ``id``, ``limit`` and ``offset`` apply.
  ``/openreview2/invitations`` and ``/openreview1/invitations``: ``GET /invitations?id=`` answers an
  invitation those notes name, else the API's 404 ``NotFoundError`` body (the error shape that
  openreview-py's own ``tools`` module tests for).

Faults are scripted per path prefix with :meth:`ReplayServer.script`: the next matching requests get
the scripted responses (429 with ``Retry-After``, a burst of 503s, a body that is not JSON...) before
the replay resumes. Every request is logged in :attr:`ReplayServer.requests`.
"""

from __future__ import annotations

import html
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "collect"
SAMPLE = REPO / "data" / "sample"

V2_VENUE = "ICLR.cc/2026/Conference"
V1_VENUE = "NIPS.cc/2018/Workshop/CDNNRIA"


@dataclass
class Canned:
    """One scripted response."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    content_type: str = "application/json"


@dataclass
class Seen:
    """One request the server answered."""

    at: float
    path: str
    query: dict[str, str]
    status: int


def _query_key(query: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(parse_qsl(query, keep_blank_values=True)))


def _epoch(value: str | None) -> int | None:
    if not value:
        return None
    return int(datetime.fromisoformat(value).replace(tzinfo=UTC).timestamp())


def load_arxiv_recordings() -> dict[tuple[tuple[str, str], ...], tuple[int, bytes]]:
    """Recorded arXiv responses keyed by their query string."""
    recordings = {}
    for path in sorted((FIXTURES / "arxiv" / "atom").glob("*.json")):
        recorded = json.loads(path.read_text(encoding="utf-8"))
        key = _query_key(urlsplit(recorded["url"]).query)
        recordings[key] = (int(recorded["status_code"]), recorded["body"].encode("utf-8"))
    legacy = (FIXTURES / "arxiv" / "atom_2016" / "id_list_1111.2011v2.xml").read_bytes()
    key = _query_key(
        "search_query=&id_list=1111.2011v2&sortBy=relevance&sortOrder=descending&start=0&max_results=100"
    )
    recordings[key] = (200, legacy)
    return recordings


def load_dump_posts(path: Path) -> list[dict[str, str]]:
    """Rows of a real ``Posts.xml`` as attribute dicts."""
    from lxml import etree

    return [dict(row.attrib) for row in etree.parse(str(path)).getroot().iter("row")]


def se_question_item(row: dict[str, str], site: str) -> dict[str, Any]:
    """An API 2.3 question item (``filter=withbody``) built from a dump row."""
    tags = re.findall(r"<([^<>]+)>", row.get("Tags", "")) or [t for t in row.get("Tags", "").split("|") if t]
    item: dict[str, Any] = {
        "tags": tags,
        "is_answered": bool(row.get("AcceptedAnswerId")) or int(row.get("AnswerCount", "0")) > 0,
        "view_count": int(row.get("ViewCount", "0")),
        "answer_count": int(row.get("AnswerCount", "0")),
        "score": int(row.get("Score", "0")),
        "last_activity_date": _epoch(row.get("LastActivityDate")),
        "creation_date": _epoch(row.get("CreationDate")),
        "question_id": int(row["Id"]),
        "link": f"https://{site}/questions/{row['Id']}",
        "title": html.escape(row.get("Title", ""), quote=True),  # the API returns titles HTML-encoded
        "body": row.get("Body", ""),
    }
    if row.get("OwnerUserId"):
        item["owner"] = {"user_id": int(row["OwnerUserId"]), "user_type": "registered"}
    if row.get("AcceptedAnswerId"):
        item["accepted_answer_id"] = int(row["AcceptedAnswerId"])
    if row.get("LastEditDate"):
        item["last_edit_date"] = _epoch(row["LastEditDate"])
    if row.get("ContentLicense"):
        item["content_license"] = row["ContentLicense"]
    return item


def se_answer_item(row: dict[str, str], accepted: set[str]) -> dict[str, Any]:
    """An API 2.3 answer item (``filter=withbody``) built from a dump row."""
    item: dict[str, Any] = {
        "is_accepted": row["Id"] in accepted,
        "score": int(row.get("Score", "0")),
        "last_activity_date": _epoch(row.get("LastActivityDate")),
        "creation_date": _epoch(row.get("CreationDate")),
        "answer_id": int(row["Id"]),
        "question_id": int(row["ParentId"]),
        "body": row.get("Body", ""),
    }
    if row.get("OwnerUserId"):
        item["owner"] = {"user_id": int(row["OwnerUserId"]), "user_type": "registered"}
    if row.get("LastEditDate"):
        item["last_edit_date"] = _epoch(row["LastEditDate"])
    return item


def build_openreview_v2_notes(
    folder: Path = SAMPLE / "openreview" / "api_v2_iclr2026",
) -> list[dict[str, Any]]:
    """Submission notes with ``details.directReplies`` rebuilt from the tracker pages.

    Per the data's provenance: each flattened ``content.X`` becomes ``{"value": X}``; ``invitations``,
    ``domain`` and ``forum = id`` are added; the verbatim replies go under ``details.directReplies``.
    The tracker's own ``withdrawn`` flag is not an API field and is dropped.
    """
    notes = []
    for path in sorted(folder.glob("*.json")):
        page = json.loads(path.read_text(encoding="utf-8"))
        notes.append(
            {
                "id": page["id"],
                "forum": page["id"],
                "number": page.get("number"),
                "cdate": page.get("cdate"),
                "mdate": page.get("mdate"),
                "invitations": [f"{V2_VENUE}/-/Submission"],
                "domain": V2_VENUE,
                "content": {key: {"value": value} for key, value in page["content"].items()},
                "details": {"directReplies": page["replies"]},
            }
        )
    return sorted(notes, key=lambda n: n.get("number") or 0)


def build_openreview_v1_notes(
    path: Path = FIXTURES / "openreview" / "api_v1_nips2018_workshop" / "example_output.json",
) -> list[dict[str, Any]]:
    """v1 submission notes with ``details.directReplies`` from the crawler file (crawler keys removed)."""
    crawl = json.loads(path.read_text(encoding="utf-8"))
    notes = []
    for venue in crawl:
        for submission in venue["submissions"]:
            note = {k: v for k, v in submission.items() if k not in ("revisions", "notes")}
            replies = [{k: v for k, v in reply.items() if k != "revisions"} for reply in submission["notes"]]
            note["details"] = {**(note.get("details") or {}), "directReplies": replies}
            notes.append(note)
    return notes


class ReplayServer:
    """The replay server; use :func:`running_replay_server` to start and stop it."""

    def __init__(
        self,
        se_posts: Path = SAMPLE / "stackexchange" / "ai.stackexchange.com" / "Posts.xml",
        se_site: str = "ai.stackexchange.com",
    ):
        self.requests: list[Seen] = []
        self._scripts: list[tuple[str, list[Canned]]] = []
        self._lock = threading.Lock()
        self.arxiv = load_arxiv_recordings()
        self.pdf_dirs = [FIXTURES / "arxiv" / "pdf", SAMPLE / "arxiv" / "pdf"]
        sites = json.loads((FIXTURES / "stackexchange" / "api" / "sites_response_2016.json").read_text())
        self.quota_max = int(sites["quota_max"])
        self.quota_remaining = self.quota_max
        self.se_backoff: dict[int, int] = {}  # page number -> backoff seconds to send with it
        self.set_posts(se_posts, se_site)
        self.v2_notes = build_openreview_v2_notes()
        self.v1_notes = build_openreview_v1_notes()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def set_posts(self, path: Path, site: str) -> None:
        """Serve the Stack Exchange API from this dump."""
        rows = load_dump_posts(path)
        self.se_site = site
        accepted = {r["AcceptedAnswerId"] for r in rows if r.get("AcceptedAnswerId")}
        self.se_questions = [se_question_item(r, site) for r in rows if r.get("PostTypeId") == "1"]
        self.se_answers = {r["Id"]: se_answer_item(r, accepted) for r in rows if r.get("PostTypeId") == "2"}

    def script(self, path_prefix: str, responses: list[Canned]) -> None:
        """The next requests whose path starts with ``path_prefix`` get ``responses``, in order."""
        with self._lock:
            self._scripts.append((path_prefix, list(responses)))

    def count(self, path_prefix: str) -> int:
        """How many requests hit paths starting with ``path_prefix``."""
        return sum(1 for seen in self.requests if seen.path.startswith(path_prefix))

    def _scripted(self, path: str) -> Canned | None:
        with self._lock:
            for prefix, responses in self._scripts:
                if path.startswith(prefix) and responses:
                    return responses.pop(0)
        return None

    # --- routes -------------------------------------------------------------------------------

    def answer(self, path: str, query: str) -> Canned:
        canned = self._scripted(path)
        if canned is not None:
            return canned
        params = dict(parse_qsl(query, keep_blank_values=True))
        if path == "/arxiv/api/query":
            found = self.arxiv.get(_query_key(query))
            if found is None:
                return Canned(404, b"no recording for this query", content_type="text/plain")
            return Canned(found[0], found[1], content_type="application/atom+xml; charset=utf-8")
        if path.startswith("/arxiv/pdf/"):
            name = path.rsplit("/", 1)[-1].removesuffix(".pdf")
            for folder in self.pdf_dirs:
                if (folder / f"{name}.pdf").is_file():
                    return Canned(200, (folder / f"{name}.pdf").read_bytes(), content_type="application/pdf")
            return Canned(404, b"not found", content_type="text/plain")
        if path == "/se/2.3/questions":
            return self._se_questions(params)
        if path.startswith("/se/2.3/answers/"):
            return self._se_answers(unquote(path.rsplit("/", 1)[-1]), params)
        if path == "/openreview2/notes":
            return self._notes(self.v2_notes, params)
        if path == "/openreview1/notes":
            return self._notes(self.v1_notes, params)
        if path == "/openreview2/invitations":
            return self._invitation(self.v2_notes, params.get("id", ""))
        if path == "/openreview1/invitations":
            return self._invitation(self.v1_notes, params.get("id", ""))
        return Canned(404, b'{"error": "no such route"}')

    def _se_envelope(self, items: list[dict[str, Any]], has_more: bool, page: int) -> Canned:
        with self._lock:
            self.quota_remaining -= 1
            remaining = self.quota_remaining
        body: dict[str, Any] = {
            "items": items,
            "has_more": has_more,
            "quota_max": self.quota_max,
            "quota_remaining": remaining,
        }
        if page in self.se_backoff:
            body["backoff"] = self.se_backoff[page]
        return Canned(200, json.dumps(body).encode())

    def _se_questions(self, params: dict[str, str]) -> Canned:
        if params.get("filter") != "withbody" or not params.get("site"):
            return Canned(
                400,
                json.dumps(
                    {
                        "error_id": 400,
                        "error_name": "bad_parameter",
                        "error_message": "site and filter=withbody expected",
                    }
                ).encode(),
            )
        items = list(self.se_questions)
        if params.get("min"):
            items = [q for q in items if q["last_activity_date"] >= int(params["min"])]
        items.sort(
            key=lambda q: (q["last_activity_date"], q["question_id"]), reverse=params.get("order") == "desc"
        )
        page, size = int(params.get("page", 1)), int(params.get("pagesize", 30))
        chunk = items[(page - 1) * size : page * size]
        return self._se_envelope(chunk, page * size < len(items), page)

    def _se_answers(self, ids: str, params: dict[str, str]) -> Canned:
        wanted = [i for i in ids.split(";") if i]
        items = [self.se_answers[i] for i in wanted if i in self.se_answers]
        page, size = int(params.get("page", 1)), int(params.get("pagesize", 30))
        return self._se_envelope(items[(page - 1) * size : page * size], page * size < len(items), page)

    def _notes(self, notes: list[dict[str, Any]], params: dict[str, str]) -> Canned:
        selected = notes
        if params.get("id"):
            selected = [n for n in selected if n["id"] == params["id"]]
        if params.get("invitation"):
            selected = [
                n for n in selected if params["invitation"] in (n.get("invitations") or [n.get("invitation")])
            ]
        offset, limit = int(params.get("offset", 0)), int(params.get("limit", 1000))
        page = selected[offset : offset + limit]
        if params.get("details") != "directReplies":
            page = [{k: v for k, v in n.items() if k != "details"} for n in page]
        return Canned(200, json.dumps({"notes": page, "count": len(selected)}).encode())

    def _invitation(self, notes: list[dict[str, Any]], wanted: str) -> Canned:
        known = {i for n in notes for i in (n.get("invitations") or [n.get("invitation")]) if i}
        if wanted in known:
            return Canned(200, json.dumps({"invitations": [{"id": wanted}], "count": 1}).encode())
        error = {"name": "NotFoundError", "message": f"The Invitation {wanted} was not found", "status": 404}
        return Canned(404, json.dumps(error).encode())

    # --- plumbing -----------------------------------------------------------------------------

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                canned = server.answer(parts.path, parts.query)
                server.requests.append(
                    Seen(
                        time.monotonic(),
                        parts.path,
                        dict(parse_qsl(parts.query, keep_blank_values=True)),
                        canned.status,
                    )
                )
                self.send_response(canned.status)
                self.send_header("Content-Type", canned.content_type)
                self.send_header("Content-Length", str(len(canned.body)))
                for key, value in canned.headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(canned.body)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        return Handler

    def start(self) -> ReplayServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


@contextmanager
def running_replay_server(**kwargs: Any) -> Iterator[ReplayServer]:
    """Start a :class:`ReplayServer` for the ``with`` block."""
    server = ReplayServer(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
