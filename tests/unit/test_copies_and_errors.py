"""Copies never share an engine, errors survive pickling, and extra cannot shadow fields."""

from __future__ import annotations

import copy
import pickle

import pytest
from pydantic import ValidationError

import rig_ray as rr
from rig_ray.errors import GenerationError, MissingDependencyError


@pytest.mark.parametrize(
    "error",
    [
        rr.InvalidGeneratorError("bad", identifier="x,y", part="y"),
        rr.UnknownProviderError("nope", identifier="nope!m", known=["litellm"]),
        MissingDependencyError("vllm", install="pip install x", purpose="the vllm provider"),
        rr.InvalidMessageError({"role": "robot"}, "bad role"),
        rr.ModelNotAvailableError("gone", model="m"),
        GenerationError("failed", index=3),
    ],
    ids=lambda e: type(e).__name__,
)
def test_errors_pickle_with_their_attributes(error: rr.RigRayError) -> None:
    restored = pickle.loads(pickle.dumps(error))
    assert type(restored) is type(error)
    assert str(restored) == str(error)
    assert restored.__dict__ == error.__dict__


def test_copies_are_new_unloaded_generators() -> None:
    generator = rr.LiteLLMGenerator(model="m", max_connections=1)
    generator._limiters[object] = "state"  # stands for engine state built by use
    for twin in (copy.copy(generator), copy.deepcopy(generator), generator.model_copy()):
        assert twin == generator and twin is not generator
        assert not twin._limiters
    bigger = generator.model_copy(update={"max_connections": 50})
    assert bigger.max_connections == 50 and not bigger._limiters
    with pytest.raises(ValidationError):
        generator.model_copy(update={"max_connections": 0})


@pytest.mark.parametrize("key", ["temperature", "stop", "model", "messages", "api_key"])
def test_extra_cannot_shadow_fields_or_inputs(key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        rr.GenerateParams(extra={key: 1})


def test_unregistered_subclass_with_its_own_field_must_register() -> None:
    class Tuned(rr.VLLMGenerator):
        knob: int = 0

    assert Tuned(model="m").to_identifier() == "vllm!m"
    with pytest.raises(rr.InvalidGeneratorError, match="register_generator"):
        Tuned(model="m", knob=3).to_identifier()


def test_empty_model_is_rejected() -> None:
    with pytest.raises(ValidationError):
        rr.VLLMGenerator(model="")
