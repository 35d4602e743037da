"""What the synthesize stage produces, and the structured outputs it asks the teacher for."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from tasks.core.refs import Frozen


class Message(Frozen):
    role: str
    content: str


class SyntheticExample(Frozen):
    """One SFT example: chat ``messages`` ending with the assistant turn the student should learn."""

    id: str
    source: str = Field(description="human:<source> or teacher:<provider:model>")
    messages: tuple[Message, ...]
    reference: str | None = Field(default=None, description="Ground-truth output for validation, if any.")
    metadata: dict[str, Any] = Field(default_factory=dict)

    @property
    def prompt_messages(self) -> tuple[Message, ...]:
        return self.messages[:-1]

    @property
    def completion(self) -> str:
        return self.messages[-1].content


class GroundedQA(BaseModel):
    """A question a reader of the passage might ask, answered from it, with a supporting quote."""

    question: str = Field(description="A self-contained question about the passage.", max_length=240)
    answer: str = Field(description="A concise answer, based only on the passage.", max_length=600)
    quote: str = Field(description="A short exact quote from the passage that supports the answer.", max_length=200)
