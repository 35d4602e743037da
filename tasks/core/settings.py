"""Settings read from the environment (``DISTILLERY_*``), and the one state folder.

Everything distillery keeps between runs lives under one folder, ``.distillery/`` in the working
directory unless ``DISTILLERY_HOME`` moves it: Prefect's home and results, the artifact store (when
no remote store is configured), the teacher's request cache, converted models and scratch space.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Machine-level settings: where state lives and which services to talk to."""

    model_config = SettingsConfigDict(env_prefix="DISTILLERY_", extra="ignore")

    home: Path = Field(default=Path(".distillery"), description="The state folder.")
    store_uri: str | None = Field(
        default=None,
        description="Artifact store: a local folder, or s3://bucket/prefix. Default: <home>/store.",
    )
    s3_endpoint_url: str | None = Field(
        default=None, description="S3-compatible endpoint (MinIO, moto, R2...). Default: AWS."
    )
    ollama_host: str | None = Field(
        default=None, description="Ollama host to deploy to, e.g. http://gpu-box:11434. Unset: skip."
    )
    postgres_dsn: SecretStr | None = Field(
        default=None, description="Connection string of the PostgreSQL source (profile-scorer)."
    )
    model_cache: Path | None = Field(
        default=None,
        description="Base models converted from GGUF, shared by every state folder on this machine. "
        "Default: $XDG_CACHE_HOME/distillery/models (~/.cache/distillery/models).",
    )
    converter_dir: Path | None = Field(
        default=None,
        description="Folder holding llama.cpp's convert_hf_to_gguf.py. Default: <venv>/share/distillery/llama.cpp.",
    )
    llama_threads: int | None = Field(
        default=None, ge=1,
        description="Threads llama.cpp generates with (teacher, student, judge, validation). Default: the "
        "physical cores this process may run on.",
    )

    @property
    def state(self) -> Path:
        return self.home.resolve()

    @property
    def prefect_home(self) -> Path:
        return self.state / "prefect"

    @property
    def store_location(self) -> str:
        return self.store_uri or str(self.state / "store")

    @property
    def cache_dir(self) -> Path:
        return self.state / "cache"

    @property
    def model_cache_dir(self) -> Path:
        # Outside the state folder: converting a GGUF takes ~50 s on 2 cores and its result depends only
        # on the file and the transformers release, so every state folder (and test) can share it.
        xdg = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
        return (self.model_cache or xdg / "distillery" / "models").expanduser().resolve()

    @property
    def work_dir(self) -> Path:
        return self.state / "work"

    @property
    def generation_threads(self) -> int:
        """``llama_threads``, else the physical cores this process may use. llama-cpp-python's own
        default is half the logical CPUs: one thread on a 2-core machine without SMT, where two generate
        1.6x faster with the 1.5B teacher (docs/benchmarks.md, section 6)."""
        if self.llama_threads:
            return self.llama_threads
        import psutil

        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        return max(1, min(psutil.cpu_count(logical=False) or usable, usable))

    @property
    def llama_cpp_converter_dir(self) -> Path:
        import sys

        return (self.converter_dir or Path(sys.prefix) / "share" / "distillery" / "llama.cpp").resolve()


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def configure_prefect_environment() -> None:
    """Point Prefect at the state folder before Prefect is imported.

    Prefect reads its settings when it is first imported, so this runs from ``flows/__init__.py``.
    It only sets defaults: an explicit ``PREFECT_*`` variable (a real server's API URL, say) wins.
    """
    settings = Settings()
    home = settings.state / "prefect"
    defaults = {
        "PREFECT_HOME": str(home),
        "PREFECT_LOCAL_STORAGE_PATH": str(home / "results"),
        "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true",
        "PREFECT_RESULTS_DEFAULT_SERIALIZER": "json",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_LOG_PRINTS": "true",
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
        # Our own logs carry no secrets, but never ship logs with parameters to a remote API twice.
        "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.5",
        "PREFECT_LOGGING_EXTRA_LOGGERS": "distillery",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    for key, value in defaults.items():
        os.environ.setdefault(key, value)
    # Prefect creates its home without parents and its server fails without it.
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
