"""An in-process llama.cpp model: the embedded default teacher, and how GGUF students are run."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from tasks.core.hashing import sha256_file_cached
from tasks.core.settings import get_settings
from tasks.teacher.base import Completion, CompletionRequest

# llama.cpp turns a string's maxLength into nested grammar rules and its parser recurses once per
# character: a maxLength of ~1200 overflows the stack and kills the process (seen with 0.3.36; 800
# works, in a worker thread too: tests/integration/test_teacher_llama.py). Longer limits are left to
# pydantic's validation of the output.
GRAMMAR_MAX_REPEAT = 800

# llama-cpp-python's schema converter ignores a number's minimum/maximum, so a small model could write
# a rating of 15 on a 0-10 scale or a score of 5 on a 0-1 scale: well-formed JSON that fails the
# schema. A bounded number is decoded as one of its values instead: an integer as itself, any other
# number on a grid of 1/100 (what the labels are rounded to). An enum is understood by every
# converter (Ollama's included), so the same schema constrains the served model.
NUMBER_DECIMALS = 2
MAX_ENUM_VALUES = 1001


log = logging.getLogger("distillery.teacher")

# What llama.cpp's system info says of a build with its AMX kernels (a -march=native build on an Intel
# CPU with AMX, Sapphire Rapids and later). They crashed the process at the first decode of every model
# here (llama.cpp issue 20824); `make install` builds without them.
AMX_BUILD_MARK = b"AMX_INT8 = 1"


@lru_cache(maxsize=1)
def warn_if_amx_build() -> bool:
    """Log a warning, once, when the installed llama-cpp-python has llama.cpp's AMX kernels."""
    import llama_cpp

    if AMX_BUILD_MARK not in llama_cpp.llama_print_system_info():
        return False
    log.warning("this llama-cpp-python was built with llama.cpp's AMX kernels, which can crash the process "
                "(a segmentation fault) at the first decode: reinstall it built with "
                "CMAKE_ARGS=-DGGML_NATIVE=OFF, as `make install` does")
    return True


def load_gguf(path: Path, n_ctx: int, logits_all: bool = False, n_threads: int | None = None) -> Any:
    """A GGUF in llama.cpp, quiet and seeded, generating with ``n_threads`` (default: the
    ``llama_threads`` setting, the physical cores) rather than llama-cpp-python's half of the CPUs."""
    from llama_cpp import Llama

    warn_if_amx_build()
    return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or get_settings().generation_threads,
                 verbose=False, seed=0, logits_all=logits_all)


def _bounded_values(schema: dict[str, Any]) -> list[int | float] | None:
    """The values a bounded integer or number may take, or None (unbounded, or too many to list)."""
    kind, low, high = schema.get("type"), schema.get("minimum"), schema.get("maximum")
    if kind not in ("integer", "number") or low is None or high is None or "enum" in schema:
        return None
    step = 1 if kind == "integer" else 10 ** -NUMBER_DECIMALS
    first, last = math.ceil(low / step - 1e-9), math.floor(high / step + 1e-9)
    if last < first or last - first + 1 > MAX_ENUM_VALUES:
        return None
    if kind == "integer":
        return list(range(first, last + 1))
    grid = [round(i * step, NUMBER_DECIMALS) for i in range(first, last + 1)]
    whole = [int(v) for v in grid if v == int(v)]  # "1" as well as "1.0"
    return whole + grid


def grammar_safe(schema: Any) -> Any:
    """A copy of a JSON schema that llama.cpp's grammar can enforce whole.

    Repetition limits over :data:`GRAMMAR_MAX_REPEAT` are dropped (left to validation), and a number
    with both bounds becomes an ``enum`` of its values (see :data:`NUMBER_DECIMALS`). The bounds stay:
    whatever the copy accepts, the original accepts too. ``None`` (no schema) stays ``None``.
    """
    if isinstance(schema, dict):
        out = {}
        for key, value in schema.items():
            if key in ("maxLength", "minLength", "maxItems", "minItems") and isinstance(value, int) \
                    and value > GRAMMAR_MAX_REPEAT:
                continue
            out[key] = grammar_safe(value)
        values = _bounded_values(out)
        if values is not None:
            out["enum"] = values
        return out
    if isinstance(schema, list):
        return [grammar_safe(item) for item in schema]
    return schema


