"""Deploy a packaged GGUF to an Ollama host, smoke-test it there, then move ``latest``; roll back.

Inputs: the host URL, a model name, a tag for this run (the run id), the GGUF file, the Modelfile
the package stage wrote, and golden prompts. Output: an :class:`OllamaDeployment` record.

The order is what keeps users safe: the candidate is created under its own tag (``name:<tag>``),
each golden prompt is run against that tag *on the host*, and only when every one passes is
``name:latest`` pointed at it (``copy``). Any failure deletes the candidate tag and leaves ``latest``
where it was. Ollama has no compare-and-swap, so right before the copy we re-read ``latest`` and give
up if another deploy moved it meanwhile (a small window remains; run one deploy per model at a time).
Tags are immutable: a deploy to an existing tag is refused, unless it is a retry that finds its own
work done (``latest`` serves that tag, built from the same GGUF), which succeeds without changes.

History and rollback: the host is the record. Every successful deploy leaves its run tag on the
host, and failed candidates are deleted, so the tags of ``name`` other than ``latest``, oldest first
(by the host's ``modified_at``), are the deployment history. :func:`rollback_ollama` points
``latest`` at the newest tag older than the one ``latest`` serves now (or at ``to_tag``). A caller
that keeps its own history (the list of ``OllamaDeployment.tag`` it published) can pass it instead;
its order then wins over the host's timestamps.

Only the official ``ollama`` client is used, plus one documented endpoint it does not wrap
(``HEAD /api/blobs/<digest>``) to tell "the host lost the blob" (it restarted between upload and
create and pruned unreferenced blobs) from other create errors: then the blob is uploaded again and
create is retried once.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from pydantic import Field

from tasks.core.hashing import sha256_file
from tasks.core.refs import Frozen
from tasks.teacher.llama_cpp import grammar_safe

log = logging.getLogger(__name__)

LATEST = "latest"
_SMOKE_TEXT_LIMIT = 2000

# Typed PARAMETER names of Ollama's Modelfile (api.Options); anything else is refused, as Ollama does.
_INT_PARAMETERS = {
    "num_ctx", "num_batch", "num_gpu", "main_gpu", "num_thread", "num_keep", "seed", "num_predict",
    "top_k", "repeat_last_n", "mirostat",
}  # fmt: skip
_FLOAT_PARAMETERS = {
    "temperature", "top_p", "min_p", "typical_p", "tfs_z", "repeat_penalty", "presence_penalty",
    "frequency_penalty", "mirostat_tau", "mirostat_eta",
}  # fmt: skip
_BOOL_PARAMETERS = {"penalize_newline", "numa", "low_vram", "use_mmap", "use_mlock", "vocab_only"}
_LIST_PARAMETERS = {"stop"}


class OllamaDeployError(RuntimeError):
    """A deploy or rollback step failed; ``latest`` still points where it did before."""


class BlobDigestMismatch(OllamaDeployError):
    """The GGUF's sha256 is not the one expected, or not the digest the host was given."""


class SmokeTestFailed(OllamaDeployError):
    """At least one golden prompt failed on the candidate; ``results`` says which and why."""

    def __init__(self, message: str, results: Sequence[SmokeResult]):
        super().__init__(message)
        self.results = tuple(results)


class ModelfileError(ValueError):
    """A Modelfile line that cannot be turned into a create request."""


class ModelfileSpec(Frozen):
    """A Modelfile as the fields of Ollama's create request (``from_`` is only informative here)."""

    from_: str | None = None
    template: str | None = None
    system: str | None = None
    parameters: dict[str, Any] = Field(default_factory=dict)
    license: str | None = None
    messages: tuple[dict[str, str], ...] = ()


class OllamaModelVersion(Frozen):
    """A model on the host: its tag (None when only ``latest`` holds it) and manifest digest."""

    tag: str | None
    digest: str


