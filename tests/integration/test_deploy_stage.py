"""The deploy stage against the local store and a FAKE Ollama host running the real GGUF:
publish, latest only after the gate, a blocked deploy, and a rollback drill on both."""

from __future__ import annotations

import json

import ollama
import pytest

from tasks.core.models import resolve_gguf
from tasks.core.recipe import load_recipe
from tasks.core.settings import get_settings
from tasks.core.store import get_store
from tasks.package.build import gguf_metadata
from tasks.package.modelfile import modelfile_for
from tests.fakes.ollama_server import FakeOllamaServer

pytestmark = pytest.mark.integration


def _latest_digest(url: str, model: str) -> str:
    return {m.model: m.digest for m in ollama.Client(url).list().models}[f"{model}:latest"]


def test_publish_gate_and_rollback_drill(prefect_harness, tmp_path, monkeypatch):
    from flows.deploy import deploy_flow
    from flows.rollback import main as rollback_main

    recipe = load_recipe("stats-qa", ["deploy.smoke_prompts=[Say hello.]", "package.num_predict=48"])
    with FakeOllamaServer(tmp_path / "ollama") as host:
        monkeypatch.setenv("DISTILLERY_OLLAMA_HOST", host.url)
        get_settings.cache_clear()
        store = get_store()
        original = resolve_gguf("smollm2-135m")
        requantized = tmp_path / "model-q8_0.gguf"
        import llama_cpp

        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype, params.allow_requantize = 7, True
        assert llama_cpp.llama_model_quantize(str(original).encode(), str(requantized).encode(), params) == 0
        template = gguf_metadata(original)["tokenizer.chat_template"]
        spec = modelfile_for(template, "model.gguf", "Answer briefly.", 0.0, 1024, 48, 1.0)
        modelfile = store.put_bytes(spec.render().encode(), "Modelfile", kind="modelfile")
        models = {"r1": store.put_file(original, kind="gguf"), "r2": store.put_file(requantized, kind="gguf")}
        passed = {"passed": True, "metrics": {"rouge_l": 0.2}, "reasons": ["ok"], "failures": []}

        def deploy(run_id, gguf, gate):
            return deploy_flow(recipe, run_id, {"gguf_q4_k_m": gguf, "modelfile": modelfile}, {}, gate["metrics"],
                               gate, gguf, modelfile)

        first = deploy("stats-qa-r1", models["r1"], passed)
        assert first.status == "completed"
        counts = first.output("deploy").counts
        assert counts["latest"] == "stats-qa-r1" and counts["ollama"]["tag"] == "stats-qa-r1"
        manifest = json.loads(store.read_key("runs/stats-qa-r1/manifest.json"))
        assert manifest["files"]["gguf_q4_k_m"]["sha256"] == models["r1"].sha256
        r1_digest = _latest_digest(host.url, "stats-qa")

        assert deploy("stats-qa-r2", models["r2"], passed).status == "completed"
        assert json.loads(store.read_key("latest/stats-qa.json"))["run_id"] == "stats-qa-r2"
        r2_digest = _latest_digest(host.url, "stats-qa")
        assert r2_digest != r1_digest

        # A candidate that fails the gate is published for inspection but moves nothing.
        blocked = deploy("stats-qa-r3", models["r1"], {**passed, "passed": False, "failures": ["rouge_l low"]})
        assert blocked.status == "skipped" and "rouge_l low" in blocked.reason
        assert store.read_key("runs/stats-qa-r3/manifest.json") is not None
        assert json.loads(store.read_key("latest/stats-qa.json"))["run_id"] == "stats-qa-r2"
        assert "output_schema" not in manifest  # a text recipe

        # A JSON recipe's manifest carries the schema clients pass as `format`, bounded numbers listed.
        scorer = load_recipe("profile-scorer")
        deploy_flow(scorer, "profile-scorer-r1", {"modelfile": modelfile}, {}, {}, {**passed, "passed": False},
                    models["r1"], modelfile)
        schema = json.loads(store.read_key("runs/profile-scorer-r1/manifest.json"))["output_schema"]
        assert schema["required"] == ["handle", "score", "reason"] and 0.37 in schema["properties"]["score"]["enum"]

        # Rollback drill: both the store and Ollama serve r1 again.
        assert rollback_main(["--recipe", "stats-qa"]) == 0
        pointer = json.loads(store.read_key("latest/stats-qa.json"))
        assert pointer["run_id"] == "stats-qa-r1" and pointer["rolled_back_from"] == "stats-qa-r2"
        assert _latest_digest(host.url, "stats-qa") == r1_digest

        # Another publisher wins the store's compare-and-swap after this run's Ollama deploy moved
        # Ollama's latest: Ollama is pointed back at the winner, and the stage fails without retrying
        # (the DAG's StageRunner records the raised error as the stage's failure).
        import tasks.deploy.tasks as deploy_tasks
        from tasks.core.store import PointerConflict

        real_move, attempts = deploy_tasks.move_latest, []

        def lose_the_race(store_, recipe_name, run_id):
            attempts.append(run_id)
            real_move(store_, recipe_name, "stats-qa-r2")  # the other publisher's write lands first
            raise PointerConflict(f"latest/{recipe_name}.json changed since it was read")

        monkeypatch.setattr(deploy_tasks, "move_latest", lose_the_race)
        with pytest.raises(PointerConflict, match="changed since it was read"):
            deploy("stats-qa-r4", models["r1"], {**passed, "metrics": {"rouge_l": 0.3}})
        assert attempts == ["stats-qa-r4"]
        assert json.loads(store.read_key("latest/stats-qa.json"))["run_id"] == "stats-qa-r2"
        assert _latest_digest(host.url, "stats-qa") == r2_digest
