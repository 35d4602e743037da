"""Small frozen references that flow between stages instead of payloads."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 1


class Frozen(BaseModel):
    """Base for every record that crosses a stage boundary: immutable, strict about its fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ArtifactRef(Frozen):
    """A file or folder in the artifact store, named by its content.

    ``sha256`` of a folder is the sha256 of its listing (relative path and sha256 of every file), so
    two folders with the same files have the same ref.
    """

    uri: str
    sha256: str
    bytes: int
    kind: str = Field(description="What it holds: dataset, pairs, adapter, model, gguf, report...")
    rows: int | None = None
    is_dir: bool = False
    schema_version: int = SCHEMA_VERSION

    @property
    def name(self) -> str:
        return self.uri.rstrip("/").rsplit("/", 1)[-1]


class StageOutput(Frozen):
    """What a task hands to the next one: its artifacts plus counts for the run report."""

    artifacts: dict[str, ArtifactRef] = Field(default_factory=dict)
    counts: dict[str, Any] = Field(default_factory=dict)
    teacher_calls: int = 0

    def __getitem__(self, key: str) -> ArtifactRef:
        return self.artifacts[key]

    def refs(self) -> list[ArtifactRef]:
        return list(self.artifacts.values())
