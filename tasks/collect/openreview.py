"""OpenReview (API v2 and v1) and PeerRead-format reviews, normalized into one :class:`Review`.

API v2 notes carry ``content: {field: {"value": ...}}``, a list of ``invitations`` and the forum id;
API v1 notes carry flat ``content`` and one ``invitation``. Both are read through openreview-py
(``openreview.api.OpenReviewClient`` / ``openreview.Client``) with submissions listed page by page
and their ``directReplies`` in ``details``; official reviews become :class:`Review` records with the
submission's title, abstract and decision (when a Decision or Withdrawal note says it). Local copies
(``openreview_files``) go through the same normalization. Ratings such as ``"8: Accept"`` become 8.0.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from tasks.collect.common import CollectError, SourceConfigError, from_epoch, logger, newest, utc
from tasks.collect.records import Rejected, Review

DEFAULT_API_V2 = "https://api2.openreview.net"
DEFAULT_API_V1 = "https://api.openreview.net"

_FIRST_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?)")
# Where each Review field comes from, first match wins, across the venues' review forms.
_SUMMARY_KEYS = ("summary", "summary_of_the_paper", "paper_summary")
_LONG_REVIEW_KEYS = ("review", "main_review", "summary_of_the_review")
_STRENGTH_KEYS = ("strengths", "strengths_and_weaknesses", "strength")
_WEAKNESS_KEYS = ("weaknesses", "weakness")
_QUESTION_KEYS = ("questions", "clarification_questions", "requested_changes", "questions_for_authors")
_RATING_KEYS = ("rating", "recommendation", "overall_assessment", "final_rating", "overall_recommendation")
_CONFIDENCE_KEYS = ("confidence",)


def unwrap(value: Any) -> Any:
    """The plain value of an API v2 content field (``{"value": x}`` -> ``x``); v1 values pass through."""
    if isinstance(value, dict) and "value" in value:
        return value["value"]
    return value


def parse_rating(value: Any) -> float | None:
    """A numeric score from an OpenReview rating: ``8``, ``"8"``, ``"8: Accept"``, ``{"value": 8}``.

    Returns None for missing values and for labels without a leading number (``"Accept"``).
    """
    value = unwrap(value)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    match = _FIRST_NUMBER.match(str(value))
    return float(match.group(1)) if match else None


def _text(content: dict[str, Any], keys: Iterable[str]) -> str:
    for key in keys:
        value = unwrap(content.get(key))
        if isinstance(value, list):
            value = "\n".join(str(v) for v in value)
        if value not in (None, ""):
            return str(value).strip()
    return ""


def _first(content: dict[str, Any], keys: Iterable[str]) -> Any:
    for key in keys:
        if content.get(key) not in (None, ""):
            return content.get(key)
    return None


def _invitations(note: dict[str, Any]) -> list[str]:
    if note.get("invitations"):
        return list(note["invitations"])
    return [note["invitation"]] if note.get("invitation") else []


def _has_invitation(note: dict[str, Any], *suffixes: str) -> bool:
    return any(inv.rsplit("/", 1)[-1] in suffixes for inv in _invitations(note))


def _stamp(note: dict[str, Any]) -> int:
    """Last modification in epoch milliseconds (0 when the note carries no time)."""
    for key in ("mdate", "tmdate", "cdate", "tcdate"):
        if note.get(key) not in (None, ""):
            return int(note[key])
    return 0


def _note_time(note: dict[str, Any]) -> datetime | None:
    stamp = _stamp(note)
    return from_epoch(stamp, millis=True) if stamp else None


def decision_of(submission: dict[str, Any], replies: list[dict[str, Any]]) -> str | None:
    """The submission's decision when known: a Decision note, a withdrawal or a desk rejection."""
    for reply in replies:
        if _has_invitation(reply, "Decision", "Acceptance_Decision"):
            decision = unwrap(reply.get("content", {}).get("decision"))
            if decision:
                return str(decision)
    if submission.get("withdrawn") or any(
        _has_invitation(r, "Withdrawal", "Withdrawn_Submission") for r in replies
    ):
        return "Withdrawn"
    if any(_has_invitation(r, "Desk_Rejection", "Desk_Rejected_Submission") for r in replies):
        return "Desk Rejected"
    return None