# llama-cpp-python's converter lets a JSON string hold raw control characters (its `char` rule is
# [^"\\]), which JSON forbids: a model that writes a newline inside a string produces an "invalid
# JSON: control character" reply. llama.cpp's own converter (Ollama's) excludes them; so does ours.
_LOOSE_CHAR = r'char ::= [^"\\] |'
_JSON_CHAR = r'char ::= [^"\\\x7F\x00-\x1F] |'


@lru_cache(maxsize=64)
def _json_grammar(schema_json: str) -> Any:
    from llama_cpp.llama_grammar import LlamaGrammar, json_schema_to_gbnf

    gbnf = json_schema_to_gbnf(schema_json).replace(_LOOSE_CHAR, _JSON_CHAR)
    return LlamaGrammar.from_string(gbnf, verbose=False)


def json_grammar(schema: dict[str, Any]) -> Any:
    """The llama.cpp grammar of JSON that follows ``schema`` (made :func:`grammar_safe`), strings as JSON
    allows them: what the local teacher and validation decode with."""
    return _json_grammar(json.dumps(grammar_safe(schema)))  # key order kept: it is the order of the fields


# Part of the local teacher's request-cache scope: bump it when how outputs are decoded changes (the
# JSON grammar), so a cached answer is never one the current grammar could not have produced.
DECODING = "json-grammar-3"


class TopLogprobs:
    """A llama-cpp-python logits processor that reads, at each generated position, the ``k`` likeliest
    tokens' log-probabilities (of the model's own distribution, before any sampling setting) and leaves
    the logits as they are.

    llama-cpp-python's own ``logprobs`` need an instance that keeps the logits of every prompt position
    (``logits_all``): the vocabulary head runs for each prompt token and they are all stored (for Qwen's
    152k-token vocabulary, 0.6 MB a token: 1.2 GB for a 2k context). Reading them here, where the
    sampler sees the last position's logits, needs neither.
    """

    def __init__(self, llm: Any, k: int):
        self.llm, self.k = llm, k
        self.positions: list[dict[str, float]] = []

    def __call__(self, input_ids: Any, logits: Any) -> Any:
        import numpy as np
        from llama_cpp import Llama

        logprobs = Llama.logits_to_logprobs(logits)  # what llama-cpp-python's own logprobs are made with
        k = min(self.k, len(logprobs))
        top = np.argpartition(-logprobs, k - 1)[:k]
        alternatives: dict[str, float] = {}
        for token in top[np.argsort(-logprobs[top], kind="stable")]:
            text = self.llm.detokenize([int(token)]).decode("utf-8", errors="ignore")
            alternatives.setdefault(text, float(logprobs[token]))  # the likelier of two same texts
        self.positions.append(alternatives)
        return logits


PREFIX_CHUNK = 64


class CanonicalPrefix:
    """Prompt evaluation that keeps what a new prompt shares with the previous one and still reads the same
    whatever was asked before it.

    llama-cpp-python keeps the last request's tokens in the context and evaluates only the part of a new
    prompt they do not share; but where a prompt is cut into evaluation batches changes llama.cpp's
    arithmetic (Qwen2.5 1.5B: a log-probability by up to 0.19, a judge's grade by up to 0.03), so a
    reading would depend on the request before it.
    Here every prompt is cut the same way whatever came before: a chunk ends where a control token (a chat
    template's message start) begins the next, and after ``chunk`` tokens; only whole chunks the two
    prompts share are kept, and the rest is evaluated chunk by chunk. A prompt is then evaluated in the
    same batches from the same state in any request order, or on a fresh instance: the same bits. Chunks
    of 64 tokens evaluate about as fast as one batch on a CPU (Qwen2.5 1.5B, 2 cores: 63-65 vs 66 prompt
    tokens/s; 32 tokens: 62).
    """

    def __init__(self, llm: Any, chunk: int = PREFIX_CHUNK):
        import llama_cpp

        self.llm, self.chunk = llm, chunk
        self._eval = llm.eval
        self._is_control = lambda token: llama_cpp.llama_vocab_is_control(llm._model.vocab, token)
        self.whole_to = 0  # the context's positions [0, whole_to) hold whole chunks of the last prompt
        self.armed = False
        self.kept = self.evaluated = 0  # prompt tokens kept from the previous request, and evaluated
        self.last_kept = 0  # of the last request's prompt
        llm.eval = self.eval

    def chunk_ends(self, tokens: list[int]) -> list[int]:
        """Where the chunks of ``tokens`` end; the last one is ``len(tokens)``."""
        ends, start = [], 0
        for i in range(1, len(tokens) + 1):
            if i == len(tokens) or i - start == self.chunk or self._is_control(tokens[i]):
                ends.append(i)
                start = i
        return ends

    def eval(self, tokens: Any) -> None:
        """llama-cpp-python's ``eval``: a request's prompt (the first call in :meth:`request`) in chunks,
        every later call (a generated token) as it is."""
        if not self.armed:
            return self._eval(tokens)
        self.armed = False
        llm = self.llm
        shared = llm.n_tokens  # the prompt's first tokens llama-cpp-python found in the context
        prompt = [int(t) for t in llm.input_ids[:shared]] + [int(t) for t in tokens]
        ends = self.chunk_ends(prompt)
        # The chunk ending at the prompt's last token is whole only if it ended by length: a longer prompt
        # would carry it on. A chunk ended by the next token is shared only if that token is (``< shared``).
        whole = [end for i, end in enumerate(ends)
                 if end < len(prompt) or end - (ends[i - 1] if i else 0) == self.chunk]
        keep = max((end for end in whole if end < shared and end <= self.whole_to), default=0)
        llm.n_tokens = keep
        self.whole_to = keep  # until the chunks after it are in
        self.kept += keep
        self.last_kept = keep
        self.evaluated += len(prompt) - keep
        start = keep
        for end in ends:
            if end > keep:
                self._eval(prompt[start:end])
                start = end
        self.whole_to = max(whole, default=0)

    @contextmanager
    def request(self) -> Iterator[None]:
        """Within it, the first evaluation is a request's prompt."""
        self.armed = True
        self.last_kept = 0
        try:
            yield
        finally:
            self.armed = False


