"""Stack Exchange: questions joined with their accepted answer, from a data dump or the API 2.3.

Both inputs give the same :class:`QAPair` (id ``stackexchange:<site domain>:<question id>``), so a
bulk load from a dump and weekly API runs on the same site deduplicate against each other.

Dump (``Posts.xml``): streamed with ``iterparse``; a question waits in memory only until its accepted
answer's row arrives (answers follow their question in a dump, which is ordered by id). A question
whose accepted answer is not in the file becomes a :class:`Rejected` record.

API: ``GET /questions?site=...&filter=withbody&sort=activity&order=asc&min=<watermark>``, then
``GET /answers/{ids}`` for the accepted answers of each page. Ascending activity order means a run cut
short (limit, quota) still advances the watermark safely: everything older was seen. The ``backoff``
field is obeyed per method, ``quota_remaining`` stops the run before it reaches 0, and 429/5xx and
``throttle_violation`` are retried (see :mod:`tasks.collect.common`).
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import requests

from tasks.collect.common import (
    BadSourceFile,
    CollectError,
    RetryPolicy,
    SourceConfigError,
    from_epoch,
    get_with_retries,
    html_to_markdown,
    logger,
    newest,
    utc,
)
from tasks.collect.records import QAPair, Rejected

DEFAULT_SITE = "stats.stackexchange.com"
DEFAULT_API_BASE = "https://api.stackexchange.com/2.3"
# API error ids (https://api.stackexchange.com/docs/error-handling). throttle_violation comes with
# HTTP 400 yet passes once waited out; the request errors (bad_parameter, e.g. an unknown site or
# key, access_token_required, invalid_access_token, access_denied, no_method, key_required,
# access_token_compromised) fail the same way on every try.
THROTTLE_VIOLATION = 502
REQUEST_ERRORS = frozenset({400, 401, 402, 403, 404, 405, 406})
_THROTTLE_SECONDS = re.compile(r"available in (\d+(?:\.\d+)?) seconds?")
_TRILOGY = {
    "stackoverflow": "stackoverflow.com",
    "superuser": "superuser.com",
    "serverfault": "serverfault.com",
    "askubuntu": "askubuntu.com",
    "mathoverflow": "mathoverflow.net",
    "stackapps": "stackapps.com",
}


def site_domain(site: str) -> str:
    """The site's domain from a domain or an API short name: ``stats`` -> ``stats.stackexchange.com``."""
    site = site.strip().lower().removeprefix("https://").removeprefix("http://").strip("/")
    if "." in site:
        return site
    return _TRILOGY.get(site, f"{site}.stackexchange.com")


def parse_tags(raw: str | None) -> list[str]:
    """Tags from a dump attribute: legacy ``<a><b>`` or newer ``|a|b|`` form."""
    if not raw:
        return []
    if raw.startswith("<"):
        return re.findall(r"<([^<>]+)>", raw)
    return [t for t in raw.split("|") if t]


def _dump_time(value: str | None) -> datetime | None:
    # Dump dates are UTC without an offset, e.g. 2010-07-19T19:12:12.510.
    return utc(datetime.fromisoformat(value)) if value else None


@dataclass
class _Post:
    id: str
    title: str
    body: str
    tags: list[str]
    score: int | None
    changed: datetime | None
    accepted_id: str | None = None


def _post_from_row(attrs: dict[str, str]) -> _Post:
    changed = newest(
        _dump_time(attrs.get("LastActivityDate")),
        _dump_time(attrs.get("LastEditDate")),
        _dump_time(attrs.get("CreationDate")),
    )
    score = attrs.get("Score")
    return _Post(
        id=attrs["Id"],
        title=attrs.get("Title", ""),
        body=attrs.get("Body", ""),
        tags=parse_tags(attrs.get("Tags")),
        score=int(score) if score not in (None, "") else None,
        changed=changed,
        accepted_id=attrs.get("AcceptedAnswerId") or None,
    )


def _join(site: str, source: str, question: _Post, answer: _Post, url: str | None) -> QAPair | Rejected:
    question_md = html_to_markdown(question.body)
    answer_md = html_to_markdown(answer.body)
    if not question_md.strip() or not answer_md.strip():
        return Rejected(
            source=source,
            item=f"stackexchange:{site}:{question.id}",
            reason="empty question or accepted answer body after HTML to Markdown",
        )
    return QAPair(
        id=f"stackexchange:{site}:{question.id}",
        source=source,
        updated=newest(question.changed, answer.changed),
        title=question.title,
        question=question_md,
        answer=answer_md,
        tags=question.tags,
        score=question.score,
        url=url or f"https://{site}/questions/{question.id}",  # the API's link form
    )