class SmokeResult(Frozen):
    """One golden prompt run against the candidate on the host."""

    prompt: str
    response: str = Field(description=f"The reply, cut to {_SMOKE_TEXT_LIMIT} characters.")
    done_reason: str | None
    passed: bool
    error: str | None = None
    seconds: float


class OllamaDeployment(Frozen):
    """What a deploy did: the model served as ``<model>:latest`` and what it replaced."""

    host: str
    model: str
    tag: str
    digest: str = Field(description="The host's digest of the new model (shared by name:tag and name:latest).")
    blob_digest: str = Field(description="sha256:<hex> of the GGUF file uploaded.")
    previous_latest: OllamaModelVersion | None = Field(
        description="What name:latest served before; None on the first deploy. Roll back to its tag."
    )
    smoke: tuple[SmokeResult, ...]


class OllamaRollback(Frozen):
    """What a rollback did: ``latest`` moved from one version to another."""

    host: str
    model: str
    from_version: OllamaModelVersion
    to_version: OllamaModelVersion


# -- Modelfile -------------------------------------------------------------------------------------


def parse_modelfile(text: str) -> ModelfileSpec:
    """Turn Modelfile text (FROM, TEMPLATE, SYSTEM, PARAMETER, LICENSE, MESSAGE) into create fields.

    Values may be bare (to the end of the line), ``"quoted"`` or ``\"\"\"triple-quoted\"\"\"`` across
    lines. Repeated ``PARAMETER stop`` lines accumulate. ``ADAPTER`` is refused: adapters are merged
    before packaging.

    Raises:
        ModelfileError: an unknown instruction or parameter, a bad value, an unclosed quote.
    """
    fields: dict[str, Any] = {}
    parameters: dict[str, Any] = {}
    messages: list[dict[str, str]] = []
    position = 0
    while position < len(text):
        line_end = text.find("\n", position)
        line_end = len(text) if line_end < 0 else line_end
        line = text[position:line_end].strip()
        if not line or line.startswith("#"):
            position = line_end + 1
            continue
        match = re.match(r"(\w+)\s*", text[position:])
        if match is None:
            raise ModelfileError(f"cannot read Modelfile line: {line!r}")
        instruction = match.group(1).upper()
        value, position = _read_value(text, position + match.end(), instruction)
        if instruction == "FROM":
            fields["from_"] = value
        elif instruction in {"TEMPLATE", "SYSTEM", "LICENSE"}:
            fields[instruction.lower()] = value
        elif instruction == "PARAMETER":
            name, _, raw = value.partition(" ")
            _add_parameter(parameters, name.strip(), _unquote(raw.strip()))
        elif instruction == "MESSAGE":
            role, _, content = value.partition(" ")
            if role not in {"system", "user", "assistant"}:
                raise ModelfileError(f"MESSAGE role must be system, user or assistant, not {role!r}")
            messages.append({"role": role, "content": _unquote(content.strip())})
        elif instruction == "ADAPTER":
            raise ModelfileError("ADAPTER is not supported: merge the adapter into the GGUF before deploying")
        else:
            raise ModelfileError(f"unknown Modelfile instruction {instruction!r}")
    return ModelfileSpec(**fields, parameters=parameters, messages=tuple(messages))


def _read_value(text: str, start: int, instruction: str) -> tuple[str, int]:
    """The argument that starts at ``start`` and the position after it."""
    if text.startswith('"""', start):
        end = text.find('"""', start + 3)
        if end < 0:
            raise ModelfileError(f'{instruction}: unclosed """')
        after = text.find("\n", end + 3)
        return text[start + 3 : end], len(text) if after < 0 else after + 1
    end = text.find("\n", start)
    end = len(text) if end < 0 else end
    value = text[start:end].strip()
    if instruction != "PARAMETER" and instruction != "MESSAGE":
        value = _unquote(value)
    return value, end + 1


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] == '"':
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value[1:-1]
    return value


