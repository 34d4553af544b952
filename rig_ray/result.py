"""What chats and completions record about their generation, and how it travels as JSON."""

from __future__ import annotations

import contextlib
import typing as t
from datetime import UTC, datetime
from uuid import UUID, uuid4

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainSerializer, model_validator

from rig_ray.errors import GenerationError, RigRayError
from rig_ray.generator.base import GeneratedMessage, GeneratedText, Generator, StopReason, Usage
from rig_ray.generator.registry import get_generator, identifier_of


def _error_from_json(value: t.Any) -> t.Any:
    if not isinstance(value, str):
        return value
    error = GenerationError(value)
    error.from_json = True  # type: ignore[attr-defined]  # its text names the original type
    return error


def _error_to_json(error: BaseException | None) -> str | None:
    if error is None:
        return None
    if getattr(error, "from_json", False):
        return str(error)
    return f"{type(error).__name__}: {error}"


ErrorField = t.Annotated[
    BaseException | None,
    BeforeValidator(_error_from_json),
    PlainSerializer(_error_to_json, return_type=str | None),
]
"""An exception that dumps as `"Type: message"` and loads back as a GenerationError."""


class Result(BaseModel):
    """What chats and completions record about their generation."""

    model_config = ConfigDict(arbitrary_types_allowed=True, extra="forbid")

    uuid: UUID = Field(default_factory=uuid4)
    """Identifies this result."""
    timestamp: datetime = Field(default_factory=lambda: datetime.now(UTC))
    """When it was made."""
    metadata: dict[str, t.Any] = Field(default_factory=dict)
    """Free-form data: carried from the pipeline's `meta`, kept through JSON."""
    stop_reason: StopReason = "unknown"
    """Why generation ended, as the generator reported it."""
    usage: Usage | None = None
    """Token counts, when the generator reports them."""
    extra: dict[str, t.Any] = Field(default_factory=dict)
    """Generator-specific details (vLLM puts its metrics and request id here)."""
    failed: bool = False
    """Whether generation failed (only kept when the pipeline `catch`es the error)."""
    error: ErrorField = None
    """The failure, when `failed`."""
    generator_id: str | None = None
    """The identifier of the generator that made it, when it has one."""
    generator: Generator | None = Field(None, exclude=True, repr=False)
    """The generator itself; after JSON it is rebuilt from `generator_id` where the provider is
    registered."""

    @model_validator(mode="after")
    def _link_generator(self) -> t.Self:
        if self.generator is not None and "generator_id" not in self.model_fields_set:
            self.generator_id = identifier_of(self.generator)
        elif self.generator is None and self.generator_id is not None:
            with contextlib.suppress(RigRayError):  # a provider not registered here
                self.generator = get_generator(self.generator_id)
        return self

    def meta(self, **kwargs: t.Any) -> t.Self:
        """Add metadata; returns self."""
        self.metadata.update(kwargs)
        return self

    def record(self, result: GeneratedMessage | GeneratedText | BaseException) -> bool:
        """Put a generation's stop reason, usage (added up over retries) and extra on this
        result, or its failure; True when it succeeded. A failure keeps what came before."""
        if isinstance(result, BaseException):
            self.failed, self.error = True, result
            return False
        self.failed, self.error = False, None
        self.stop_reason = result.stop_reason
        if self.usage is not None and result.usage is not None:
            self.usage += result.usage
        else:
            self.usage = result.usage
        self.extra = {**self.extra, **result.extra}
        return True

    def _require_generator(self, generator: Generator | None) -> Generator:
        generator = generator or self.generator
        if generator is None:
            raise GenerationError(
                f"this result has no generator (identifier {self.generator_id!r} is not "
                "registered here); pass generator="
            )
        return generator