def parse_posts_xml(
    path: Path, site: str, limit: int | None = None, since: datetime | None = None
) -> tuple[list[QAPair], list[Rejected]]:
    """Stream a data-dump ``Posts.xml`` and join each question with its accepted answer.

    Args:
        path: The ``Posts.xml`` file (UTF-8, BOM allowed; legacy and newer dump schemas).
        site: Site name or domain, e.g. ``stats.stackexchange.com``; it names ids and URLs.
        limit: Stop after this many pairs.
        since: Keep only pairs whose last change (question or answer activity/edit) is after this.

    Returns:
        The pairs (Markdown bodies, tags kept) and the questions that could not be used, with reasons:
        an accepted answer missing from the file, an empty body, an unreadable row.

    Raises:
        CollectError: the file is missing or is not well-formed XML.
    """
    from lxml import etree

    site = site_domain(site)
    source = f"stackexchange:{site}"
    since = utc(since) if since else None
    pairs: list[QAPair] = []
    rejected: list[Rejected] = []
    waiting: dict[str, _Post] = {}  # accepted answer id -> its question
    seen_questions: set[str] = set()
    early_answers: dict[str, _Post] = {}  # answers whose question was not seen yet (unordered dumps)
    cut_by_limit = False

    def emit(question: _Post, answer: _Post) -> None:
        result = _join(site, source, question, answer, None)
        if isinstance(result, Rejected):
            rejected.append(result)
        elif since is None or (result.updated is not None and result.updated > since):
            pairs.append(result)

    if not Path(path).is_file():
        raise SourceConfigError(f"stackexchange_dump: {path} is not a file")
    # resolve_entities=False and no_network: a hostile dump cannot pull in files or URLs (XXE).
    context = etree.iterparse(
        str(path), events=("end",), tag="row", huge_tree=True, resolve_entities=False, no_network=True
    )
    try:
        for _, element in context:
            attrs = dict(element.attrib)
            element.clear(keep_tail=False)
            while element.getprevious() is not None:
                del element.getparent()[0]
            try:
                post = _post_from_row(attrs)
            except (KeyError, ValueError) as exc:
                rejected.append(
                    Rejected(
                        source=source,
                        item=f"row {attrs.get('Id', '?')}",
                        reason=f"unreadable row: {type(exc).__name__}: {exc}",
                    )
                )
                continue
            kind = attrs.get("PostTypeId")
            if kind == "1":
                seen_questions.add(post.id)
                if post.accepted_id:
                    if post.accepted_id in early_answers:
                        emit(post, early_answers.pop(post.accepted_id))
                    else:
                        waiting[post.accepted_id] = post
            elif kind == "2":
                if post.id in waiting:
                    emit(waiting.pop(post.id), post)
                elif attrs.get("ParentId") not in seen_questions:
                    early_answers[post.id] = post
            if limit is not None and len(pairs) >= limit:
                cut_by_limit = True
                break
    except etree.XMLSyntaxError as exc:
        raise BadSourceFile(f"stackexchange_dump: {Path(path).name} is not well-formed XML: {exc}") from exc
    if not cut_by_limit:
        for answer_id, question in waiting.items():
            rejected.append(
                Rejected(
                    source=source,
                    item=f"stackexchange:{site}:{question.id}",
                    reason=f"accepted answer {answer_id} is not in the dump",
                )
            )
    return pairs[:limit] if limit is not None else pairs, rejected