def _add_parameter(parameters: dict[str, Any], name: str, raw: str) -> None:
    try:
        if name in _LIST_PARAMETERS:
            parameters.setdefault(name, []).append(raw)
        elif name in _INT_PARAMETERS:
            parameters[name] = int(raw)
        elif name in _FLOAT_PARAMETERS:
            parameters[name] = float(raw)
        elif name in _BOOL_PARAMETERS:
            if raw.lower() not in {"true", "false"}:
                raise ValueError(raw)
            parameters[name] = raw.lower() == "true"
        else:
            raise ModelfileError(f"unknown PARAMETER {name!r}")
    except ValueError as error:
        if isinstance(error, ModelfileError):
            raise
        raise ModelfileError(f"PARAMETER {name}: bad value {raw!r}") from None


# -- deploy ----------------------------------------------------------------------------------------


def deploy_to_ollama(
    host: str,
    model_name: str,
    tag: str,
    gguf_path: Path,
    modelfile_text: str,
    smoke_prompts: list[str],
    json_schema: dict | None = None,
    timeout_s: float = 120,
    *,
    expected_sha256: str | None = None,
    smoke_options: Mapping[str, Any] | None = None,
) -> OllamaDeployment:
    """Create ``model_name:tag`` on the host, smoke-test it, then point ``model_name:latest`` at it.

    Args:
        host: The Ollama host, e.g. ``http://gpu-box:11434``.
        model_name: The model's name on the host, without a tag.
        tag: This deployment's tag (the run id). Tags are immutable: an existing tag is refused,
            except when a retried deploy finds its own work done (``latest`` already serves this
            tag, built from this GGUF): then the smoke prompts are re-run and the record returned.
        gguf_path: The GGUF file to serve.
        modelfile_text: The Modelfile (see :func:`parse_modelfile`); its FROM is replaced by the GGUF.
        smoke_prompts: Golden prompts; each must finish by itself (``done_reason == "stop"``) with a
            non-empty reply, and the reply must be JSON valid against ``json_schema`` when given.
        json_schema: Asked for as the structured output format (as llama.cpp can enforce it whole:
            :func:`tasks.teacher.llama_cpp.grammar_safe`, how validation decoded too), and checked
            on every reply.
        timeout_s: Limit for each request to the host.
        expected_sha256: The GGUF's sha256 as recorded by the package stage (``GGUFRef.sha256``).
        smoke_options: Request options for the smoke chats; default temperature 0 and seed 0, so a
            smoke result can be reproduced. Model parameters from the Modelfile apply otherwise.

    Returns:
        The deployment record, with what ``latest`` served before.

    Raises:
        BlobDigestMismatch: the file is not the expected bytes, or the host was given another digest.
        SmokeTestFailed: a golden prompt failed; the candidate tag was deleted.
        OllamaDeployError: any other step failed; ``latest`` was not touched.
    """
    import ollama

    if not smoke_prompts:
        raise ValueError("refusing to deploy without smoke prompts")
    if not tag or tag == LATEST or ":" in tag or ":" in model_name:
        raise ValueError(f"bad model name or tag: {model_name!r}, {tag!r}")
    gguf_path = Path(gguf_path)
    spec = parse_modelfile(modelfile_text)
    candidate, latest = f"{model_name}:{tag}", f"{model_name}:{LATEST}"
    client = ollama.Client(host=host, timeout=timeout_s)

    options = dict(smoke_options) if smoke_options is not None else {"temperature": 0.0, "seed": 0}
    file_sha = sha256_file(gguf_path)
    if expected_sha256 is not None and file_sha != expected_sha256:
        raise BlobDigestMismatch(f"{gguf_path} has sha256 {file_sha}, expected {expected_sha256}")
    versions = _versions(client, model_name)
    if tag in versions:
        return _already_deployed(client, host, model_name, tag, versions, file_sha, smoke_prompts, json_schema, options)
    previous = _latest_version(versions)

    blob_digest = _upload_blob(client, gguf_path, file_sha)
    file_name = gguf_path.name if gguf_path.name.endswith(".gguf") else f"{gguf_path.name}.gguf"

    # The tag did not exist before this deploy, so deleting it on any failure is always safe.
    try:
        _create_model(client, host, candidate, spec, {file_name: blob_digest}, gguf_path, file_sha, timeout_s)
        results = [_smoke_one(client, candidate, prompt, json_schema, options) for prompt in smoke_prompts]
        failed = [r for r in results if not r.passed]
        if failed:
            reasons = "; ".join(f"{r.prompt[:60]!r}: {r.error}" for r in failed)
            raise SmokeTestFailed(f"{len(failed)}/{len(results)} smoke prompts failed on {candidate}: {reasons}", results)
        current = _latest_version(_versions(client, model_name))
        if _digest(current) != _digest(previous):  # by digest: the candidate may share it
            raise OllamaDeployError(f"{latest} moved during this deploy ({previous} -> {current}); not overwriting it")
        _call(f"point {latest} at {candidate}", client.copy, candidate, latest)
    except BaseException:
        _delete_quietly(client, candidate)
        raise

    after = _versions(client, model_name)
    if LATEST not in after or tag not in after or after[LATEST][0] != after[tag][0]:
        raise OllamaDeployError(f"after the copy, {latest} does not serve {candidate} on {host}")
    log.info("deployed %s on %s (was %s)", candidate, host, previous)
    return OllamaDeployment(
        host=host,
        model=model_name,
        tag=tag,
        digest=after[tag][0],
        blob_digest=blob_digest,
        previous_latest=previous,
        smoke=tuple(results),
    )