def reviews_from_forum(
    submission: dict[str, Any], replies: list[dict[str, Any]], source: str
) -> tuple[list[Review], list[Rejected]]:
    """Official reviews of one submission as :class:`Review` records (API v1 or v2 note dicts).

    A review id seen more than once (merged crawls) keeps its latest version.
    """
    content = submission.get("content") or {}
    forum = str(submission.get("forum") or submission.get("id"))
    title = str(unwrap(content.get("title")) or "").strip()
    abstract = str(unwrap(content.get("abstract")) or "").strip()
    decision = decision_of(submission, replies)
    latest: dict[str, dict[str, Any]] = {}
    for reply in replies:
        if not _has_invitation(reply, "Official_Review") or not reply.get("id"):
            continue
        seen = latest.get(reply["id"])
        if seen is None or _stamp(reply) > _stamp(seen):
            latest[reply["id"]] = reply
    reviews: list[Review] = []
    rejected: list[Rejected] = []
    for note_id, note in latest.items():
        body = note.get("content") or {}
        item = f"openreview:{note_id}"
        if not title:
            rejected.append(Rejected(source=source, item=item, reason=f"submission {forum} has no title"))
            continue
        summary = _text(body, _SUMMARY_KEYS)
        long_review = _text(body, _LONG_REVIEW_KEYS)
        if long_review and long_review != summary:
            summary = f"{summary}\n\n{long_review}".strip()
        review = Review(
            id=item,
            source=source,
            updated=_note_time(note),
            forum_id=forum,
            paper_title=title,
            paper_abstract=abstract,
            summary=summary,
            strengths=_text(body, _STRENGTH_KEYS),
            weaknesses=_text(body, _WEAKNESS_KEYS),
            questions=_text(body, _QUESTION_KEYS),
            rating=parse_rating(_first(body, _RATING_KEYS)),
            confidence=parse_rating(body.get("confidence")),
            decision=decision,
        )
        if not (review.summary or review.strengths or review.weaknesses):
            rejected.append(Rejected(source=source, item=item, reason="official review without any text"))
            continue
        reviews.append(review)
    return reviews, rejected


def _forums_in_file(data: Any) -> Iterator[tuple[dict[str, Any], list[dict[str, Any]], str | None]]:
    """(submission, replies, venue) from the local file shapes we accept.

    Shapes: a tracker page ``{id, content (flat), replies: [v2 notes]}``; an API envelope
    ``{"notes": [...]}`` whose notes carry ``details.directReplies`` (v1 or v2); a crawler list
    ``[{venue, submissions: [{...note, notes: [replies]}]}]`` (v1).
    """
    if isinstance(data, dict) and "replies" in data:
        yield data, list(data.get("replies") or []), None
    elif isinstance(data, dict) and isinstance(data.get("notes"), list):
        for note in data["notes"]:
            yield note, list((note.get("details") or {}).get("directReplies") or []), None
    elif isinstance(data, list):
        for venue in data:
            for submission in venue.get("submissions", []):
                replies = (
                    submission.get("notes") or (submission.get("details") or {}).get("directReplies") or []
                )
                yield submission, list(replies), venue.get("venue")
    else:
        raise ValueError(
            "not an OpenReview file this collector knows (tracker page, notes envelope or crawler list)"
        )


def _venue_of(submission: dict[str, Any], replies: list[dict[str, Any]], fallback: str | None) -> str:
    # The note's own domain or invitation names the venue exactly; a crawler's label is a last resort.
    venue = submission.get("domain")
    if not venue:
        for note in [submission, *replies]:
            for invitation in _invitations(note):
                if "/-/" in invitation:
                    venue = invitation.split("/-/")[0].split("/Submission")[0].split("/Paper")[0]
                    break
            if venue:
                break
    return str(venue or fallback or "unknown")


