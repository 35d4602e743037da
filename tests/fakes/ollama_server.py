"""A FAKE of the Ollama service, for tests only: Ollama's HTTP API in a thread, models run by llama.cpp.

Ollama itself cannot be installed on the project's machines, so deploy code is tested against this
server through the official ``ollama`` client. It implements the endpoints that client uses for a
deploy, with the behaviour that matters to one:

- ``HEAD/POST /api/blobs/<digest>``: uploads are hashed and refused (400) when the bytes do not match
  the digest; blobs live in ``<state_dir>/blobs``.
- ``POST /api/create`` from ``files={name: digest}`` plus template/system/parameters/messages: 400
  when a blob is missing or is not a GGUF file; streamed (ndjson) or not.
- ``GET /api/tags``, ``POST /api/show``, ``POST /api/copy``, ``DELETE /api/delete`` (which prunes
  blobs no model uses any more, as Ollama does).
- ``POST /api/chat``, streamed or not: the model's GGUF blob is REALLY loaded with ``llama_cpp.Llama``
  and generates. ``format`` (``"json"`` or a JSON schema) becomes a llama.cpp grammar (a schema's
  built as llama.cpp's own converter builds it: no raw control characters in strings); ``done_reason``
  is ``"stop"`` or ``"length"``; options and Modelfile parameters (``num_predict``, ``temperature``,
  ``repeat_penalty``, ``seed``, ``stop``, ...) apply, request options winning.

Differences from the real service, on purpose: the prompt is built with the GGUF's own chat template
(``tokenizer.chat_template``), not by executing the Modelfile's Go ``TEMPLATE``; the Modelfile
``SYSTEM`` is prepended when the request has no system message, as Ollama does. Model digests are
the sha256 of the model's configuration, so a copy shares its source's digest, as in Ollama.

:meth:`FakeOllamaServer.restart` stops and starts the server on the same port with its models kept
(manifests are on disk) and, with ``clear_blobs=True``, deletes blobs no model refers to, which is
what Ollama does at startup: a blob uploaded but not yet used by a create is lost.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from tasks.teacher.llama_cpp import json_grammar

_DIGEST = re.compile(r"^sha256[:-]([0-9a-f]{64})$")
_OPTION_TO_LLAMA = {
    "temperature": "temperature",
    "top_p": "top_p",
    "top_k": "top_k",
    "min_p": "min_p",
    "typical_p": "typical_p",
    "repeat_penalty": "repeat_penalty",
    "presence_penalty": "presence_penalty",
    "frequency_penalty": "frequency_penalty",
    "seed": "seed",
    "stop": "stop",
    "mirostat": "mirostat_mode",
    "mirostat_tau": "mirostat_tau",
    "mirostat_eta": "mirostat_eta",
}


class _HttpError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _normalize(name: str) -> str:
    """``name`` -> ``name:latest``, as Ollama names models."""
    if not name:
        raise _HttpError(400, "model is required")
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class FakeOllamaServer:
    """A FAKE Ollama host for tests. ``with FakeOllamaServer(tmp_path) as fake: fake.url``."""

    def __init__(self, state_dir: Path, n_ctx: int = 2048):
        self.state_dir = Path(state_dir)
        self.blobs_dir = self.state_dir / "blobs"
        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        self.n_ctx = n_ctx
        self.port = 0
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request, for assertions
        self.llama_loads = 0
        self.restarts = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.RLock()
        self._generate_lock = threading.Lock()
        self._models: dict[str, dict[str, Any]] = {}
        self._llamas: dict[tuple[str, int], Any] = {}

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeOllamaServer:
        self._models = self._load_manifests()
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-ollama", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None
        with self._generate_lock:
            for llm in self._llamas.values():
                llm.close()
            self._llamas.clear()

    def restart(self, clear_blobs: bool = True) -> None:
        """Stop, forget everything in memory, start again on the same port.

        Args:
            clear_blobs: Delete blobs that no model refers to, as Ollama prunes them at startup.
        """
        self.stop()
        self._models = {}
        if clear_blobs:
            with self._lock:
                self._prune_blobs(self._load_manifests())
        self.restarts += 1
        self.start()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state, for tests ------------------------------------------------------------------------

    def model_names(self) -> list[str]:
        with self._lock:
            return sorted(self._models)

    def blob_digests(self) -> list[str]:
        return sorted("sha256:" + p.name.split("-", 1)[1] for p in self.blobs_dir.glob("sha256-*"))

    def count(self, method: str, path_prefix: str) -> int:
        return sum(1 for m, p in self.requests if m == method and p.startswith(path_prefix))

    # -- storage ---------------------------------------------------------------------------------

    def _blob_path(self, digest: str) -> Path:
        match = _DIGEST.match(digest)
        if not match:
            raise _HttpError(400, f"invalid digest format {digest!r}")
        return self.blobs_dir / f"sha256-{match.group(1)}"

    def _manifests_path(self) -> Path:
        return self.state_dir / "manifests.json"

    def _load_manifests(self) -> dict[str, dict[str, Any]]:
        path = self._manifests_path()
        return json.loads(path.read_text()) if path.exists() else {}

    def _save_manifests(self) -> None:
        tmp = self._manifests_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(self._models, indent=1, sort_keys=True))
        os.replace(tmp, self._manifests_path())

    def _prune_blobs(self, models: dict[str, dict[str, Any]]) -> None:
        used = {m["gguf"] for m in models.values()}
        for path in self.blobs_dir.glob("sha256-*"):
            if "sha256:" + path.name.split("-", 1)[1] not in used:
                path.unlink()

    def _model(self, name: str) -> dict[str, Any]:
        name = _normalize(name)
        with self._lock:
            if name not in self._models:
                raise _HttpError(404, f"model '{name}' not found")
            return dict(self._models[name])

    # -- endpoints -------------------------------------------------------------------------------

    def head_blob(self, digest: str) -> int:
        return 200 if self._blob_path(digest).exists() else 404

    def post_blob(self, digest: str, body: Any) -> int:
        target = self._blob_path(digest)
        fd, tmp = tempfile.mkstemp(dir=self.blobs_dir, prefix=".upload-")
        sha = hashlib.sha256()
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in body:
                    sha.update(chunk)
                    out.write(chunk)
            if f"sha256:{sha.hexdigest()}" != digest.replace("sha256-", "sha256:"):
                raise _HttpError(400, f"digest mismatch, expected {digest!r}, got 'sha256:{sha.hexdigest()}'")
            os.replace(tmp, target)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return 201

    def create(self, request: dict[str, Any]) -> list[dict[str, Any]]:
        name = _normalize(request.get("model", ""))
        if request.get("from"):
            base = self._model(request["from"])
        elif request.get("files"):
            files = request["files"]
            ggufs = [d for f, d in files.items() if f.endswith(".gguf")]
            if len(ggufs) != 1:
                raise _HttpError(400, "exactly one .gguf file is supported")
            path = self._blob_path(ggufs[0])
            if not path.exists():
                raise _HttpError(400, f"open {path}: no such file or directory")
            with open(path, "rb") as handle:
                if handle.read(4) != b"GGUF":
                    raise _HttpError(400, "invalid file magic")
            base = {"gguf": ggufs[0].replace("sha256-", "sha256:"), "size": path.stat().st_size}
        else:
            raise _HttpError(400, "neither 'from' nor 'files' was specified")
        config = {
            "gguf": base["gguf"],
            "template": request.get("template", base.get("template")),
            "system": request.get("system", base.get("system")),
            "parameters": {**base.get("parameters", {}), **(request.get("parameters") or {})},
            "messages": request.get("messages") or base.get("messages") or [],
            "license": request.get("license", base.get("license")),
        }
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        with self._lock:
            self._models[name] = {**config, "digest": digest, "size": base["size"], "modified_at": _now()}
            self._save_manifests()
        return [{"status": "parsing GGUF"}, {"status": f"using existing layer {config['gguf']}"},
                {"status": "writing manifest"}, {"status": "success"}]  # fmt: skip

    def tags(self) -> dict[str, Any]:
        with self._lock:
            models = [
                {
                    "name": name,
                    "model": name,
                    "modified_at": m["modified_at"],
                    "size": m["size"],
                    "digest": m["digest"],
                    "details": {"format": "gguf"},
                }
                for name, m in sorted(self._models.items())
            ]
        return {"models": models}

    def show(self, request: dict[str, Any]) -> dict[str, Any]:
        m = self._model(request.get("model", ""))
        parameters = "\n".join(
            f"{key} {json.dumps(v) if isinstance(v, str) else v}"
            for key, value in sorted(m["parameters"].items())
            for v in (value if isinstance(value, list) else [value])
        )
        modelfile = f"FROM {self._blob_path(m['gguf'])}\n"
        if m["template"]:
            modelfile += f'TEMPLATE """{m["template"]}"""\n'
        if m["system"]:
            modelfile += f'SYSTEM """{m["system"]}"""\n'
        modelfile += "".join(f"PARAMETER {line}\n" for line in parameters.splitlines())
        return {
            "modelfile": modelfile,
            "parameters": parameters,
            "template": m["template"] or "",
            "system": m["system"] or "",
            "details": {"format": "gguf"},
            "model_info": {},
            "modified_at": m["modified_at"],
            "capabilities": ["completion"],
        }

    def copy(self, request: dict[str, Any]) -> None:
        source = self._model(request.get("source", ""))
        destination = _normalize(request.get("destination", ""))
        with self._lock:
            self._models[destination] = {**source, "modified_at": _now()}
            self._save_manifests()

    def delete(self, request: dict[str, Any]) -> None:
        name = _normalize(request.get("model", ""))
        with self._lock:
            if name not in self._models:
                raise _HttpError(404, f"model '{name}' not found")
            del self._models[name]
            self._save_manifests()
            self._prune_blobs(self._models)

    def chat(self, request: dict[str, Any]):
        """Ollama chat chunks (content pieces, then a final ``done`` chunk), generated lazily.

        An unknown model is refused here, before anything is streamed.
        """
        name = _normalize(request.get("model", ""))
        return self._generate(name, self._model(name), request)

    def _generate(self, name: str, m: dict[str, Any], request: dict[str, Any]):
        m = self._model(name)
        options = {**m["parameters"], **(request.get("options") or {})}
        messages = [{"role": x["role"], "content": x.get("content") or ""} for x in request.get("messages") or []]
        if m["system"] and not any(x["role"] == "system" for x in messages):
            messages.insert(0, {"role": "system", "content": m["system"]})
        messages = list(m["messages"]) + messages
        kwargs: dict[str, Any] = {k: options[o] for o, k in _OPTION_TO_LLAMA.items() if o in options}
        num_predict = options.get("num_predict", -1)
        kwargs["max_tokens"] = None if num_predict is None or num_predict < 0 else num_predict
        fmt = request.get("format")
        if fmt == "json":
            kwargs["response_format"] = {"type": "json_object"}
        elif isinstance(fmt, dict):  # llama.cpp's converter, as Ollama's: no raw control characters in strings
            kwargs["grammar"] = json_grammar(fmt)
        n_ctx = int(options.get("num_ctx", self.n_ctx))
        with self._generate_lock:
            llm = self._llama(m["gguf"], n_ctx)
            stream = llm.create_chat_completion(messages=messages, stream=True, **kwargs)
            finish, count = None, 0
            for chunk in stream:
                choice = chunk["choices"][0]
                piece = choice.get("delta", {}).get("content")
                finish = choice.get("finish_reason") or finish
                if piece:
                    count += 1
                    yield {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": piece}, "done": False}
        yield {
            "model": name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": ""},
            "done": True,
            "done_reason": "length" if finish == "length" else "stop",
            "eval_count": count,
        }

    def _llama(self, digest: str, n_ctx: int) -> Any:
        key = (digest, n_ctx)
        if key not in self._llamas:
            from llama_cpp import Llama

            # One thread: llama.cpp threads spin at barriers, which is ruinous on a busy 2-core machine.
            self._llamas[key] = Llama(
                model_path=str(self._blob_path(digest)),
                n_ctx=n_ctx,
                n_threads=1,
                n_threads_batch=1,
                verbose=False,
                seed=0,
            )
            self.llama_loads += 1
        return self._llamas[key]


class _HttpBody:
    """The request body as chunks, with Content-Length or chunked transfer encoding."""

    def __init__(self, handler: BaseHTTPRequestHandler):
        self.handler = handler

    def __iter__(self):
        rfile = self.handler.rfile
        if self.handler.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    rfile.readline()
                    return
                yield rfile.read(size)
                rfile.readline()
        remaining = int(self.handler.headers.get("Content-Length") or 0)
        while remaining > 0:
            chunk = rfile.read(min(remaining, 1 << 20))
            if not chunk:
                return
            remaining -= len(chunk)
            yield chunk


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeOllamaServer
    protocol_version = "HTTP/1.0"  # one request per connection: nothing survives a restart

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _json_body(self) -> dict[str, Any]:
        data = b"".join(_HttpBody(self))
        try:
            return json.loads(data or b"{}")
        except json.JSONDecodeError as error:
            raise _HttpError(400, f"invalid JSON: {error}") from None

    def _send(self, status: int, payload: Any = None) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _stream(self, chunks) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.end_headers()
        try:
            for chunk in chunks:
                self.wfile.write(json.dumps(chunk).encode() + b"\n")
                self.wfile.flush()
        except _HttpError as error:  # an error after the stream started is a line, as in Ollama
            self.wfile.write(json.dumps({"error": error.message}).encode() + b"\n")

    def _dispatch(self) -> None:
        fake = self.server_fake
        fake.requests.append((self.command, self.path))
        route = (self.command, self.path.split("?", 1)[0])
        try:
            if route[1].startswith("/api/blobs/"):
                digest = route[1][len("/api/blobs/") :]
                if self.command == "HEAD":
                    return self._send(fake.head_blob(digest))
                if self.command == "POST":
                    return self._send(fake.post_blob(digest, _HttpBody(self)))
            elif route == ("GET", "/api/tags"):
                return self._send(200, fake.tags())
            elif route == ("GET", "/api/version"):
                return self._send(200, {"version": "0.0.0-fake"})
            elif route == ("POST", "/api/show"):
                return self._send(200, fake.show(self._json_body()))
            elif route == ("POST", "/api/copy"):
                fake.copy(self._json_body())
                return self._send(200)
            elif route == ("DELETE", "/api/delete"):
                fake.delete(self._json_body())
                return self._send(200)
            elif route == ("POST", "/api/create"):
                request = self._json_body()
                progress = fake.create(request)
                if request.get("stream", True):
                    return self._stream(progress)
                return self._send(200, progress[-1])
            elif route == ("POST", "/api/chat"):
                request = self._json_body()
                chunks = fake.chat(request)
                if request.get("stream", True):
                    return self._stream(chunks)
                return self._send(200, _join_chat(list(chunks)))
            raise _HttpError(404, f"{self.command} {route[1]} is not part of this fake")
        except _HttpError as error:
            self._send(error.status, {"error": error.message})

    do_GET = do_POST = do_DELETE = do_HEAD = _dispatch


def _join_chat(chunks: list[dict[str, Any]]) -> dict[str, Any]:
    final = dict(chunks[-1])
    final["message"] = {"role": "assistant", "content": "".join(c["message"]["content"] for c in chunks)}
    return final