@dataclass
class StackExchangeClient:
    """A small client for the Stack Exchange API 2.3 (read-only, anonymous or with an app key).

    Attributes:
        base_url: API root, e.g. ``https://api.stackexchange.com/2.3`` (tests: a local replay server).
        key: Optional app key (raises the daily quota); never logged.
        policy: Retries for 429/5xx/connection errors.
        min_quota: Stop before ``quota_remaining`` falls below this (keeps some for other jobs).
    """

    base_url: str = DEFAULT_API_BASE
    key: str | None = None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    min_quota: int = 1
    sleep: Callable[[float], None] = time.sleep
    session: requests.Session = field(default_factory=requests.Session)
    quota_remaining: int | None = None
    _not_before: dict[str, float] = field(default_factory=dict)

    def get(self, method: str, path: str, params: dict[str, Any]) -> dict[str, Any]:
        """One API call: waits out a previous ``backoff`` for ``method``; returns the parsed wrapper.

        A ``throttle_violation`` is retried like a 429: after the wait its message names ("more
        requests available in N seconds"), or the policy's backoff when it names none.

        Raises:
            SourceConfigError: the API refuses the request itself (an unknown site, a bad key or token).
            CollectError: any other API error wrapper, an unexpected status, a body that is not JSON,
                or a throttle that outlasts the policy's tries or ``max_retry_after_s``.
        """
        wait = self._not_before.get(method, 0.0) - time.monotonic()
        if wait > 0:
            logger.info("stackexchange: backoff %.1fs before /%s", wait, method)
            self.sleep(wait)
        if self.quota_remaining is not None and self.quota_remaining < self.min_quota:
            raise QuotaExhausted(f"stackexchange_api: quota_remaining={self.quota_remaining}, stopping")
        query = dict(params)
        if self.key:
            query["key"] = self.key
        what = f"stackexchange_api /{method}"
        for attempt in range(1, self.policy.attempts + 1):
            response = get_with_retries(
                self.session,
                self.base_url.rstrip("/") + path,
                what=what,
                params=query,
                policy=self.policy,
                sleep=self.sleep,
            )
            data = _json_object(response, what)
            if data.get("error_id") != THROTTLE_VIOLATION:
                return self._accept(method, what, response.status_code, data)
            wait = throttle_wait(data.get("error_message"), self.policy, attempt, what)
            if attempt < self.policy.attempts:
                logger.warning(
                    "%s: throttle_violation (try %d/%d), waiting %.2fs",
                    what,
                    attempt,
                    self.policy.attempts,
                    wait,
                )
                self.sleep(wait)
        raise CollectError(f"{what}: gave up after {self.policy.attempts} tries: throttle_violation")

    def _accept(self, method: str, what: str, status: int, data: dict[str, Any]) -> dict[str, Any]:
        """Check a wrapper that is not a throttle, note its ``backoff`` and quota, and return it."""
        if "error_id" in data or status >= 400:
            error = SourceConfigError if data.get("error_id") in REQUEST_ERRORS else CollectError
            raise error(
                f"{what}: HTTP {status} error {data.get('error_id')} "
                f"{data.get('error_name')}: {data.get('error_message')}"
            )
        if not isinstance(data.get("items"), list):
            raise CollectError(f"{what}: response has no 'items' list")
        if data.get("backoff"):
            self._not_before[method] = time.monotonic() + float(data["backoff"])
        if data.get("quota_remaining") is not None:
            self.quota_remaining = int(data["quota_remaining"])
        return data


def _json_object(response: requests.Response, what: str) -> dict[str, Any]:
    try:
        data = response.json()
    except ValueError as exc:
        raise CollectError(
            f"{what}: HTTP {response.status_code} with a body that is not JSON ({response.text[:80]!r})"
        ) from exc
    if not isinstance(data, dict):
        raise CollectError(f"{what}: expected a JSON object, got {type(data).__name__}")
    return data


def throttle_wait(message: str | None, policy: RetryPolicy, attempt: int, what: str) -> float:
    """Seconds to wait after throttle number ``attempt``: what the message asks, else the backoff.

    Raises:
        CollectError: the API asks to wait longer than ``policy.max_retry_after_s``.
    """
    match = _THROTTLE_SECONDS.search(message or "")
    if match is None:
        return policy.backoff(attempt)
    asked = float(match.group(1))
    if asked > policy.max_retry_after_s:
        raise CollectError(
            f"{what}: throttle_violation asks to wait {asked:.0f}s, longer than the allowed "
            f"{policy.max_retry_after_s:.0f}s; try again later"
        )
    return asked


class QuotaExhausted(CollectError):
    """The API quota is (almost) used up: the run stops and keeps what it has."""


@dataclass
class ApiResult:
    """What one API collection produced, and how far it got."""

    pairs: list[QAPair]
    rejected: list[Rejected]
    watermark: datetime | None
    stopped: str | None = None


