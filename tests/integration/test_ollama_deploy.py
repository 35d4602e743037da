"""Deploying to an Ollama host: the official client against a FAKE Ollama server running the real GGUF.

The fake (tests/fakes/ollama_server.py) loads the uploaded blob with llama.cpp, so the smoke tests
are real generations of SmolLM2-135M.
"""

from __future__ import annotations

import hashlib

import httpx
import ollama
import pytest

from tasks.core.models import resolve_gguf
from tasks.core.settings import get_settings
from tasks.deploy.ollama import (
    BlobDigestMismatch,
    OllamaDeployError,
    SmokeTestFailed,
    deploy_to_ollama,
    rollback_ollama,
)
from tests.fakes.ollama_server import FakeOllamaServer

pytestmark = pytest.mark.integration

MODEL = "paper-reviewer"
MODELFILE = '''# Written by the package stage.
FROM ./model.gguf
SYSTEM """You are a terse assistant. Answer in one short sentence."""
PARAMETER num_predict 128
PARAMETER stop "<|im_end|>"
'''
PROMPTS = ["Say hello.", "Name one colour."]


@pytest.fixture(scope="module")
def gguf():
    return resolve_gguf("smollm2-135m")


@pytest.fixture(autouse=True)
def _home(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTILLERY_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def host(tmp_path):
    with FakeOllamaServer(tmp_path / "ollama") as fake:
        yield fake


def _served(fake: FakeOllamaServer) -> dict[str, str]:
    return {m.model: m.digest for m in ollama.Client(fake.url).list().models}


def test_deploy_creates_smoke_tests_and_points_latest(host, gguf):
    deployment = deploy_to_ollama(host.url, MODEL, "run-1", gguf, MODELFILE, PROMPTS)

    served = _served(host)
    assert set(served) == {f"{MODEL}:run-1", f"{MODEL}:latest"}
    assert served[f"{MODEL}:latest"] == served[f"{MODEL}:run-1"] == deployment.digest
    assert deployment.previous_latest is None
    assert deployment.blob_digest == "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    assert [r.prompt for r in deployment.smoke] == PROMPTS
    assert all(r.passed and r.done_reason == "stop" and r.response.strip() for r in deployment.smoke)
    show = ollama.Client(host.url).show(f"{MODEL}:latest")
    assert "terse assistant" in show.modelfile and "num_predict 128" in show.parameters
    # The record is JSON, as every result crossing a stage boundary.
    assert type(deployment).model_validate_json(deployment.model_dump_json()) == deployment

    # A new run that produced the very same model deploys fine under its own tag.
    again = deploy_to_ollama(host.url, MODEL, "run-2", gguf, MODELFILE, PROMPTS[:1])
    assert again.digest == deployment.digest and again.previous_latest.tag == "run-1"
    assert set(_served(host)) == {f"{MODEL}:run-1", f"{MODEL}:run-2", f"{MODEL}:latest"}


def test_failed_smoke_test_keeps_the_previous_latest(host, gguf):
    first = deploy_to_ollama(host.url, MODEL, "run-1", gguf, MODELFILE, PROMPTS[:1])
    # A broken candidate: it can never finish an answer within two tokens.
    broken = MODELFILE.replace("num_predict 128", "num_predict 2")

    with pytest.raises(SmokeTestFailed) as failure:
        deploy_to_ollama(host.url, MODEL, "run-2", gguf, broken, PROMPTS[:1])

    assert [r.done_reason for r in failure.value.results] == ["length"]
    assert not failure.value.results[0].passed
    served = _served(host)
    assert set(served) == {f"{MODEL}:run-1", f"{MODEL}:latest"}  # the candidate was deleted
    assert served[f"{MODEL}:latest"] == first.digest


def test_host_restart_between_upload_and_create_reuploads_and_succeeds(host, gguf, monkeypatch):
    original_create = ollama.Client.create

    def create_after_a_restart(self, *args, **kwargs):
        if host.restarts == 0:
            host.restart(clear_blobs=True)  # the uploaded blob is not used by any model yet: pruned
        return original_create(self, *args, **kwargs)

    monkeypatch.setattr(ollama.Client, "create", create_after_a_restart)

    deployment = deploy_to_ollama(host.url, MODEL, "run-1", gguf, MODELFILE, PROMPTS[:1])

    assert host.restarts == 1
    assert host.count("POST", "/api/blobs/") == 2 and host.count("POST", "/api/create") == 2
    assert _served(host)[f"{MODEL}:latest"] == deployment.digest
    assert deployment.smoke[0].passed


def test_a_create_error_that_is_not_a_lost_blob_is_not_retried(host, tmp_path):
    not_gguf = tmp_path / "model.gguf"
    not_gguf.write_bytes(b"this is not a GGUF file")

    with pytest.raises(OllamaDeployError, match="invalid file magic"):
        deploy_to_ollama(host.url, MODEL, "run-1", not_gguf, MODELFILE, PROMPTS[:1])

    assert host.count("POST", "/api/blobs/") == 1 and host.count("POST", "/api/create") == 1
    assert _served(host) == {}


def test_rollback_drill_restores_the_previous_model(host, gguf):
    first = deploy_to_ollama(host.url, MODEL, "run-1", gguf, MODELFILE, PROMPTS[:1])
    schema = {
        "type": "object",
        "properties": {"score": {"type": "integer", "minimum": 1, "maximum": 10}},
        "required": ["score"],
    }
    second = deploy_to_ollama(
        host.url,
        MODEL,
        "run-2",
        gguf,
        MODELFILE.replace("terse assistant", "strict reviewer"),
        ["Rate this paper from 1 to 10."],
        json_schema=schema,
    )
    assert second.previous_latest is not None and second.previous_latest.tag == "run-1"
    assert second.smoke[0].response.lstrip().startswith("{")
    assert _served(host)[f"{MODEL}:latest"] == second.digest != first.digest

    rollback = rollback_ollama(host.url, MODEL)

    assert (rollback.from_version.tag, rollback.to_version.tag) == ("run-2", "run-1")
    assert _served(host)[f"{MODEL}:latest"] == first.digest
    assert "terse assistant" in ollama.Client(host.url).show(MODEL).modelfile
    reply = ollama.Client(host.url).chat(MODEL, [{"role": "user", "content": "Hi"}], options={"num_predict": 4})
    assert reply.done and reply.message.content

    with pytest.raises(OllamaDeployError, match="no deployment before run-1"):
        rollback_ollama(host.url, MODEL)
    rollback_ollama(host.url, MODEL, to_tag="run-2")  # roll forward again
    assert _served(host)[f"{MODEL}:latest"] == second.digest
    assert rollback_ollama(host.url, MODEL, history=["run-1", "run-2"]).to_version.tag == "run-1"
    # A caller's own history wins over the host's timestamps (which have nothing before run-1).
    assert rollback_ollama(host.url, MODEL, history=["run-2", "run-1"]).to_version.tag == "run-2"
    with pytest.raises(OllamaDeployError, match="does not exist"):
        rollback_ollama(host.url, MODEL, to_tag="run-9")


def _install_without_smoke_test(fake: FakeOllamaServer, gguf, tag: str) -> None:
    """Put a model on the host directly, as an operator would by hand (cheap test setup)."""
    client = ollama.Client(fake.url)
    digest = client.create_blob(gguf)
    client.create(model=f"{MODEL}:{tag}", files={"model.gguf": digest}, system="old", stream=False)
    client.copy(f"{MODEL}:{tag}", f"{MODEL}:latest")


def test_digest_mismatch_is_detected_and_nothing_changes(host, gguf):
    _install_without_smoke_test(host, gguf, "old")
    before = _served(host)

    with pytest.raises(BlobDigestMismatch):
        deploy_to_ollama(host.url, MODEL, "run-1", gguf, MODELFILE, PROMPTS, expected_sha256="0" * 64)

    assert _served(host) == before
    assert host.count("POST", "/api/blobs/") == 1  # only the setup's upload


def test_the_host_refuses_bytes_that_do_not_match_their_digest(host):
    claimed = "sha256:" + hashlib.sha256(b"the real bytes").hexdigest()

    response = httpx.post(f"{host.url}/api/blobs/{claimed}", content=b"other bytes")

    assert response.status_code == 400 and "digest mismatch" in response.json()["error"]
    assert httpx.head(f"{host.url}/api/blobs/{claimed}").status_code == 404
    assert host.blob_digests() == []


def test_a_retried_deploy_is_idempotent_but_an_existing_tag_is_never_overwritten(host, gguf, tmp_path):
    _install_without_smoke_test(host, gguf, "run-1")  # as if a first attempt got that far, then died
    before = _served(host)

    retried = deploy_to_ollama(host.url, MODEL, "run-1", gguf, MODELFILE, PROMPTS[:1])

    assert retried.digest == before[f"{MODEL}:latest"] and retried.smoke[0].passed
    assert host.count("POST", "/api/blobs/") == 1 and host.count("POST", "/api/create") == 1  # nothing redone
    other = tmp_path / "other.gguf"
    other.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(OllamaDeployError, match="already exists.*another GGUF"):
        deploy_to_ollama(host.url, MODEL, "run-1", other, MODELFILE, PROMPTS[:1])
    # Once latest serves another model, the tag is history: deploying it again is refused.
    ollama.Client(host.url).create(model=f"{MODEL}:run-2", from_=f"{MODEL}:run-1", system="changed", stream=False)
    ollama.Client(host.url).copy(f"{MODEL}:run-2", f"{MODEL}:latest")
    with pytest.raises(OllamaDeployError, match="latest does not serve it"):
        deploy_to_ollama(host.url, MODEL, "run-1", gguf, MODELFILE, PROMPTS[:1])
    assert host.count("POST", "/api/create") == 2  # only the setup's own creates


def test_streamed_chat_from_the_fake_matches_the_api(host, gguf):
    _install_without_smoke_test(host, gguf, "run-1")

    parts = list(
        ollama.Client(host.url).chat(
            MODEL, [{"role": "user", "content": "Say hello."}], options={"num_predict": 8}, stream=True
        )
    )

    assert parts[-1].done and parts[-1].done_reason == "length" and 0 < parts[-1].eval_count <= 8
    assert not any(p.done for p in parts[:-1]) and "".join(p.message.content for p in parts).strip()
    with pytest.raises(ollama.ResponseError) as missing:
        ollama.Client(host.url).chat("no-such-model", [{"role": "user", "content": "hi"}])
    assert missing.value.status_code == 404
