"""paper-explainer: passages, persona prompt formatting and parsing, the format metric, variants."""

import pytest

from tasks.core.recipe import RecipeError, load_recipe
from tasks.core.run import combine_variant_gates, combine_variant_stage
from tasks.synthesize.personas import (
    PERSONAS,
    ExecutiveOutput,
    format_followed,
    format_persona_prompt,
    parse_persona,
    render_persona,
    select_passages,
    split_passages,
    synthesize_personas,
)
from tasks.synthesize.variants import (
    select_variant,
    variant_counts,
    variant_output,
    variant_recipe,
    variant_recipes,
)
from tasks.validate.scoring import persona_metrics


def section(sid, text, index=1, flags=()):
    return {"id": f"arxiv:{sid}", "paper_id": sid.split("#")[0], "paper_title": "A Paper", "section_title": "1 Intro",
            "index": index, "text": text, "flags": list(flags)}


def test_split_passages_keeps_paragraphs_and_the_limit():
    text = "\n\n".join(["First paragraph. " * 5, "Second one. " * 3, "x" * 50])
    chunks = split_passages(text, 120)
    assert all(len(c) <= 120 for c in chunks)
    assert "".join(chunks).replace("\n", "").replace(" ", "") == text.replace("\n", "").replace(" ", "")
    long_sentence = "word " * 100
    assert all(len(c) <= 60 for c in split_passages(long_sentence, 60))
    assert split_passages("", 100) == []


def test_select_passages_spreads_first_chunks_and_skips_short_or_flagged():
    sections = [section("p1#1", ("Alpha sentence here. " * 20 + "\n\n") * 2, index=1),
                section("p2#1", "Beta sentence here. " * 20, index=1),
                section("p1#2", "too short", index=2),
                section("p1#3", "Gamma sentence. " * 30, index=3, flags=["hidden_text:white"])]
    passages = select_passages(sections, limit=2, max_chars=450)
    assert len(passages) == 2
    assert {p["id"].rsplit(".", 1)[1] for p in passages} == {"0"}  # first chunk of each section first
    assert {p["paper_id"] for p in passages} == {"p1", "p2"}
    assert select_passages(sections, limit=10, max_chars=450) == select_passages(sections, limit=10, max_chars=450)


@pytest.mark.parametrize("name", list(PERSONAS))
def test_render_then_parse_round_trips_for_every_persona(name):
    spec = PERSONAS[name]
    values = {field: f"text for {field}\nwith a line break" for field, _ in spec.headings}
    text = render_persona(name, values)
    assert parse_persona(name, text) == {field: f"text for {field} with a line break" for field, _ in spec.headings}
    assert format_followed(name, text)


def test_parse_persona_rejects_missing_reordered_empty_or_preceded_headings():
    good = render_persona("executive", ExecutiveOutput(why_it_matters="v", what_it_takes="c", bottom_line="b"))
    assert format_followed("executive", good)
    assert not format_followed("executive", "**Value:** v\n\n**Bottom line:** b")  # missing
    assert not format_followed("executive", "**Cost:** c\n\n**Value:** v\n\n**Bottom line:** b")  # order
    assert not format_followed("executive", "**Value:** v\n\n**Cost:**\n\n**Bottom line:** b")  # empty
    assert not format_followed("executive", "Sure! " + good)  # text before the first heading
    assert not format_followed("executive", "")
    assert not format_followed("eli5", good)  # another persona's format


def test_persona_prompts_name_the_audience_and_carry_the_passage():
    passage = {"id": "x", "paper_id": "p", "paper_title": "GP-RNN", "section_title": "3 Method", "text": "We do X."}
    for name in PERSONAS:
        user = format_persona_prompt(name, passage)[-1].content
        assert PERSONAS[name].audience in user and user.endswith("We do X.") and "GP-RNN" in user
    with pytest.raises(ValueError, match="unknown persona"):
        format_persona_prompt("pirate", passage)


class _Teacher:
    name = "fake:t"

    def __init__(self, junk: dict[str, str] | None = None):
        self.junk = junk or {}  # field -> what the teacher writes there instead of prose

    def structured(self, messages, output, **_):
        fields = {name: self.junk.get(name, f"The {name} in plain words.") for name in output.model_fields}
        return output(**fields), None

    def map(self, fn, items, concurrency=None, progress=None):
        return [fn(item) for item in items]