def _api_post(item: dict[str, Any], id_key: str) -> _Post:
    return _Post(
        id=str(item[id_key]),
        title=html.unescape(item.get("title", "")),  # API titles are HTML-escaped
        body=item.get("body", ""),
        tags=list(item.get("tags", [])),
        score=item.get("score"),
        changed=newest(
            from_epoch(item.get("last_activity_date")),
            from_epoch(item.get("last_edit_date")),
            from_epoch(item.get("creation_date")),
        ),
        accepted_id=str(item["accepted_answer_id"]) if item.get("accepted_answer_id") else None,
    )


def iter_question_pages(
    client: StackExchangeClient,
    site: str,
    since: datetime | None,
    page_size: int,
    tagged: str | None = None,
    max_pages: int | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Pages of ``/questions`` items in ascending activity order, from ``since`` (inclusive) on."""
    page = 1
    while True:
        params: dict[str, Any] = {
            "site": site,
            "filter": "withbody",
            "sort": "activity",
            "order": "asc",
            "page": page,
            "pagesize": page_size,
        }
        if since is not None:
            params["min"] = int(since.timestamp())
        if tagged:
            params["tagged"] = tagged
        data = client.get("questions", "/questions", params)
        yield data["items"]
        if not data.get("has_more") or (max_pages is not None and page >= max_pages):
            return
        page += 1


def fetch_answers(client: StackExchangeClient, site: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    """Answers by id through ``/answers/{ids}`` (100 ids per call, pages followed)."""
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), 100):
        chunk = ids[start : start + 100]
        page = 1
        while True:
            data = client.get(
                "answers",
                "/answers/" + ";".join(chunk),
                {"site": site, "filter": "withbody", "page": page, "pagesize": 100},
            )
            for item in data["items"]:
                found[str(item["answer_id"])] = item
            if not data.get("has_more"):
                break
            page += 1
    return found


def collect_api(
    client: StackExchangeClient,
    site: str,
    since: datetime | None = None,
    limit: int | None = None,
    page_size: int = 100,
    tagged: str | None = None,
    max_pages: int | None = None,
) -> ApiResult:
    """Questions with accepted answers from the API, oldest activity first, from ``since`` on.

    Args:
        client: The API client (base URL, key, retry policy).
        site: Site domain or short name.
        since: Watermark: only questions active at or after it (inclusive; unchanged ones dedupe later).
        limit: Stop after this many pairs.
        page_size: ``pagesize`` (API maximum 100).
        tagged: Optional ``tagged`` filter (semicolon-separated tags).
        max_pages: Stop after this many question pages.

    Returns:
        Pairs, rejected questions, the new watermark (activity date of the last question fully
        processed) and why the run stopped early, if it did (quota). A source-level failure raises.
    """
    domain = site_domain(site)
    source = f"stackexchange:{domain}"
    pairs: list[QAPair] = []
    rejected: list[Rejected] = []
    watermark = since
    try:
        for items in iter_question_pages(client, site, since, page_size, tagged, max_pages):
            questions = [_api_post(item, "question_id") for item in items]
            links = {str(item["question_id"]): item.get("link") for item in items}
            activity = {
                str(item["question_id"]): from_epoch(item.get("last_activity_date")) for item in items
            }
            wanted = [q.accepted_id for q in questions if q.accepted_id]
            answers = fetch_answers(client, site, wanted) if wanted else {}
            for question in questions:
                if question.accepted_id:
                    answer = answers.get(question.accepted_id)
                    if answer is None:
                        rejected.append(
                            Rejected(
                                source=source,
                                item=f"stackexchange:{domain}:{question.id}",
                                reason=f"accepted answer {question.accepted_id} was not returned by /answers",
                            )
                        )
                    else:
                        result = _join(
                            domain, source, question, _api_post(answer, "answer_id"), links.get(question.id)
                        )
                        (rejected if isinstance(result, Rejected) else pairs).append(result)
                # Only questions processed in full move the watermark (ascending order makes it safe).
                watermark = newest(watermark, activity[question.id])
                if limit is not None and len(pairs) >= limit:
                    return ApiResult(pairs, rejected, watermark, stopped="limit")
    except QuotaExhausted as exc:
        logger.warning("%s; kept %d pairs, the rest comes next run", exc, len(pairs))
        return ApiResult(pairs, rejected, watermark, stopped="quota")
    except KeyError as exc:
        raise CollectError(f"stackexchange_api {site}: item without {exc} in the response") from exc
    return ApiResult(pairs, rejected, watermark)