class LlamaCppChat:
    """A GGUF model loaded with llama-cpp-python. Calls are serialized: one context, one thread."""

    provider = "llama_cpp"
    # More requests in flight would only wait for the one context, in an order that changes how much of
    # the last prompt is kept (not what is read: CanonicalPrefix).
    max_in_flight = 1

    def __init__(self, model_path: Path, n_ctx: int = 2048, n_threads: int | None = None, model: str | None = None):
        self.model_path = Path(model_path)
        self.model = model or self.model_path.name
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self._llm: Any = None
        self._prefix: CanonicalPrefix | None = None
        self._lock = threading.Lock()

    @property
    def cache_scope(self) -> str:
        """The GGUF's content, not its name: a file re-downloaded or re-quantized under the same name is
        another model, and its answers must not come from the old file's cache entries (the hash is the
        one the stage cache keys computed, once per process and file version), and how JSON is decoded:
        answers constrained by an older grammar are not reused (:data:`DECODING`)."""
        return f"llama_cpp:{sha256_file_cached(self.model_path)[:16]}:{DECODING}"

    def _load(self) -> Any:
        if self._llm is None:
            self._llm = load_gguf(self.model_path, self.n_ctx, n_threads=self.n_threads)
            self._prefix = CanonicalPrefix(self._llm)
        return self._llm

    def complete(self, request: CompletionRequest) -> Completion:
        with self._lock:
            llm = self._load()
            kwargs: dict[str, Any] = {
                "messages": [m.model_dump() for m in request.messages],
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
                "seed": request.seed,
            }
            if request.json_schema is not None:
                kwargs["grammar"] = json_grammar(request.json_schema)
            if request.stop:
                kwargs["stop"] = list(request.stop)
            reader = None
            if request.top_logprobs:
                from llama_cpp import LogitsProcessorList

                reader = TopLogprobs(llm, request.top_logprobs)
                kwargs["logits_processor"] = LogitsProcessorList([reader])
            start = time.perf_counter()
            with self._prefix.request():
                out = llm.create_chat_completion(**kwargs)
            latency = time.perf_counter() - start
            kept = self._prefix.last_kept
        choice = out["choices"][0]
        usage = out.get("usage") or {}
        generated = usage.get("completion_tokens", 0)
        return Completion(
            text=choice["message"].get("content") or "",
            prompt_tokens=usage.get("prompt_tokens", 0),
            cached_prompt_tokens=kept,
            completion_tokens=generated,
            finish_reason=choice.get("finish_reason"),
            latency_s=latency,
            # One reading per sampled token; a token sampled and then cut by a stop string is not in the text.
            top_logprobs=tuple(reader.positions[:generated]) if reader is not None else (),
        )

    def close(self) -> None:
        with self._lock:
            if self._llm is not None:
                self._llm.close()
            self._llm = None
