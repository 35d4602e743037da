"""Stack Exchange dump parsing on the real sample dumps (no network)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tasks.collect.common import BadSourceFile, CollectError, RetryPolicy, SourceConfigError, html_to_markdown
from tasks.collect.stackexchange import parse_posts_xml, parse_tags, site_domain, throttle_wait

REPO = Path(__file__).resolve().parents[2]
STATS = REPO / "data" / "sample" / "stackexchange" / "stats.stackexchange.com" / "Posts_sample.xml"
AI = REPO / "data" / "sample" / "stackexchange" / "ai.stackexchange.com" / "Posts.xml"


def test_stats_sample_joins_the_one_accepted_pair_and_rejects_the_rest_with_reasons():
    pairs, rejected = parse_posts_xml(STATS, "stats")
    # Of 7 questions with an AcceptedAnswerId only question 3 has its answer (Id 5) in the excerpt.
    assert [p.id for p in pairs] == ["stackexchange:stats.stackexchange.com:3"]
    pair = pairs[0]
    assert pair.title == "What are some valuable Statistical Analysis open source projects?"
    assert pair.tags == ["software", "open-source"]
    assert pair.answer.startswith("The R-project\n\n<http://www.r-project.org/>")
    assert "<p>" not in pair.question and "<p>" not in pair.answer
    assert pair.score == 66
    assert pair.url == "https://stats.stackexchange.com/questions/3"
    # updated is the newest activity or edit of question and answer (question 3: LastActivity 2013-05-27).
    assert pair.updated == datetime(2013, 5, 27, 14, 48, 36, 927000, tzinfo=UTC)
    assert sorted(r.item for r in rejected) == sorted(
        f"stackexchange:stats.stackexchange.com:{q}" for q in (1, 2, 4, 7, 10, 11)
    )
    assert all(
        r.reason.startswith("accepted answer ") and r.reason.endswith("is not in the dump") for r in rejected
    )


def test_ai_sample_gives_sixty_pairs_with_markdown_bodies_and_tags():
    pairs, rejected = parse_posts_xml(AI, "ai.stackexchange.com")
    assert len(pairs) == 60 and rejected == []
    assert len({p.id for p in pairs}) == 60
    first = pairs[0]
    assert first.id == "stackexchange:ai.stackexchange.com:1"
    assert first.title == 'What is "backprop"?'  # XML entities decoded
    assert first.tags == ["neural-networks", "definitions"]
    assert first.answer.startswith('"Backprop" is the same as "backpropagation"')
    assert all(p.question.strip() and p.answer.strip() and p.tags for p in pairs)
    assert not any("<p>" in p.question or "<p>" in p.answer for p in pairs)


def test_ai_sample_continuation_holds_the_next_sixty_seven_pairs_and_stats_qa_reads_both():
    from tasks.core.recipe import load_recipe

    first, _ = parse_posts_xml(AI, "ai")
    more, rejected = parse_posts_xml(AI.parent / "more" / "Posts.xml", "ai")
    assert len(more) == 67 and rejected == []
    # The same dump's later questions: no question in both, every id above the first file's.
    newest_first = max(int(p.id.rsplit(":", 1)[1]) for p in first)
    assert min(int(p.id.rsplit(":", 1)[1]) for p in more) > newest_first
    paths = [source.path for source in load_recipe("stats-qa").collect.sources]
    assert str(AI.relative_to(REPO)) in paths and str((AI.parent / "more" / "Posts.xml").relative_to(REPO)) in paths
    # The folder of the first file is what other readers take whole: the continuation is not in it.
    assert sorted(AI.parent.glob("Posts*.xml")) == [AI]


def test_limit_and_since_filter_the_stream():
    assert len(parse_posts_xml(AI, "ai", limit=5)[0]) == 5
    everything, _ = parse_posts_xml(AI, "ai")
    cutoff = sorted(p.updated for p in everything)[29]
    newer, _ = parse_posts_xml(AI, "ai", since=cutoff)
    assert {p.id for p in newer} == {p.id for p in everything if p.updated > cutoff}
    assert len(newer) == 30


def test_answers_before_their_question_are_still_joined(tmp_path):
    rows = [line for line in AI.read_text(encoding="utf-8-sig").splitlines() if "<row" in line]
    question = next(r for r in rows if '<row Id="1" ' in r)
    answer = next(r for r in rows if '<row Id="3" ' in r)
    dump = tmp_path / "Posts.xml"
    dump.write_text(
        f'<?xml version="1.0" encoding="utf-8"?>\n<posts>\n{answer}\n{question}\n</posts>', encoding="utf-8"
    )
    pairs, rejected = parse_posts_xml(dump, "ai")
    assert [p.id for p in pairs] == ["stackexchange:ai.stackexchange.com:1"] and rejected == []


def test_external_entities_are_refused_without_reading_the_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-CONTENT")
    dump = tmp_path / "Posts.xml"
    dump.write_text(
        f'<?xml version="1.0"?>\n<!DOCTYPE posts [<!ENTITY x SYSTEM "file://{secret}">]>\n<posts>\n'
        '<row Id="1" PostTypeId="1" AcceptedAnswerId="2" Title="t &x;" Body="q" />\n</posts>',
        encoding="utf-8",
    )
    with pytest.raises(CollectError) as caught:
        parse_posts_xml(dump, "example.stackexchange.com")
    assert "TOP-SECRET" not in str(caught.value)


def test_scripts_in_bodies_are_dropped(tmp_path):
    dump = tmp_path / "Posts.xml"
    dump.write_text(
        '<?xml version="1.0"?>\n<posts>\n'
        '<row Id="1" PostTypeId="1" AcceptedAnswerId="2" Title="t" '
        'Body="&lt;p&gt;q&lt;/p&gt;&lt;script&gt;alert(1)&lt;/script&gt;" Tags="&lt;a&gt;" '
        'LastActivityDate="2020-01-01T00:00:00.000" />\n'
        '<row Id="2" PostTypeId="2" ParentId="1" Body="&lt;p&gt;an answer&lt;/p&gt;" '
        'LastActivityDate="2020-01-02T00:00:00.000" />\n</posts>',
        encoding="utf-8",
    )
    pairs, rejected = parse_posts_xml(dump, "example.stackexchange.com")
    assert len(pairs) == 1 and rejected == []
    assert pairs[0].question == "q" and pairs[0].answer == "an answer"
    assert pairs[0].updated == datetime(2020, 1, 2, tzinfo=UTC)


def test_an_empty_body_is_rejected_with_its_reason(tmp_path):
    dump = tmp_path / "Posts.xml"
    dump.write_text(
        '<posts><row Id="1" PostTypeId="1" AcceptedAnswerId="2" Title="t" Body="&lt;p&gt;q&lt;/p&gt;" />'
        '<row Id="2" PostTypeId="2" ParentId="1" Body="&lt;p&gt; &lt;/p&gt;" /></posts>',
        encoding="utf-8",
    )
    pairs, rejected = parse_posts_xml(dump, "example.stackexchange.com")
    assert pairs == []
    assert [r.reason for r in rejected] == ["empty question or accepted answer body after HTML to Markdown"]


def test_malformed_and_missing_dumps_are_clear_errors(tmp_path):
    broken = tmp_path / "Posts.xml"
    broken.write_bytes(AI.read_bytes()[:5000])
    with pytest.raises(BadSourceFile, match="not well-formed XML"):
        parse_posts_xml(broken, "ai")
    with pytest.raises(SourceConfigError, match="is not a file"):
        parse_posts_xml(tmp_path / "absent.xml", "ai")


def test_throttle_wait_is_what_the_api_asks_within_the_policy():
    policy = RetryPolicy(base_delay_s=1.0, max_delay_s=4.0, max_retry_after_s=600.0)
    asked = "too many requests from this IP, more requests available in 45 seconds"
    assert throttle_wait(asked, policy, 1, "se") == 45.0
    assert throttle_wait("more requests available in 1 second", policy, 3, "se") == 1.0
    # No number in the message: the policy's backoff, capped like any other.
    assert 0.5 <= throttle_wait("too many requests from this IP", policy, 1, "se") <= 1.0
    assert 2.0 <= throttle_wait(None, policy, 5, "se") <= 4.0
    with pytest.raises(CollectError, match="asks to wait 82962s, longer than the allowed 600s"):
        throttle_wait("too many requests, more requests available in 82962 seconds", policy, 1, "se")


def test_parse_tags_reads_both_dump_schemas():
    assert parse_tags("&lt;bayesian&gt;&lt;prior&gt;".replace("&lt;", "<").replace("&gt;", ">")) == [
        "bayesian",
        "prior",
    ]
    assert parse_tags("|discussion|site-policy|") == ["discussion", "site-policy"]
    assert parse_tags(None) == [] and parse_tags("") == []


def test_site_domain_accepts_short_names_and_domains():
    assert site_domain("stats") == "stats.stackexchange.com"
    assert site_domain("stats.stackexchange.com") == "stats.stackexchange.com"
    assert site_domain("stackoverflow") == "stackoverflow.com"
    assert site_domain("https://ai.stackexchange.com/") == "ai.stackexchange.com"


def test_html_to_markdown_keeps_code_and_links_and_drops_scripts():
    text = html_to_markdown(
        '<p>See <a href="http://x.org/">x</a></p><pre><code>a &lt; b</code></pre>'
        "<style>p{}</style><script>steal()</script>"
    )
    assert "[x](http://x.org/)" in text
    assert "a < b" in text
    assert "steal" not in text and "p{}" not in text
