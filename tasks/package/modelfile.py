"""The Ollama Modelfile, derived from the model's chat template, and the template consistency check.

Ollama templates are Go templates; distillery writes them for the chat-template families it knows
(ChatML, Llama 3) and renders them itself with :func:`render_modelfile_template`, so the check that
the training template, the GGUF's template and the Modelfile agree token for token is independent
of any Ollama binary.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

CHATML = ("{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
          "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}"
          "<|im_start|>assistant\n")
LLAMA3 = ("{{- if .System }}<|start_header_id|>system<|end_header_id|>\n\n{{ .System }}<|eot_id|>{{ end }}"
          "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
          "<|start_header_id|>assistant<|end_header_id|>\n\n")

FAMILIES = {"chatml": (CHATML, ["<|im_end|>", "<|im_start|>"]), "llama3": (LLAMA3, ["<|eot_id|>", "<|start_header_id|>"])}


class TemplateMismatch(ValueError):
    """Two templates render the same conversation differently."""


def template_family(chat_template: str) -> str:
    if "<|im_start|>" in chat_template:
        return "chatml"
    if "<|start_header_id|>" in chat_template:
        return "llama3"
    raise ValueError("unsupported chat template family (known: ChatML, Llama 3); add it to FAMILIES")


@dataclass(frozen=True)
class ModelfileSpec:
    gguf_name: str
    template: str
    stops: list[str]
    system: str
    temperature: float
    num_ctx: int
    num_predict: int
    repeat_penalty: float

    def render(self) -> str:
        lines = [f"FROM ./{self.gguf_name}", f'TEMPLATE """{self.template}"""']
        if self.system:
            lines.append(f'SYSTEM """{self.system}"""')
        lines += [f"PARAMETER stop {json.dumps(stop)}" for stop in self.stops]
        lines += [f"PARAMETER temperature {self.temperature}", f"PARAMETER num_ctx {self.num_ctx}",
                  f"PARAMETER num_predict {self.num_predict}", f"PARAMETER repeat_penalty {self.repeat_penalty}"]
        return "\n".join(lines) + "\n"


def modelfile_for(chat_template: str, gguf_name: str, system: str, temperature: float, num_ctx: int,
                  num_predict: int, repeat_penalty: float) -> ModelfileSpec:
    template, stops = FAMILIES[template_family(chat_template)]
    return ModelfileSpec(gguf_name, template, list(stops), system, temperature, num_ctx, num_predict, repeat_penalty)


def render_modelfile_template(template: str, system: str, messages: list[dict[str, str]]) -> str:
    """Render the Go-template subset distillery writes: if .System, range .Messages, .Role, .Content."""
    def render(fragment: str, scope: dict) -> str:
        out = ""
        pos = 0
        token = re.compile(r"\{\{-?\s*(.*?)\s*-?\}\}", re.DOTALL)
        while True:
            match = token.search(fragment, pos)
            if not match:
                return out + fragment[pos:]
            text = fragment[pos : match.start()]
            if match.group(0).startswith("{{-"):
                text = text.rstrip()
            out += text
            expr = match.group(1)
            if expr.startswith(("if ", "range ")):
                body, end = _block(fragment, match.end(), token)
                if expr.startswith("if "):
                    if scope.get(expr[3:].strip().lstrip(".")):
                        out += render(body, scope)
                else:
                    for item in scope.get(expr[6:].strip().lstrip("."), []):
                        out += render(body, {**scope, **item})
                pos = end
            else:
                out += str(scope.get(expr.lstrip("."), ""))
                pos = match.end()

    def _block(fragment: str, start: int, token: re.Pattern) -> tuple[str, int]:
        depth, pos = 1, start
        while True:
            match = token.search(fragment, pos)
            if match is None:
                raise ValueError("unterminated block in template")
            expr = match.group(1)
            if expr.startswith(("if ", "range ")):
                depth += 1
            elif expr == "end":
                depth -= 1
                if depth == 0:
                    return fragment[start : match.start()], match.end()
            pos = match.end()

    scope = {"System": system, "Messages": [{"Role": m["role"], "Content": m["content"]} for m in messages]}
    return render(template, scope)


GOLDEN_CONVERSATIONS = [
    [{"role": "system", "content": "You are a careful assistant."}, {"role": "user", "content": "What is a p-value?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Define variance."},
     {"role": "assistant", "content": "The expected squared deviation from the mean."},
     {"role": "user", "content": "And standard deviation? Ünïcödé ✓"}],
]


def first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def check_templates(tokenize, renderings: dict[str, list[str]]) -> None:
    """Every rendering of each golden conversation must tokenize to the same ids.

    ``renderings`` maps a template's name (training, gguf, modelfile) to its rendered texts.
    Raises :class:`TemplateMismatch` naming the template that differs, the conversation and the
    first differing token position with the text around it.
    """
    names = list(renderings)
    reference = names[0]
    for index in range(len(renderings[reference])):
        expected_text = renderings[reference][index]
        expected = tokenize(expected_text)
        for name in names[1:]:
            text = renderings[name][index]
            got = tokenize(text)
            if got != expected:
                at = first_difference(expected, got)
                raise TemplateMismatch(
                    f"the {name} template renders golden conversation {index} differently from the {reference} "
                    f"template at token {at}: {reference}={expected_text[max(0, at - 20):][:80]!r} vs "
                    f"{name}={text[max(0, at - 20):][:80]!r}")