def test_synthesize_personas_labels_every_example_with_its_variant():
    from tasks.core.recipe import SynthesizeConfig, TeacherConfig

    sections = [section("p1#1", "Alpha sentence here. " * 20), section("p2#1", "Beta sentence here. " * 20)]
    config = SynthesizeConfig(generator="personas", personas=["eli5", "executive"], max_items=2, source_chars=500)
    examples, rejected = synthesize_personas(sections, config, TeacherConfig(), _Teacher())
    assert not rejected and len(examples) == 4
    assert variant_counts([e.model_dump() for e in examples]) == {"eli5": 2, "executive": 2}
    for example in examples:
        variant = example.metadata["variant"]
        assert example.messages[0].content == PERSONAS[variant].system_prompt
        assert format_followed(variant, example.completion)


@pytest.mark.parametrize(("junk", "reason"), [
    ("1348543468729", "field 'what_the_idea_is' is not prose: '1348543468729'"),  # seen from SmolLM2-135M
    ("Attention.", "field 'what_the_idea_is' is not prose: 'Attention.'"),
    ("   ", "empty field 'what_the_idea_is'"),
])
def test_persona_outputs_whose_fields_are_not_prose_are_rejected_with_the_reason(junk, reason):
    from tasks.core.recipe import SynthesizeConfig, TeacherConfig

    sections = [section("p1#1", "Alpha sentence here. " * 20)]
    config = SynthesizeConfig(generator="personas", personas=["intuitive", "eli5"], max_items=1, source_chars=500)
    examples, rejected = synthesize_personas(sections, config, TeacherConfig(), _Teacher({"what_the_idea_is": junk}))
    assert [e.metadata["variant"] for e in examples] == ["eli5"]
    assert rejected == [{"item": "explain:arxiv:p1#1.0 (intuitive)", "reason": reason}]


def test_persona_metric_uses_each_examples_variant():
    examples = [{"metadata": {"variant": "eli5"}}, {"metadata": {"variant": "eli5"}}, {"metadata": {}}]
    predictions = [{"prediction": "**Analogy:** a\n**Explanation:** b"}, {"prediction": "just text"},
                   {"prediction": "**Analogy:** a\n**Explanation:** b"}]
    assert persona_metrics(examples, predictions)["format_followed"] == pytest.approx(1 / 3)
    assert [p["format_followed"] for p in predictions] == [True, False, False]


def test_select_variant_and_counts():
    rows = [{"id": "1", "metadata": {"variant": "eli5"}}, {"id": "2", "metadata": {"variant": "executive"}},
            {"id": "3", "metadata": {}}]
    assert [r["id"] for r in select_variant(rows, "eli5")] == ["1"]
    assert select_variant(rows, "intuitive") == []
    assert variant_counts(rows) == {"eli5": 1, "executive": 1, "none": 1}
    assert variant_output("eli5") == "examples.eli5" and variant_output("") == "examples"


def test_variant_recipes_fan_out_with_names_models_and_system_prompts():
    recipe = load_recipe("paper-explainer")
    recipes = variant_recipes(recipe)
    assert list(recipes) == ["eli5", "intuitive", "executive"]
    eli5 = recipes["eli5"]
    assert eli5.name == "paper-explainer-eli5" and eli5.deploy.model_name == "paper-explainer-eli5"
    assert eli5.synthesize.system_prompt == PERSONAS["eli5"].system_prompt and eli5.variants == []
    assert eli5.train == recipe.train and eli5.validate_ == recipe.validate_
    assert variant_recipes(load_recipe("stats-qa")) == {"": load_recipe("stats-qa")}
    with pytest.raises(ValueError, match="no variant"):
        variant_recipe(recipe, "pirate")


def test_variants_are_validated_against_the_generator_and_personas():
    with pytest.raises(RecipeError, match="synthesize.personas"):
        load_recipe("paper-explainer", ["variants=[eli5, pirate]"])
    with pytest.raises(RecipeError, match="duplicates"):
        load_recipe("paper-explainer", ["variants=[eli5, eli5]"])
    with pytest.raises(RecipeError, match="generator"):
        load_recipe("stats-qa", ["variants=[eli5]"])
    assert load_recipe("paper-explainer", ["variants=[executive]"]).variants == ["executive"]


