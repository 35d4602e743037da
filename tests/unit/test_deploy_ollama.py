"""The pure parts of the Ollama deploy: Modelfile parsing, smoke-test verdicts, rollback choice."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tasks.deploy.ollama import (
    ModelfileError,
    OllamaDeployError,
    OllamaModelVersion,
    _base_url,
    _latest_version,
    _previous_tag,
    _smoke_problem,
    parse_modelfile,
)


def test_parse_modelfile_reads_every_instruction():
    spec = parse_modelfile(
        '# comment\n'
        'FROM ./model.gguf\n'
        'TEMPLATE """{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"""\n'
        'system "Be brief."\n'
        'PARAMETER temperature 0.2\n'
        'PARAMETER num_ctx 4096\n'
        'PARAMETER stop "<|im_end|>"\n'
        'PARAMETER stop <|im_start|>\n'
        'PARAMETER penalize_newline false\n'
        'LICENSE """Apache-2.0"""\n'
        'MESSAGE user "Hi"\n'
        'MESSAGE assistant Hello there\n'
    )

    assert spec.from_ == "./model.gguf"
    assert spec.template == "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    assert spec.system == "Be brief."
    assert spec.parameters == {
        "temperature": 0.2,
        "num_ctx": 4096,
        "stop": ["<|im_end|>", "<|im_start|>"],
        "penalize_newline": False,
    }
    assert spec.license == "Apache-2.0"
    assert spec.messages == ({"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there"})


def test_parse_modelfile_multiline_system_and_empty_text():
    assert parse_modelfile('SYSTEM """line one\nline two"""').system == "line one\nline two"
    assert parse_modelfile("") == parse_modelfile("# only a comment\n\n")


@pytest.mark.parametrize(
    "text, message",
    [
        ("PARAMETER unknown_knob 1", "unknown PARAMETER"),
        ("PARAMETER num_ctx lots", "bad value"),
        ("PARAMETER penalize_newline maybe", "bad value"),
        ('SYSTEM """never closed', "unclosed"),
        ("ADAPTER ./lora.gguf", "ADAPTER"),
        ("RUN rm -rf /", "unknown Modelfile instruction"),
        ("MESSAGE tool hi", "MESSAGE role"),
    ],
)
def test_parse_modelfile_refuses_what_ollama_would_not_take(text, message):
    with pytest.raises(ModelfileError, match=message):
        parse_modelfile(text)


SCHEMA = {"type": "object", "properties": {"score": {"type": "integer"}}, "required": ["score"]}


@pytest.mark.parametrize(
    "content, done_reason, schema, problem",
    [
        ("Hello.", "stop", None, None),
        ('{"score": 3}', "stop", SCHEMA, None),
        ("Hello and on and on", "length", None, "did not finish"),
        ("Hello.", None, None, "did not finish"),
        ("  \n", "stop", None, "empty reply"),
        ("score: 3", "stop", SCHEMA, "not JSON"),
        ('{"score": "three"}', "stop", SCHEMA, "does not match the schema"),
        ("{}", "stop", SCHEMA, "does not match the schema"),
    ],
)
def test_smoke_verdicts(content, done_reason, schema, problem):
    verdict = _smoke_problem(content, done_reason, schema)
    if problem is None:
        assert verdict is None
    else:
        assert verdict is not None and problem in verdict


T0 = datetime(2026, 11, 1, tzinfo=UTC)


def _versions(*entries: tuple[str, str, int]) -> dict[str, tuple[str, datetime]]:
    return {tag: (digest, T0 + timedelta(days=day)) for tag, digest, day in entries}


def test_latest_version_names_the_newest_tag_with_the_same_digest():
    versions = _versions(("r1", "a", 1), ("r2", "b", 2), ("r3", "b", 3), ("latest", "b", 4))
    assert _latest_version(versions) == OllamaModelVersion(tag="r3", digest="b")
    assert _latest_version(_versions(("latest", "x", 1))) == OllamaModelVersion(tag=None, digest="x")
    assert _latest_version(_versions(("r1", "a", 1))) is None


def test_previous_tag_from_host_order_and_from_history():
    versions = _versions(("r1", "a", 1), ("r2", "b", 2), ("r3", "c", 3), ("latest", "c", 4))
    current = OllamaModelVersion(tag="r3", digest="c")

    assert _previous_tag(versions, current, None) == "r2"
    assert _previous_tag(versions, OllamaModelVersion(tag="r2", digest="b"), None) == "r1"
    assert _previous_tag(versions, current, ["r3", "r1", "gone", "r2", "r3"]) == "r2"
    assert _previous_tag(versions, current, ["r2", "gone", "r3"]) == "r2"
    with pytest.raises(OllamaDeployError, match="no deployment before"):
        _previous_tag(versions, OllamaModelVersion(tag="r1", digest="a"), None)
    with pytest.raises(OllamaDeployError, match="no deployed tag"):
        _previous_tag(versions, OllamaModelVersion(tag=None, digest="zzz"), None)


def test_previous_tag_skips_redeployments_of_the_same_model():
    versions = _versions(("r1", "a", 1), ("r2", "b", 2), ("r3", "b", 3), ("latest", "b", 4))
    assert _previous_tag(versions, OllamaModelVersion(tag="r3", digest="b"), None) == "r1"


@pytest.mark.parametrize(
    "host, url",
    [
        ("gpu-box", "http://gpu-box:11434"),
        ("gpu-box:8080", "http://gpu-box:8080"),
        ("http://gpu-box:11434/", "http://gpu-box:11434"),
        ("https://ollama.example.com", "https://ollama.example.com"),
    ],
)
def test_base_url_defaults_like_the_client(host, url):
    assert _base_url(host) == url
