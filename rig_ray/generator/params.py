"""`GenerateParams`: the sampling and request settings of a generation, their checks and how
they merge."""

from __future__ import annotations

import typing as t

from pydantic import BaseModel, ConfigDict, Field, field_validator

from rig_ray.generator import structured

_REQUEST_KEYS = {"model", "messages", "prompt", "prompts", "api_key"}


class GenerateParams(BaseModel):
    """Sampling and request settings; an unset (None) field leaves the engine's default."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float | None = Field(None, ge=0, allow_inf_nan=False)
    """Sampling temperature; 0 means greedy."""
    max_tokens: int | None = Field(None, ge=1)
    """Most tokens to generate."""
    top_k: int | None = Field(None, ge=-1)
    """Sample from the k most likely tokens (-1 or 0: all, where the engine allows it)."""
    top_p: float | None = Field(None, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens whose probability reaches top_p."""
    stop: list[str] | None = None
    """Strings that end generation; written `stop=a;b` in an identifier."""
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    """Penalty on tokens that already appeared."""
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    """Penalty growing with how often a token appeared."""
    api_base: str | None = None
    """Base URL of a remote API."""
    timeout: float | None = Field(None, gt=0, allow_inf_nan=False)
    """Seconds a remote request may take."""
    seed: int | None = Field(None, ge=-(2**63), lt=2**63)
    """Random seed, for repeatable sampling (64 bits, as the engines take it)."""
    json_schema: dict[str, t.Any] | None = None
    """Constrain the reply to JSON matching this schema (a dict, or a pydantic model class,
    turned into its schema); vLLM and LiteLLM honour it, other generators refuse it."""
    extra: dict[str, t.Any] = Field(default_factory=dict)
    """Engine-specific settings, passed through to the engine call as they are."""

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: t.Any) -> t.Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _no_empty_stop_string(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and any(not text for text in value):
            raise ValueError("a stop string must not be empty")  # it would match at once
        return value

    @field_validator("json_schema", mode="before")
    @classmethod
    def _schema_of_model(cls, value: t.Any) -> t.Any:
        return None if value is None else structured.schema_dict(value)

    @field_validator("extra")
    @classmethod
    def _extra_adds_only(cls, value: dict[str, t.Any]) -> dict[str, t.Any]:
        shadowed = sorted(set(value) & (set(cls.model_fields) | _REQUEST_KEYS))
        if shadowed:
            raise ValueError(
                f"extra may not set {', '.join(shadowed)}: use the fields of GenerateParams, "
                "and the generator for model and inputs"
            )
        return value

    def merge_with(self, *others: GenerateParams | None) -> GenerateParams:
        """These params overlaid with `others`, later ones winning; unset fields never override.

        `extra` merges key by key.
        """
        values = self.model_dump(exclude_none=True)
        extra = dict(values.pop("extra", {}))
        for other in others:
            if other is None:
                continue
            other_values = other.model_dump(exclude_none=True)
            extra.update(other_values.pop("extra", {}))
            values.update(other_values)
        return GenerateParams(**values, extra=extra)

    def to_dict(self) -> dict[str, t.Any]:
        """The set fields as keyword arguments for an engine call, with `extra` flattened in."""
        values = self.model_dump(exclude_none=True)
        extra = values.pop("extra", {})
        return {**values, **extra}
