"""An OpenAI-compatible chat server for the teacher's tests and benchmark, with scripted faults.

It binds 127.0.0.1 on an ephemeral port and serves ``POST /v1/chat/completions``:

* with ``response_format`` ``json_schema`` (or a ``json_object`` with a ``schema``) it answers an object
  that follows the schema, deterministic from the prompt; otherwise a short text, also deterministic;
* ``usage`` counts words, so budgets and token limits move; ``logprobs`` (with ``top_logprobs``) are
  given a token per word, each token the most likely of its alternatives;
* a prompt cache as OpenAI's: a prompt that shares at least ``prompt_cache_min_tokens`` (1,024) tokens
  with one answered before reports the shared part, in steps of 128 tokens, as
  ``usage.prompt_tokens_details.cached_tokens``;
* ``latency_s`` delays every answer; ``rate_limit_rpm`` enforces a token-bucket limit like a provider's
  (429 with ``Retry-After`` and ``retry-after-ms``; refused requests do not use the bucket);
* ``api_key`` makes it check ``Authorization: Bearer ...`` (401 that echoes part of the key, as OpenAI does);
* ``reasoning_model`` makes it refuse ``max_tokens`` as OpenAI's reasoning models do (400, asking for
  ``max_completion_tokens``), and ``logprobs`` (400 ``unsupported_parameter``).

Faults are scripted: :meth:`OpenAIServer.script` queues faults for the next requests, and
:meth:`OpenAIServer.on_prompt` for the next requests whose conversation contains a text. Kinds: 429 with
Retry-After, quota 429 (``insufficient_quota``), 5xx, a hang (held until :meth:`release_hangs` or
``hang_s``, then the connection drops), malformed JSON content, JSON that violates the schema, output cut
at ``max_tokens``, a body that is not JSON, an envelope without choices. Every request is logged in
:attr:`OpenAIServer.log`; :attr:`requests` counts arrivals, :attr:`completions` answers with status 200.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal, Self

FaultKind = Literal["ok", "rate_limit", "quota", "server_error", "hang", "malformed_json", "schema_violation",
                    "truncated", "bad_body", "no_choices"]


@dataclass(frozen=True)
class Fault:
    """What the server does with one request instead of answering it normally."""

    kind: FaultKind
    retry_after: str | None = None
    status: int = 503
    delay_s: float = 0.0

    @classmethod
    def rate_limit(cls, retry_after: str | None = "1") -> Fault:
        return cls("rate_limit", retry_after=retry_after, status=429)

    @classmethod
    def quota(cls) -> Fault:
        return cls("quota", status=429)

    @classmethod
    def server_error(cls, status: int = 503, retry_after: str | None = None) -> Fault:
        return cls("server_error", status=status, retry_after=retry_after)

    @classmethod
    def hang(cls) -> Fault:
        return cls("hang")


OK = Fault("ok")


@dataclass
class RequestRecord:
    index: int
    arrived: float
    prompt: str
    fault: str = "ok"
    status: int | None = None
    finished: float | None = None
    authorized: bool = True
    body: dict[str, Any] = field(default_factory=dict, repr=False)


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def instance_for(schema: dict[str, Any], seed: str, root: dict[str, Any] | None = None) -> Any:
    """A value that follows a JSON schema (the subset pydantic emits), deterministic from ``seed``."""
    root = root if root is not None else schema
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return instance_for(target, seed, root)
    if "const" in schema:
        return schema["const"]
    if "enum" in schema:
        return schema["enum"][int(seed[:8], 16) % len(schema["enum"])]
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            options = [o for o in schema[combinator] if o.get("type") != "null"] or schema[combinator]
            return instance_for(options[0], seed, root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    number = int(seed[:8], 16)
    if kind == "object":
        props = schema.get("properties", {})
        return {name: instance_for(sub, _digest([seed, name]), root) for name, sub in props.items()}
    if kind == "array":
        count = max(1, int(schema.get("minItems", 1)))
        if "maxItems" in schema:
            count = min(count, int(schema["maxItems"]))
        return [instance_for(schema.get("items", {}), _digest([seed, i]), root) for i in range(count)]
    if kind == "string":
        text = f"{schema.get('title', 'text').lower()} {seed[:8]} {seed[8:16]} {seed[16:24]}"  # curate keeps it
        text = text[: int(schema.get("maxLength", len(text)))]
        return text.ljust(int(schema.get("minLength", 0)), "x")
    if kind in ("integer", "number"):
        low = schema.get("minimum", schema.get("exclusiveMinimum", 0) + (1 if "exclusiveMinimum" in schema else 0))
        high = schema.get("maximum", schema.get("exclusiveMaximum", low + 10) - (1 if "exclusiveMaximum" in schema else 0))
        low, high = math.ceil(low), math.floor(high)
        value = low + number % max(1, high - low + 1)
        return int(value) if kind == "integer" else float(value)
    if kind == "boolean":
        return number % 2 == 0
    return None


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return (fmt.get("json_schema") or {}).get("schema") or {}
    if fmt.get("type") == "json_object":
        return fmt.get("schema") or {}
    return None


def _logprobs(content: str, top: int) -> dict[str, Any]:
    """OpenAI's ``logprobs`` object for a reply, a token per word: each token and, when asked, ``top``
    alternatives with deterministic log-probabilities (the token itself the most likely)."""
    positions = []
    for i, token in enumerate(content.split(" ")):
        token = token if i == 0 else f" {token}"
        logprob = -0.05 - int(_digest(token)[:2], 16) / 1000
        alternatives = [(token, logprob)] + [(f" alt{j}", logprob - j) for j in range(1, top)]
        positions.append({"token": token, "logprob": logprob, "bytes": list(token.encode()),
                          "top_logprobs": [{"token": t, "logprob": lp, "bytes": list(t.encode())}
                                           for t, lp in alternatives[:top]]})
    return {"content": positions, "refusal": None}


def _words(text: str) -> int:
    return len(text.split())


def _prompt_tokens(messages: list[dict[str, Any]]) -> tuple[str, ...]:
    """The fake's tokens of a prompt: one a word, and four around each message."""
    tokens: list[str] = []
    for m in messages:
        tokens += ["<|start|>", str(m.get("role")), *str(m.get("content", "")).split(), "<|end|>", "\n"]
    return tuple(tokens)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body leave in two writes: without this, Nagle + delayed ACK add ~40 ms per answer.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, payload: Any, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def _error(self, status: int, message: str, type_: str, code: str | None,
               headers: dict[str, str] | None = None, param: str | None = None) -> None:
        self._send(status, {"error": {"message": message, "type": type_, "code": code, "param": param}}, headers)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, {"object": "list", "data": [{"id": "fake-teacher", "object": "model"}]})
        else:
            self._error(404, "not found", "invalid_request_error", None)

    def do_POST(self) -> None:
        owner = self.server.owner
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if not self.path.rstrip("/").endswith("/chat/completions"):
            self._error(404, "not found", "invalid_request_error", None)
            return
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            self._error(400, "body is not JSON", "invalid_request_error", None)
            return
        record, fault = owner._arrive(body, self.headers.get("Authorization", ""))
        try:
            self._answer(owner, body, record, fault)
        finally:
            record.finished = time.monotonic()

    def _answer(self, owner: OpenAIServer, body: dict[str, Any], record: RequestRecord, fault: Fault) -> None:
        if not record.authorized:
            presented = self.headers.get("Authorization", "").removeprefix("Bearer ")
            record.status = 401
            self._error(401, f"Incorrect API key provided: {presented[:6]}***{presented[-4:]}. You can find "
                        "your API key at https://platform.openai.com/account/api-keys.",
                        "invalid_request_error", "invalid_api_key")
            return
        if owner.reasoning_model and "max_tokens" in body:
            record.status = 400  # what OpenAI's o-series and gpt-5 models answer
            self._error(400, "Unsupported parameter: 'max_tokens' is not supported with this model. "
                        "Use 'max_completion_tokens' instead.", "invalid_request_error", "unsupported_parameter",
                        param="max_tokens")
            return
        if owner.reasoning_model and body.get("logprobs"):
            record.status = 400
            self._error(400, "Unsupported parameter: 'logprobs' is not supported with this model.",
                        "invalid_request_error", "unsupported_parameter", param="logprobs")
            return
        wait = owner._take_rate_token()
        if wait is not None:
            record.status, record.fault = 429, "enforced_rate_limit"
            self._error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded",
                        {"Retry-After": str(max(1, math.ceil(wait))), "retry-after-ms": str(int(wait * 1000) + 1)})
            return
        if fault.kind == "hang":
            owner._release.wait(owner.hang_s)
            record.status = None
            self.close_connection = True
            return
        if fault.kind == "rate_limit":
            record.status = 429
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._error(429, "Rate limit reached for requests", "requests", "rate_limit_exceeded", headers)
            return
        if fault.kind == "quota":
            record.status = 429
            self._error(429, "You exceeded your current quota, please check your plan and billing details.",
                        "insufficient_quota", "insufficient_quota")
            return
        if fault.kind == "server_error":
            record.status = fault.status
            headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            self._error(fault.status, "The server had an error while processing your request.", "server_error",
                        None, headers)
            return
        delay = owner.latency_s + fault.delay_s
        if delay:
            time.sleep(delay)
        if fault.kind == "bad_body":
            record.status = 200
            self._send(200, None, raw=b"<html>upstream error</html>")
            return
        content, finish = self._content(body, fault)
        prompt = _prompt_tokens(body.get("messages", []))
        prompt_tokens, cached_tokens = len(prompt), owner._prompt_cache(prompt)
        payload: dict[str, Any] = {
            "id": f"chatcmpl-{record.index}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", "fake-teacher"),
            "choices": [] if fault.kind == "no_choices" else [
                {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": finish,
                 "logprobs": _logprobs(content, int(body.get("top_logprobs") or 0)) if body.get("logprobs") else None}
            ],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": max(1, _words(content)),
                      "total_tokens": prompt_tokens + max(1, _words(content)),
                      "prompt_tokens_details": {"cached_tokens": cached_tokens}},
        }
        record.status = 200
        self._send(200, payload)
        with owner._lock:
            owner.completions += 1

    def _content(self, body: dict[str, Any], fault: Fault) -> tuple[str, str]:
        seed = _digest(body.get("messages", []))
        schema = _schema_of(body)
        if fault.kind == "malformed_json":
            return '{"answer": "unterminated', "stop"
        if schema is None:
            last = str((body.get("messages") or [{}])[-1].get("content", ""))
            text = f"Answer {seed[:8]}: {last[:60]}"
        elif fault.kind == "schema_violation":
            text = json.dumps({"unexpected": seed[:8]})
        else:
            text = json.dumps(instance_for(schema, seed))
        if fault.kind == "truncated":
            return text[: max(1, len(text) // 2)], "length"
        return text, "stop"


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    # socketserver's default backlog (5) drops the SYNs of a burst of new connections: 1 s retransmits.
    request_queue_size = 256
    owner: OpenAIServer


class OpenAIServer:
    """The server; use it as a context manager.

    Args:
        latency_s: delay before every answer (not before errors).
        rate_limit_rpm: enforced requests per minute (token bucket); ``None``: unlimited.
        rate_limit_burst: the bucket's size (default: one second's worth, at least 1).
        api_key: the key to demand; ``None``: any.
        hang_s: the longest a hung request is held before its connection drops.
        reasoning_model: refuse ``max_tokens`` and ``logprobs`` (HTTP 400 ``unsupported_parameter``) and accept only
            ``max_completion_tokens``, as OpenAI's reasoning models do.
        prompt_cache_min_tokens: the shortest shared prefix the prompt cache serves (it then grows in steps of
            ``prompt_cache_step``); ``None``: no prompt cache.
    """

    def __init__(self, latency_s: float = 0.0, rate_limit_rpm: float | None = None,
                 rate_limit_burst: float | None = None, api_key: str | None = None, hang_s: float = 30.0,
                 reasoning_model: bool = False, prompt_cache_min_tokens: int | None = 1024,
                 prompt_cache_step: int = 128):
        self.prompt_cache_min_tokens, self.prompt_cache_step = prompt_cache_min_tokens, prompt_cache_step
        self._prompts: deque[tuple[str, ...]] = deque(maxlen=512)  # answered prompts, newest last
        self.latency_s = latency_s
        self.reasoning_model = reasoning_model
        self.api_key = api_key
        self.hang_s = hang_s
        self.log: list[RequestRecord] = []
        self.completions = 0
        self._lock = threading.Lock()
        self._script: deque[Fault] = deque()
        self._prompt_faults: list[tuple[str, deque[Fault]]] = []
        self._release = threading.Event()
        self._arrived = threading.Condition(self._lock)
        self.set_rate_limit(rate_limit_rpm, rate_limit_burst)
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> OpenAIServer:
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.owner = self
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-openai", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release_hangs()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        assert self._httpd is not None, "start the server first"
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- scripting --------------------------------------------------------------------------------

    def script(self, *faults: Fault) -> None:
        """The next requests (in arrival order) get these faults, then normal answers."""
        with self._lock:
            self._script.extend(faults)

    def on_prompt(self, text: str, *faults: Fault) -> None:
        """The next requests whose messages contain ``text`` get these faults (before :meth:`script`'s)."""
        with self._lock:
            self._prompt_faults.append((text, deque(faults)))

    def set_rate_limit(self, rpm: float | None, burst: float | None = None) -> None:
        with self._lock:
            self._rate = None if rpm is None else rpm / 60.0
            self._capacity = 0.0 if self._rate is None else (burst if burst is not None else max(1.0, self._rate))
            self._level = self._capacity
            self._stamp = time.monotonic()

    def release_hangs(self) -> None:
        self._release.set()

    def clear(self) -> None:
        """Forget the log, the counts and any unused faults (the rate limit and the prompt cache stay)."""
        with self._lock:
            self.log.clear()
            self.completions = 0
            self._script.clear()
            self._prompt_faults.clear()
            self._release.set()
            self._release = threading.Event()

    def _prompt_cache(self, prompt: tuple[str, ...]) -> int:
        """How many of ``prompt``'s tokens the cache serves; then the prompt is cached too."""
        with self._lock:
            shared = max((len(os.path.commonprefix([prompt, seen])) for seen in self._prompts), default=0)
            self._prompts.append(prompt)
        least, step = self.prompt_cache_min_tokens, self.prompt_cache_step
        if least is None or shared < least:
            return 0
        return least + (shared - least) // step * step

    # -- observation ------------------------------------------------------------------------------

    @property
    def requests(self) -> int:
        return len(self.log)

    def statuses(self) -> list[int | None]:
        return [r.status for r in self.log]

    def wait_for_requests(self, count: int, timeout: float = 10.0) -> bool:
        """Block until ``count`` requests have arrived (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.log) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._arrived.wait(left)
        return True

    # -- internals --------------------------------------------------------------------------------

    def _arrive(self, body: dict[str, Any], authorization: str) -> tuple[RequestRecord, Fault]:
        messages = body.get("messages") or [{}]
        prompt = str(messages[-1].get("content", ""))
        conversation = "\n".join(str(m.get("content", "")) for m in messages)
        with self._arrived:
            record = RequestRecord(index=len(self.log), arrived=time.monotonic(), prompt=prompt, body=body)
            record.authorized = self.api_key is None or authorization == f"Bearer {self.api_key}"
            fault = OK
            for text, queue in self._prompt_faults:
                if queue and text in conversation:
                    fault = queue.popleft()
                    break
            else:
                if self._script:
                    fault = self._script.popleft()
            record.fault = fault.kind
            self.log.append(record)
            self._arrived.notify_all()
        return record, fault

    def _take_rate_token(self) -> float | None:
        """None if the request may pass (a token is used); else the seconds until one is free."""
        with self._lock:
            if self._rate is None:
                return None
            now = time.monotonic()
            self._level = min(self._capacity, self._level + (now - self._stamp) * self._rate)
            self._stamp = now
            if self._level >= 1.0:
                self._level -= 1.0
                return None
            return (1.0 - self._level) / self._rate