def read_openreview_files(
    path: Path, limit: int | None = None, since: datetime | None = None
) -> tuple[list[Review], list[Rejected], datetime | None]:
    """Reviews from a folder (or file) of saved OpenReview notes.

    Returns:
        Reviews changed after ``since``, rejected items (an unreadable file is one, with its reason)
        and the newest review time seen.
    """
    if not path.exists():
        raise SourceConfigError(f"openreview_files: {path} does not exist")
    files = [path] if path.is_file() else sorted(path.rglob("*.json"))
    reviews: list[Review] = []
    rejected: list[Rejected] = []
    newest_seen: datetime | None = None
    for file in files:
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
            forums = list(_forums_in_file(data))
        except (ValueError, UnicodeDecodeError, AttributeError, TypeError) as exc:
            rejected.append(Rejected(source="openreview:files", item=file.name, reason=f"unreadable: {exc}"))
            continue
        for submission, replies, venue in forums:
            source = f"openreview:{_venue_of(submission, replies, venue)}"
            found, bad = reviews_from_forum(submission, replies, source)
            rejected.extend(bad)
            for review in found:
                newest_seen = newest(newest_seen, review.updated)
                if since is None or review.updated is None or review.updated > since:
                    reviews.append(review)
    reviews.sort(key=lambda r: r.id)
    if limit is not None and len(reviews) > limit:
        return reviews[:limit], rejected, None  # cut short: the watermark must not move past unseen items
    return reviews, rejected, newest_seen


def _note_dict(note: Any) -> dict[str, Any]:
    """An openreview-py Note (v1 or v2) as a plain dict with its details and timestamps."""
    data = note.to_json()
    data["details"] = getattr(note, "details", None) or {}
    for key in ("tmdate", "tcdate", "mdate", "cdate", "domain", "number"):
        if data.get(key) is None and getattr(note, key, None) is not None:
            data[key] = getattr(note, key)
    return data


def make_client(options: dict[str, Any]):
    """An openreview-py client for ``options["api_version"]`` (``v2`` default, or ``v1``).

    The client's own retry adapter (8 tries, up to 120 s backoff) is replaced by one built from the
    source's retry options, so tests and impatient runs can shorten it; 429 and 5xx are retried and
    ``Retry-After`` is obeyed either way.
    """
    import openreview
    from requests.adapters import HTTPAdapter
    from urllib3.util.retry import Retry

    version = str(options.get("api_version", "v2")).lower()
    if version == "v1":
        client = openreview.Client(baseurl=options.get("base_url", DEFAULT_API_V1))
    elif version == "v2":
        client = openreview.api.OpenReviewClient(baseurl=options.get("base_url", DEFAULT_API_V2))
    else:
        raise SourceConfigError(f"openreview: api_version must be v1 or v2, not {version!r}")
    retry = Retry(
        total=int(options.get("retry_attempts", 5)) - 1,
        connect=2,
        backoff_factor=float(options.get("retry_base_delay_s", 1.0)),
        backoff_max=60,
        status_forcelist=[429, 500, 502, 503, 504],
        raise_on_status=False,
        respect_retry_after_header=True,
    )
    adapter = HTTPAdapter(max_retries=retry)
    client.session.mount("https://", adapter)
    client.session.mount("http://", adapter)
    return client


