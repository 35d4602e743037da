"""The package stage's stop check on a real GGUF through llama.cpp (the packaged SmolLM2-135M)."""

from __future__ import annotations

import pytest

from tasks.core.models import resolve_gguf
from tasks.package.build import gguf_metadata
from tasks.package.modelfile import modelfile_for
from tasks.package.tasks import smoke_generate

pytestmark = pytest.mark.integration


def test_generation_stops_at_the_modelfiles_stop_token_and_a_wrong_stop_list_is_caught():
    gguf = resolve_gguf("smollm2-135m")
    chat_template = gguf_metadata(gguf)["tokenizer.chat_template"]
    spec = modelfile_for(chat_template, gguf.name, "You are helpful.", 0.2, 2048, 512, 1.0)
    smoke = smoke_generate(gguf, spec.system, spec.stops)
    assert smoke["stop_token"] == "<|im_end|>" and smoke["golden_prompts"] == 2
    assert 0 <= smoke["stopped_at_stop_token"] <= 2

    # A Modelfile whose stops miss the model's end-of-turn token would let Ollama run past every answer.
    with pytest.raises(ValueError, match=r"ends a turn with '<\|im_end\|>' .* not among the Modelfile's stop"):
        smoke_generate(gguf, spec.system, ["<|eot_id|>", "<|start_header_id|>"])