def _already_deployed(
    client: Any,
    host: str,
    model_name: str,
    tag: str,
    versions: dict[str, tuple[str, datetime]],
    file_sha: str,
    smoke_prompts: list[str],
    json_schema: dict | None,
    options: dict,
) -> OllamaDeployment:
    """A retried deploy whose tag is already on the host: succeed only if nothing would change.

    That is: ``latest`` serves the tag and the tag was built from this very GGUF (Ollama's Modelfile
    names the blob ``sha256-<hex>``). The smoke prompts are run again so the record is complete.
    Anything else is refused: tags are immutable, a new model needs a new tag.
    """
    candidate = f"{model_name}:{tag}"
    modelfile = _call(f"show {candidate}", client.show, candidate).modelfile or ""
    serves = LATEST in versions and versions[LATEST][0] == versions[tag][0]
    if not serves or f"sha256-{file_sha}" not in modelfile:
        raise OllamaDeployError(
            f"{candidate} already exists on {host} "
            f"({'with another GGUF' if serves else 'and latest does not serve it'}); "
            "tags are immutable, deploy under a new tag"
        )
    results = [_smoke_one(client, candidate, prompt, json_schema, options) for prompt in smoke_prompts]
    if not all(r.passed for r in results):
        raise SmokeTestFailed(f"{candidate} is already deployed but fails its smoke prompts now", results)
    try:
        before = _previous_tag(versions, OllamaModelVersion(tag=tag, digest=versions[tag][0]), None)
        previous = OllamaModelVersion(tag=before, digest=versions[before][0])
    except OllamaDeployError:
        previous = None
    log.info("%s was already deployed on %s and serves as latest; nothing to do", candidate, host)
    return OllamaDeployment(
        host=host,
        model=model_name,
        tag=tag,
        digest=versions[tag][0],
        blob_digest=f"sha256:{file_sha}",
        previous_latest=previous,
        smoke=tuple(results),
    )


