import pytest

from tasks.core.recipe import PackageConfig
from tasks.deploy.ollama import parse_modelfile
from tasks.package.modelfile import (
    CHATML,
    GOLDEN_CONVERSATIONS,
    TemplateMismatch,
    check_templates,
    modelfile_for,
    render_modelfile_template,
    template_family,
)

SMOL_TEMPLATE = ("{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
                 "{{ '<|im_start|>system\nYou are a helpful AI assistant<|im_end|>\n' }}{% endif %}"
                 "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
                 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}")


def render_hf(conversation):
    from jinja2 import Template

    return Template(SMOL_TEMPLATE).render(messages=conversation, add_generation_prompt=True)


def test_family_detection():
    assert template_family(SMOL_TEMPLATE) == "chatml"
    assert template_family("<|start_header_id|>{{ x }}") == "llama3"
    with pytest.raises(ValueError, match="unsupported"):
        template_family("{{ messages }}")


def test_modelfile_template_renders_like_the_chat_template():
    for conversation in GOLDEN_CONVERSATIONS:
        system, rest = conversation[0]["content"], conversation[1:]
        assert render_modelfile_template(CHATML, system, rest) == render_hf(conversation)


def test_modelfile_round_trip():
    """What package writes, deploy reads back (its parser builds Ollama's create request)."""
    spec = modelfile_for(SMOL_TEMPLATE, "model-q4_k_m.gguf", "Be brief.", 0.2, 2048, 512, 1.1)
    parsed = parse_modelfile(spec.render())
    assert parsed.from_ == "./model-q4_k_m.gguf"
    assert parsed.template == CHATML
    assert parsed.system == "Be brief."
    assert parsed.parameters == {"stop": ["<|im_end|>", "<|im_start|>"], "temperature": 0.2, "num_ctx": 2048,
                                    "num_predict": 512, "repeat_penalty": 1.1}


def test_the_modelfile_always_names_the_repeat_penalty_validation_used():
    """Left out, Ollama applies its own default (1.1) and serves a model decoded unlike the validated one."""
    config = PackageConfig()
    spec = modelfile_for(SMOL_TEMPLATE, "model-q4_k_m.gguf", "", config.temperature, config.num_ctx,
                         config.num_predict, config.repeat_penalty)
    assert parse_modelfile(spec.render()).parameters["repeat_penalty"] == 1.0


def test_a_wrong_template_is_caught_and_named():
    wrong = CHATML.replace("<|im_start|>{{ .Role }}\n", "<|im_start|>{{ .Role }}: ")
    renderings = {"training": [render_hf(c) for c in GOLDEN_CONVERSATIONS],
                  "modelfile": [render_modelfile_template(wrong, c[0]["content"], c[1:]) for c in GOLDEN_CONVERSATIONS]}
    with pytest.raises(TemplateMismatch, match="modelfile template renders golden conversation 0"):
        check_templates(lambda text: list(text.encode()), renderings)


def test_identical_renderings_pass():
    texts = [render_hf(c) for c in GOLDEN_CONVERSATIONS]
    check_templates(lambda text: list(text.encode()), {"training": texts, "gguf": list(texts)})
