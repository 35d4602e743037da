"""profile-scorer: profiles from the Stack Exchange sample, label JSON, the agreement score metric."""

import json
import math
from pathlib import Path

import pytest

from tasks.collect.seed_profiles import ProfileLabel, build_profiles, handle_of, parse_activity, profile_bio
from tasks.synthesize.outputs import output_schema
from tasks.synthesize.profiles import ProfileScore, examples_from_profiles, label_json
from tasks.validate.scoring import extract_score, profile_agreement, profile_metrics

POSTS = """<?xml version="1.0" encoding="utf-8"?>
<posts>
  <row Id="1" PostTypeId="1" AcceptedAnswerId="2" Score="5" Title="What is a prior?" Tags="&lt;bayesian&gt;" OwnerUserId="7" Body="&lt;p&gt;Q&lt;/p&gt;" />
  <row Id="2" PostTypeId="2" ParentId="1" Score="9" OwnerUserId="8" Body="&lt;p&gt;A &lt;b&gt;prior&lt;/b&gt; is a belief.&lt;/p&gt;" />
  <row Id="3" PostTypeId="2" ParentId="1" Score="1" OwnerUserId="8" Body="&lt;p&gt;Another.&lt;/p&gt;" />
  <row Id="4" PostTypeId="2" ParentId="1" Score="2" Body="&lt;p&gt;Anonymous.&lt;/p&gt;" />
</posts>
"""


def test_parse_activity_and_bio(tmp_path):
    path = tmp_path / "Posts.xml"
    path.write_text(POSTS)
    users = parse_activity(path, "stats")
    assert sorted(users) == ["7", "8"]  # the post without an owner is skipped
    bio = profile_bio(users["8"], "stats.stackexchange.com")
    assert "wrote 2 answer(s), 1 accepted" in bio and "Total score of their posts: 10" in bio
    assert 'Answered: "What is a prior?" (score 9, accepted)' in bio and "A **prior** is a belief." in bio
    assert "Tags of their questions: bayesian" in profile_bio(users["7"], "stats.stackexchange.com")
    assert handle_of("stats", "8") == "stats-user-8"


def test_build_profiles_from_the_sample_is_stable_and_unique():
    profiles = build_profiles()
    assert len(profiles) >= 40 and profiles == build_profiles()
    assert len({p.handle for p in profiles}) == len(profiles)
    assert all(p.bio.startswith("Member of ") for p in profiles)


def test_label_schema_keeps_a_small_model_in_range():
    schema = ProfileLabel.model_json_schema()
    assert schema["properties"]["score"]["enum"] == list(range(11))
    with pytest.raises(ValueError):
        ProfileLabel(reason="r", score=11)


def test_label_json_rounds_clips_and_follows_the_served_schema():
    value = json.loads(label_json("h", 0.8333, "x " * 300))
    assert value["score"] == 0.83 and len(value["reason"]) <= 200 and value["handle"] == "h"
    ProfileScore.model_validate(value)
    assert json.loads(label_json("h", 1.7, None))["score"] == 1.0
    assert output_schema("profile_labels", "json") == ProfileScore.model_json_schema()
    assert output_schema("profile_labels", "text") is None and output_schema("grounded_qa", "json") is None


def test_examples_from_profiles_carry_the_label_and_reject_unusable_rows():
    profiles = [{"id": "2", "handle": "b", "bio": "Bio b", "score": 0.4, "reason": "ok", "scored_by": "m"},
                {"id": "1", "handle": "a", "bio": "Bio a", "score": None, "reason": None},
                {"id": "3", "handle": "c", "bio": " ", "score": 0.9, "reason": "r"}]
    examples, rejected = examples_from_profiles(profiles, "sys", bio_chars=100)
    assert [e.id for e in examples] == ["profile:b"] and examples[0].metadata["label"] == 0.4
    assert json.loads(examples[0].completion) == {"handle": "b", "score": 0.4, "reason": "ok"}
    assert [r["reason"] for r in rejected] == ["profile without a score", "profile without a bio"]


@pytest.mark.parametrize("predicted, label, score", [
    (0.8, 0.8, 1.0), (0.6, 0.8, 0.8), (0.0, 1.0, 0.0), (None, 0.5, 0.0), (1.7, 0.9, 0.9), (-0.2, 0.1, 0.9)])
def test_profile_agreement(predicted, label, score):
    assert profile_agreement(predicted, label) == pytest.approx(score)


@pytest.mark.parametrize("text, expected", [
    ('{"handle": "h", "score": 0.75, "reason": "r"}', 0.75),
    ('{"handle": "h", "score": 0.7', 0.7),
    ('{"handle": "h", "reason": "no score"}', None),
    ("", None)])
def test_extract_score(text, expected):
    assert extract_score(text) == expected


def test_profile_metrics_avg_min_and_correlation():
    examples = [{"metadata": {"label": v}} for v in (0.2, 0.5, 0.9, 0.6)]
    predictions = [{"prediction": json.dumps({"score": v})} for v in (0.3, 0.5, 0.8)] + [{"prediction": "broken"}]
    metrics = profile_metrics(examples, predictions)
    assert metrics["profile_score_avg"] == pytest.approx((0.9 + 1.0 + 0.9 + 0.0) / 4)
    assert metrics["profile_score_min"] == 0.0
    assert metrics["profile_label_pearson"] > 0.95
    assert metrics["profile_score_mae"] == pytest.approx(0.2 / 3)
    assert predictions[3]["agreement"] == 0.0
    empty = profile_metrics([], [])
    assert math.isnan(empty["profile_score_avg"]) and math.isnan(empty["profile_score_min"])


def test_recipe_gates_keep_the_seed_criteria_in_the_full_profile():
    from tasks.core.recipe import load_recipe

    gate = load_recipe("profile-scorer", profile="full").validate_.gate
    assert gate.min["profile_score_avg"] == 0.75 and gate.min["profile_score_min"] == 0.5
    assert gate.min["profile_label_pearson"] == 0.85 and gate.max["latency_p95_s"] == 5
    source = load_recipe("profile-scorer").collect.sources[0]
    assert source.kind == "postgres" and source.query == "llama_cpp:smollm2-135m"


def test_every_new_recipe_opens_with_its_command_and_has_smoke_and_full_profiles():
    from tasks.core.recipe import RECIPES_DIR, load_recipe, recipe_profiles

    for name in ("paper-reviewer", "paper-explainer", "self-critique", "profile-scorer"):
        assert (RECIPES_DIR / f"{name}.yaml").read_text().splitlines()[0] == f"# python -m flows.full --recipe {name}"
        assert {"smoke", "full"} <= set(recipe_profiles(name))
        for profile in (None, "smoke", "full"):
            assert load_recipe(name, profile=profile).name == name
    assert Path(RECIPES_DIR).is_dir()