def rollback_ollama(
    host: str,
    model_name: str,
    to_tag: str | None = None,
    history: Sequence[str] | None = None,
    timeout_s: float = 60,
) -> OllamaRollback:
    """Point ``model_name:latest`` back at an earlier deployment.

    Args:
        host: The Ollama host.
        model_name: The model's name on the host.
        to_tag: The tag to serve; default: the deployment before the one ``latest`` serves now.
        history: Deployed tags, oldest first, as the caller recorded them; default: the host's tags
            of this model ordered by their ``modified_at``.
        timeout_s: Limit for each request to the host.

    Raises:
        OllamaDeployError: nothing is served as ``latest``, the tag is missing, or there is no
            earlier deployment to go back to.
    """
    import ollama

    client = ollama.Client(host=host, timeout=timeout_s)
    versions = _versions(client, model_name)
    current = _latest_version(versions)
    if current is None:
        raise OllamaDeployError(f"{model_name}:{LATEST} does not exist on {host}; nothing to roll back")
    if to_tag is None:
        to_tag = _previous_tag(versions, current, history)
    if to_tag not in versions or to_tag == LATEST:
        raise OllamaDeployError(f"{model_name}:{to_tag} does not exist on {host}")
    _call(f"point {model_name}:{LATEST} at {model_name}:{to_tag}", client.copy, f"{model_name}:{to_tag}", f"{model_name}:{LATEST}")
    after = _versions(client, model_name)
    if after.get(LATEST, ("",))[0] != versions[to_tag][0]:
        raise OllamaDeployError(f"after the copy, {model_name}:{LATEST} does not serve {model_name}:{to_tag}")
    target = OllamaModelVersion(tag=to_tag, digest=versions[to_tag][0])
    log.info("rolled %s:%s back from %s to %s on %s", model_name, LATEST, current, target, host)
    return OllamaRollback(host=host, model=model_name, from_version=current, to_version=target)


def _previous_tag(
    versions: dict[str, tuple[str, datetime]], current: OllamaModelVersion, history: Sequence[str] | None
) -> str:
    if history is None:
        history = [t for t, _ in sorted(versions.items(), key=lambda item: (item[1][1], item[0])) if t != LATEST]
    deployed = [t for t in history if t in versions and t != LATEST]
    serving = [i for i, t in enumerate(deployed) if versions[t][0] == current.digest]
    if not serving:
        raise OllamaDeployError(f"no deployed tag matches what latest serves ({current.digest[:12]}); pass to_tag")
    for t in reversed(deployed[: serving[-1]]):
        if versions[t][0] != current.digest:
            return t
    raise OllamaDeployError(f"no deployment before {deployed[serving[-1]]} to roll back to; pass to_tag")


# -- host steps ------------------------------------------------------------------------------------


def _call(step: str, function: Any, *args: Any, **kwargs: Any) -> Any:
    """Run one client call; turn the client's errors into an OllamaDeployError naming the step."""
    import httpx
    import ollama

    try:
        return function(*args, **kwargs)
    except (ollama.ResponseError, ollama.RequestError, httpx.HTTPError, ConnectionError) as error:
        raise OllamaDeployError(f"{step} failed: {error}") from error


def _versions(client: Any, model_name: str) -> dict[str, tuple[str, datetime]]:
    """tag -> (digest, modified_at) for every tag of ``model_name`` on the host."""
    listing = _call("list models", client.list)
    versions = {}
    for model in listing.models:
        name, _, tag = (model.model or "").rpartition(":")
        if name == model_name and model.digest:
            modified = model.modified_at or datetime.fromtimestamp(0, UTC)
            versions[tag] = (model.digest, modified)
    return versions


def _latest_version(versions: dict[str, tuple[str, datetime]]) -> OllamaModelVersion | None:
    if LATEST not in versions:
        return None
    digest = versions[LATEST][0]
    same = sorted(
        ((modified, t) for t, (d, modified) in versions.items() if d == digest and t != LATEST), reverse=True
    )
    return OllamaModelVersion(tag=same[0][1] if same else None, digest=digest)


def _digest(version: OllamaModelVersion | None) -> str | None:
    return None if version is None else version.digest


def _upload_blob(client: Any, gguf_path: Path, file_sha: str) -> str:
    digest = _call(f"upload {gguf_path.name}", client.create_blob, gguf_path)
    if digest != f"sha256:{file_sha}":
        raise BlobDigestMismatch(f"{gguf_path} was uploaded as {digest}, but its sha256 is {file_sha}; it changed")
    return digest


