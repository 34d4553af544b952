"""Chat messages in the shape every generator takes and returns."""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, ValidationError

from rig_ray.errors import InvalidMessageError

Role = t.Literal["system", "user", "assistant", "tool"]
"""The speaker of a message, as in the OpenAI chat format."""

MessageLike = t.Union["Message", t.Mapping[str, t.Any], str]
"""Anything that `Message.fit` turns into a message: a Message, an OpenAI-shaped dict, or a str
(taken as a user message)."""


class Message(BaseModel):
    """One turn of a conversation."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    """Who speaks: system, user, assistant or tool."""
    content: str
    """The text of the turn."""

    @classmethod
    def fit(cls, value: MessageLike) -> Message:
        """Read a Message, an OpenAI-shaped dict, or a plain str (a user turn)."""
        if isinstance(value, Message):
            return value
        if isinstance(value, str):
            return cls(role="user", content=value)
        if isinstance(value, t.Mapping):
            try:
                return cls.model_validate(dict(value))
            except ValidationError as error:
                first = error.errors()[0]
                where = ".".join(str(p) for p in first["loc"])
                raise InvalidMessageError(value, f"{where}: {first['msg']}") from None
        raise InvalidMessageError(
            value, f"expected Message, dict or str, got {type(value).__name__}"
        )

    @classmethod
    def fit_many(cls, values: MessageLike | t.Sequence[MessageLike]) -> list[Message]:
        """Read one message-like value or a sequence of them as a list of Messages."""
        if isinstance(values, str | Message | t.Mapping):
            return [cls.fit(values)]
        if not isinstance(values, t.Sequence):
            raise InvalidMessageError(values, "expected a message or a sequence of messages")
        return [cls.fit(value) for value in values]

    def to_openai(self) -> dict[str, str]:
        """The message as the OpenAI chat API takes it."""
        return {"role": self.role, "content": self.content}
