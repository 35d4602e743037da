"""The base vs trained results table read from a run summary (docs/results.md)."""

import json

from tasks.validate.results import better, main, model_results, results_markdown


def _run(recipe, trained, base):
    return {"recipe": recipe, "run_id": f"{recipe}-1", "wall_s": 10.0, "status": "completed",
            "gate": {"passed": True, "metrics": trained, "reasons": []}, "counts": {"validate": {"base": base}}}


def test_model_results_plain_and_with_variants():
    plain = _run("paper-reviewer", {"rating_mae": 1.2}, {"rating_mae": 2.0})
    assert model_results(plain) == {"paper-reviewer": {"trained": {"rating_mae": 1.2}, "base": {"rating_mae": 2.0}}}
    variants = {"recipe": "paper-explainer", "variants": {
        "eli5": _run("paper-explainer-eli5", {"rouge_l": 0.3}, {"rouge_l": 0.1}),
        "executive": {**_run("x", {}, {}), "gate": None}}}
    assert list(model_results(variants)) == ["paper-explainer-eli5"]  # a variant without a gate is left out


def test_judged_runs_give_the_base_a_win_rate_of_one_half():
    results = model_results(_run("self-critique", {"win_rate": 0.6}, {"rouge_l": 0.1}))
    assert results["self-critique"]["base"]["win_rate"] == 0.5
    graded = _run("self-critique", {"win_rate": 0.6, "judge_grade": 0.7}, {"rouge_l": 0.1})
    graded["counts"]["validate"]["judge"] = {"judge_grade_candidate": 0.7, "judge_grade_base": 0.65}
    assert model_results(graded)["self-critique"]["base"]["judge_grade"] == 0.65


def test_better_knows_the_direction_of_each_metric():
    assert better("rating_mae", 1.0, 2.0) == "trained"
    assert better("latency_p95_s", 3.0, 2.0) == "base"
    assert better("rouge_l", 0.2, 0.1) == "trained"
    assert better("profile_score_mae", 0.1, 0.3) == "trained"
    assert better("rouge_l", 0.2, 0.2) == "tie"
    assert better("rouge_l", float("nan"), 0.2) == ""
    assert better("pair_yield", 0.5, None) == ""


def test_markdown_and_cli(tmp_path, capsys):
    summary = _run("profile-scorer", {"profile_score_avg": 0.8}, {"profile_score_avg": 0.4})
    text = results_markdown(summary)
    assert "| profile_score_avg | 0.4 | 0.8 | trained |" in text
    path = tmp_path / "out.txt"
    path.write_text("progress line\n" + json.dumps(summary) + "\n")
    assert main([str(path)]) == 0
    assert "### profile-scorer (profile-scorer-1, gate passed, 10 s)" in capsys.readouterr().out
