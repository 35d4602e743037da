"""API keys: read once from the environment or a Prefect Secret block, held as ``SecretStr``, scrubbed.

A recipe names where the key lives (``teacher.api_key_env``), never the key. The key is resolved when
the provider is built, kept in a ``SecretStr`` (its repr is ``'**********'``) and handed to the HTTP
client only; error messages that could echo it pass through :func:`scrub` first.
"""

from __future__ import annotations

import logging
import os
import re
from urllib.parse import urlparse

from pydantic import SecretStr

from tasks.teacher.base import TeacherError

log = logging.getLogger("distillery.teacher")

# A placeholder for local OpenAI-compatible servers (Ollama, vLLM, llama.cpp) that ignore the key.
NO_KEY = "not-needed"
_LOOPBACK = {"localhost", "127.0.0.1", "::1", "[::1]"}
# Masked or partial keys some providers echo back ("Incorrect API key provided: sk-abc***wxyz").
_KEYLIKE = re.compile(r"\b(sk|gsk|pk|key|AIza)[-_A-Za-z0-9]*\*+[-_A-Za-z0-9*]*|\bsk-[-_A-Za-z0-9]{8,}")


def secret_block_name(env_name: str) -> str:
    """The Prefect Secret block looked up for an environment variable: ``OPENAI_API_KEY`` -> ``openai-api-key``."""
    return re.sub(r"[^a-z0-9-]+", "-", env_name.lower()).strip("-")


def is_loopback(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlparse(base_url).hostname or ""
    return host in _LOOPBACK or host.startswith("127.")


def _prefect_api_at_hand() -> bool:
    """A Prefect API is configured (a server, or a test harness) or this code runs inside a run."""
    import sys

    if "prefect" not in sys.modules:
        return False
    from prefect.context import FlowRunContext, TaskRunContext
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url) or FlowRunContext.get() is not None or TaskRunContext.get() is not None


def _from_secret_block(name: str) -> str | None:
    try:
        from prefect.blocks.system import Secret

        value = Secret.load(name).get()
    except Exception as exc:  # noqa: BLE001 - no server, no block, wrong type: all mean "not there"
        log.debug("no Prefect Secret block %r (%s)", name, type(exc).__name__)
        return None
    return str(value) if value else None


def resolve_api_key(env_name: str, base_url: str | None = None) -> SecretStr:
    """The API key from ``$env_name``, else from the Prefect Secret block of that name.

    Args:
        env_name: the environment variable; an empty name means the endpoint needs no key.
        base_url: the endpoint; a loopback server (Ollama, vLLM, llama.cpp) may go without a key.

    Raises:
        TeacherError: no key where one is needed; the message says where it was looked for.
    """
    if not env_name:
        return SecretStr(NO_KEY)
    value = os.environ.get(env_name)
    if value:
        return SecretStr(value)
    block = secret_block_name(env_name)
    local = is_loopback(base_url)
    # Without a Prefect API at hand a lookup starts a temporary server (tens of seconds): not worth it
    # for a local endpoint, which does not need a key anyway.
    if not local or _prefect_api_at_hand():
        value = _from_secret_block(block)
        if value:
            return SecretStr(value)
    if local:
        return SecretStr(NO_KEY)
    raise TeacherError(
        f"no API key for the teacher: set the environment variable {env_name} "
        f"or create a Prefect Secret block named {block!r}"
    )


def scrub(text: str, secret: SecretStr | None) -> str:
    """``text`` with the key, and anything that looks like a masked or partial key, replaced by ``***``."""
    if secret is not None:
        value = secret.get_secret_value()
        if value and value != NO_KEY:
            text = text.replace(value, "***")
    return _KEYLIKE.sub("***", text)