def test_combine_variant_stage_statuses():
    def entry(status, wall=1.0, reason=None):
        return {"status": status, "wall_s": wall, **({"reason": reason} if reason else {})}

    assert combine_variant_stage({"a": entry("cached"), "b": entry("cached")})["status"] == "cached"
    assert combine_variant_stage({"a": entry("cached"), "b": entry("completed")})["status"] == "completed"
    failed = combine_variant_stage({"a": entry("failed", reason="boom"), "b": entry("completed", 2.5)})
    assert failed["status"] == "failed" and failed["wall_s"] == 3.5 and failed["reason"] == "a: boom"
    assert failed["variants"] == {"a": "failed", "b": "completed"}
    assert combine_variant_stage({"a": entry("skipped"), "b": entry("skipped")})["status"] == "skipped"
    assert combine_variant_stage({"a": entry("skipped"), "b": entry("cached")})["status"] == "completed"


def test_combine_variant_gates_passes_only_when_every_variant_passes():
    ok = {"passed": True, "metrics": {"rouge_l": 0.2}, "reasons": ["ok: rouge_l"]}
    bad = {"passed": False, "metrics": {"rouge_l": 0.01}, "reasons": ["FAIL: rouge_l"]}
    both = combine_variant_gates({"eli5": ok, "executive": ok})
    assert both["passed"] and both["metrics"] == {"eli5.rouge_l": 0.2, "executive.rouge_l": 0.2}
    one = combine_variant_gates({"eli5": ok, "executive": bad})
    assert not one["passed"] and "executive: FAIL: rouge_l" in one["reasons"]
    missing = combine_variant_gates({"eli5": ok, "executive": None})
    assert not missing["passed"] and "executive: FAIL: not validated" in missing["reasons"]
    assert combine_variant_gates({}) is None and combine_variant_gates({"a": None}) is None


def test_run_summary_with_variants_shows_each_variant_and_combines_the_rest():
    from tasks.core.refs import StageOutput
    from tasks.core.run import MODEL_STAGES, run_summary
    from tasks.core.stage import StageResult, StageRunner

    def gate(passed):
        return StageResult(status="completed", outputs={"decision": StageOutput(counts={"gate": {
            "passed": passed, "metrics": {"rouge_l": 0.1}, "reasons": ["ok" if passed else "FAIL: x"]}})})

    main = StageRunner()
    main.run("collect", lambda: StageResult(status="cached"))
    main.run("synthesize", lambda: StageResult(status="completed", teacher_calls=6))
    branches = {}
    for name, passed in (("eli5", True), ("executive", False)):
        runner = StageRunner()
        for stage in MODEL_STAGES[:-2]:
            runner.run(stage, lambda: StageResult(status="completed"))
        runner.run("validate", lambda p=passed: gate(p))
        runner.run("deploy", lambda p=passed: StageResult(status="completed") if p
                   else StageResult(status="skipped", reason="gate failed"))
        branches[name] = (f"run-{name}", f"paper-explainer-{name}", runner)
    summary = run_summary("run", "paper-explainer", main, 12.0, flow_run_id="f", variants=branches)
    assert list(summary["stages"]) == ["collect", "synthesize", *MODEL_STAGES]
    assert summary["status"] == "completed" and summary["teacher_calls"] == 6
    assert summary["gate"]["passed"] is False and summary["gate"]["metrics"]["eli5.rouge_l"] == 0.1
    assert summary["variants"]["eli5"]["recipe"] == "paper-explainer-eli5"
    assert summary["variants"]["eli5"]["gate"]["passed"] is True
    assert set(summary["variants"]["eli5"]["stages"]) == set(MODEL_STAGES)
    assert summary["stages"]["deploy"]["variants"] == {"eli5": "completed", "executive": "skipped"}

    failed = StageRunner()
    failed.run("collect", lambda: StageResult(status="completed"))
    failed.run("synthesize", lambda: (_ for _ in ()).throw(RuntimeError("teacher down")))
    summary = run_summary("run", "paper-explainer", failed, 1.0)
    assert summary["status"] == "failed" and summary["stages"]["train"]["reason"] == "stage synthesize failed"