def collect_openreview_api(
    venue: str, options: dict[str, Any], limit: int | None = None, since: datetime | None = None
) -> tuple[list[Review], list[Rejected], datetime | None]:
    """Official reviews of a venue's submissions through openreview-py, page by page.

    Args:
        venue: Venue id, e.g. ``ICLR.cc/2026/Conference``.
        options: ``api_version`` (v2|v1), ``base_url``, ``submission_invitation`` (default
            ``<venue>/-/Submission`` for v2, ``<venue>/-/Blind_Submission`` for v1), ``page_size``
            (default 1000), ``forum_ids`` (fetch these submissions instead of listing), retry options.
        limit: Stop after this many reviews.
        since: Keep reviews changed after it. The API has no "modified since" filter for notes
            (``mintcdate`` is creation time), so submissions are listed in full and filtered here.

    Returns:
        Reviews, rejected items and the newest review time seen (the new watermark).

    Raises:
        CollectError: an HTTP error that survived the retries, or a response that is not JSON.
    """
    version = str(options.get("api_version", "v2")).lower()
    invitation = options.get("submission_invitation") or (
        f"{venue}/-/Submission" if version == "v2" else f"{venue}/-/Blind_Submission"
    )
    page_size = int(options.get("page_size", 1000))
    client = make_client(options)
    source = f"openreview:{venue}"
    reviews: list[Review] = []
    rejected: list[Rejected] = []
    newest_seen: datetime | None = None

    def take(notes: list[Any]) -> bool:
        """Normalize one page of submissions; True when the limit is reached."""
        nonlocal newest_seen
        for note in notes:
            submission = _note_dict(note)
            replies = list(submission["details"].get("directReplies") or [])
            found, bad = reviews_from_forum(submission, replies, source)
            rejected.extend(bad)
            for review in found:
                newest_seen = newest(newest_seen, review.updated)
                if since is None or review.updated is None or review.updated > since:
                    reviews.append(review)
            if limit is not None and len(reviews) >= limit:
                logger.info("%s: limit of %d reviews reached", source, limit)
                return True
        return False

    for forum_id in options.get("forum_ids") or []:
        notes = _get_notes(
            client, f"openreview {version} forum {forum_id}", id=forum_id, details="directReplies"
        )
        if not notes:
            rejected.append(
                Rejected(source=source, item=f"openreview:{forum_id}", reason="no such submission")
            )
        elif take(notes):
            return reviews[:limit], rejected, None
    if options.get("forum_ids"):
        return reviews, rejected, newest_seen
    offset = 0
    while True:
        notes = _get_notes(
            client,
            f"openreview {version} {invitation} offset {offset}",
            invitation=invitation,
            details="directReplies",
            limit=page_size,
            offset=offset,
            sort="number:asc",
        )
        if offset == 0 and not notes:
            _require_invitation(client, invitation, venue, version)  # an empty venue, or a wrong id?
        if take(notes):
            return reviews[:limit], rejected, None  # cut short: the watermark must not move
        if len(notes) < page_size:
            return reviews, rejected, newest_seen
        offset += len(notes)


def _require_invitation(client: Any, invitation: str, venue: str, version: str) -> None:
    """Raise :class:`SourceConfigError` when the submission invitation does not exist.

    A listing of an unknown invitation is empty, exactly like a venue with no submissions yet; only the
    invitation itself tells a misspelt venue id (or the wrong ``api_version``) from an empty venue.
    """
    import openreview

    try:
        client.get_invitation(invitation)
        return
    except openreview.OpenReviewException as exc:
        error = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
        if error.get("name") != "NotFoundError" and error.get("status") != 404:
            raise CollectError(f"openreview {version} invitation {invitation}: {exc}") from exc
    except IndexError:  # a 200 with an empty list
        pass
    except Exception as exc:  # a failed check is a failed source, named as such
        raise CollectError(f"openreview {version} invitation {invitation}: {type(exc).__name__}: {exc}") from exc
    other = "v1" if version == "v2" else "v2"
    raise SourceConfigError(
        f"openreview: {venue!r} has no submission invitation {invitation!r} on API {version}: check the venue "
        f"id (e.g. ICLR.cc/2026/Conference), options.submission_invitation, or whether it is an API {other} venue"
    )