def _blob_exists(host: str, digest: str, timeout_s: float) -> bool:
    import httpx

    response = httpx.head(f"{_base_url(host)}/api/blobs/{digest}", timeout=timeout_s)
    if response.status_code not in (200, 404):
        raise OllamaDeployError(f"cannot tell whether {host} holds blob {digest}: HTTP {response.status_code}")
    return response.status_code == 200


def _create_model(
    client: Any,
    host: str,
    name: str,
    spec: ModelfileSpec,
    files: dict[str, str],
    gguf_path: Path,
    file_sha: str,
    timeout_s: float,
) -> None:
    import httpx
    import ollama

    def create() -> None:
        client.create(
            model=name,
            files=files,
            template=spec.template,
            system=spec.system,
            parameters=spec.parameters or None,
            license=spec.license,
            messages=list(spec.messages) or None,
            stream=False,
        )

    try:
        create()
        return
    except ollama.ResponseError as error:
        try:
            missing = [d for d in files.values() if not _blob_exists(host, d, timeout_s)]
        except httpx.HTTPError as probe_error:
            raise OllamaDeployError(f"create {name} on {host} failed: {error}; then: {probe_error}") from error
        if not missing:
            raise OllamaDeployError(f"create {name} on {host} failed: {error}") from error
        # The host restarted between upload and create and pruned the unreferenced blob.
        log.warning("%s lost blob %s before create (%s); uploading it again", host, missing, error)
    _upload_blob(client, gguf_path, file_sha)
    _call(f"create {name} on {host} (after re-uploading the blob)", create)


def _delete_quietly(client: Any, name: str) -> None:
    import ollama

    try:
        client.delete(name)
    except ollama.ResponseError as error:
        if error.status_code != 404:  # 404: the candidate was never created
            log.warning("could not delete failed candidate %s: %s", name, error)
    except Exception as error:  # noqa: BLE001 - the original failure matters more than this one
        log.warning("could not delete failed candidate %s: %s", name, error)


def _smoke_one(client: Any, model: str, prompt: str, json_schema: dict | None, options: dict) -> SmokeResult:
    start = time.perf_counter()
    content, done_reason, error = "", None, None
    try:
        response = client.chat(
            model=model, messages=[{"role": "user", "content": prompt}],
            format=grammar_safe(json_schema), options=options, stream=False
        )
        content = response.message.content or ""
        done_reason = response.done_reason
        error = _smoke_problem(content, done_reason, json_schema)
    except Exception as failure:  # noqa: BLE001 - a failed call is a failed smoke test, reported as such
        error = f"{type(failure).__name__}: {failure}"
    return SmokeResult(
        prompt=prompt,
        response=content[:_SMOKE_TEXT_LIMIT],
        done_reason=done_reason,
        passed=error is None,
        error=error,
        seconds=round(time.perf_counter() - start, 3),
    )


def _smoke_problem(content: str, done_reason: str | None, json_schema: dict | None) -> str | None:
    """Why a reply fails the smoke test, or None when it passes. Pure."""
    if done_reason != "stop":
        return f"generation did not finish by itself (done_reason={done_reason!r})"
    if not content.strip():
        return "empty reply"
    if json_schema is not None:
        import jsonschema

        try:
            jsonschema.validate(json.loads(content), json_schema)
        except json.JSONDecodeError as error:
            return f"reply is not JSON: {error}"
        except jsonschema.ValidationError as error:
            return f"reply does not match the schema: {error.message}"
    return None


def _base_url(host: str) -> str:
    """The host as a base URL, defaulting like the ollama client: no scheme means http on port 11434."""
    if "://" not in host:
        parsed = urlparse(f"http://{host}")
        netloc = parsed.netloc if parsed.port else f"{parsed.hostname}:11434"
        return f"http://{netloc}{parsed.path.rstrip('/')}"
    return host.rstrip("/")