def _get_notes(client: Any, what: str, **params: Any) -> list[Any]:
    """``client.get_notes(**params)`` with every failure turned into a :class:`CollectError`."""
    import openreview
    import requests

    try:
        return list(client.get_notes(**params))
    except openreview.OpenReviewException as exc:
        raise CollectError(f"{what}: {exc}") from exc
    except ValueError as exc:  # (requests') JSONDecodeError, before RequestException, which it also is
        raise CollectError(f"{what}: malformed JSON in the response ({exc})") from exc
    except requests.RequestException as exc:
        raise CollectError(f"{what}: {type(exc).__name__}: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise CollectError(f"{what}: unexpected response shape ({type(exc).__name__}: {exc})") from exc


_PEERREAD_HEADINGS = re.compile(r"^([A-Z][A-Z _]+):\s*$", re.MULTILINE)


def _peerread_parts(comments: str) -> dict[str, str]:
    """Split a PeerRead review's ``comments`` at its ``SUMMARY:`` / ``STRENGTHS:``... headings."""
    parts: dict[str, str] = {}
    matches = list(_PEERREAD_HEADINGS.finditer(comments))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(comments)
        parts[match.group(1).strip().lower()] = comments[match.end() : end].strip()
    return parts


def read_peerread(
    path: Path, limit: int | None = None, since: datetime | None = None
) -> tuple[list[Review], list[Rejected], datetime | None]:
    """Reviews from PeerRead-format review JSONs (``{title, abstract, id, accepted, reviews: [...]}``).

    Reviewer reviews (``IS_META_REVIEW`` false) become :class:`Review` records; the meta review's
    recommendation (or ``accepted``) is the decision. Review dates are day-precision.
    """
    if not path.exists():
        raise SourceConfigError(f"peerread: {path} does not exist")
    files = [path] if path.is_file() else sorted(path.rglob("*.json"))
    reviews: list[Review] = []
    rejected: list[Rejected] = []
    newest_seen: datetime | None = None
    for file in files:
        source = f"peerread:{file.parent.name}"
        try:
            paper = json.loads(file.read_text(encoding="utf-8"))
            paper_id = str(paper["id"])
            entries = list(paper["reviews"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            rejected.append(
                Rejected(source=source, item=file.name, reason=f"unreadable: {type(exc).__name__}: {exc}")
            )
            continue
        metas = [e for e in entries if e.get("IS_META_REVIEW")]
        decision = next(
            (str(m["RECOMMENDATION"]) for m in metas if isinstance(m.get("RECOMMENDATION"), str)), None
        )
        if decision is None and isinstance(paper.get("accepted"), bool):
            decision = "Accept" if paper["accepted"] else "Reject"
        for index, entry in enumerate(e for e in entries if not e.get("IS_META_REVIEW")):
            item = f"peerread:{paper_id}#{index}"
            comments = str(entry.get("comments") or "")
            parts = _peerread_parts(comments)
            summary = parts.get("summary", "" if parts else comments.strip())
            if not (summary or parts.get("strengths") or parts.get("weaknesses")):
                rejected.append(Rejected(source=source, item=item, reason="review without any text"))
                continue
            date = entry.get("DATE")
            updated = utc(datetime.fromisoformat(date)) if date else None
            review = Review(
                id=item,
                source=source,
                updated=updated,
                forum_id=paper_id,
                paper_title=str(paper.get("title", "")).strip(),
                paper_abstract=str(paper.get("abstract", "")).strip(),
                summary=summary,
                strengths=parts.get("strengths", ""),
                weaknesses=parts.get("weaknesses", ""),
                questions=parts.get("questions", ""),
                rating=parse_rating(entry.get("RECOMMENDATION")),
                confidence=parse_rating(entry.get("REVIEWER_CONFIDENCE")),
                decision=decision,
            )
            newest_seen = newest(newest_seen, updated)
            if since is None or updated is None or updated > since:
                reviews.append(review)
    if limit is not None and len(reviews) > limit:
        return reviews[:limit], rejected, None  # cut short: the watermark must not move past unseen items
    return reviews, rejected, newest_seen
