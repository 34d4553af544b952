"""`GenerateParams.json_schema`: identifiers, what each engine is given, and `response_format`
in chat requests."""

from __future__ import annotations

import collections.abc

import pytest
from pydantic import BaseModel, ValidationError

from rig_ray.errors import UnsupportedParamsError
from rig_ray.generator.litellm_ import LiteLLMGenerator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import get_generator
from rig_ray.generator.structured import response_format, vllm_sampling_kwargs
from rig_ray.generator.transformers_ import TransformersGenerator
from rig_ray.message import Message
from rig_ray.serve import response_format as serve_format
from rig_ray.serve.wire import ChatCompletionRequest
from tests.openai_stub import OpenAIStub

SCHEMA = {"type": "object", "properties": {"name": {"type": "string"}}, "required": ["name"]}


class Person(BaseModel):
    name: str
    age: int


def test_a_model_class_becomes_its_json_schema() -> None:
    params = GenerateParams(json_schema=Person)
    assert params.json_schema == Person.model_json_schema()
    assert params.to_dict() == {"json_schema": Person.model_json_schema()}
    with pytest.raises(ValidationError, match="dict or a pydantic model class"):
        GenerateParams(json_schema="person.json")


def test_identifiers_carry_the_schema_as_base64_and_round_trip() -> None:
    generator = get_generator("vllm!smollm2-135m,max_tokens=8")
    with_schema = generator.model_copy(
        update={"params": generator.params.merge_with(GenerateParams(json_schema=SCHEMA))}
    )
    identifier = with_schema.to_identifier()
    assert ",json_schema=base64:" in identifier and '"' not in identifier and "{" not in identifier
    assert get_generator(identifier) == with_schema
    assert get_generator(identifier).params.json_schema == SCHEMA


def test_vllm_structured_outputs() -> None:
    pytest.importorskip("vllm")
    kwargs = vllm_sampling_kwargs({"max_tokens": 5, "json_schema": SCHEMA})
    assert kwargs["max_tokens"] == 5 and "json_schema" not in kwargs
    constraint = kwargs.get("structured_outputs") or kwargs["guided_decoding"]
    assert constraint.json == SCHEMA
    any_object = vllm_sampling_kwargs({"json_schema": {"type": "object"}})
    assert (any_object.get("structured_outputs") or any_object["guided_decoding"]).json_object
    assert vllm_sampling_kwargs({"max_tokens": 5}) == {"max_tokens": 5}


def test_transformers_refuses_a_schema_naming_itself() -> None:
    generator = TransformersGenerator(model="smollm2-135m")
    with pytest.raises(UnsupportedParamsError, match="TransformersGenerator") as caught:
        generator._generation_kwargs(GenerateParams(json_schema=SCHEMA, max_tokens=4))
    assert caught.value.generator == "TransformersGenerator"
    assert caught.value.param == "json_schema"


@pytest.fixture
def stub() -> collections.abc.Iterator[OpenAIStub]:
    with OpenAIStub() as server:
        yield server


@pytest.mark.timeout(60)
async def test_litellm_sends_response_format(stub: OpenAIStub) -> None:
    generator = get_generator(f"openai/stub-model,api_base={stub.base_url},api_key=sk-test")
    assert isinstance(generator, LiteLLMGenerator)
    conversation = [Message(role="user", content="hi")]
    params = [GenerateParams(json_schema=SCHEMA), GenerateParams(json_schema={"type": "object"})]
    results = await generator.generate_messages([conversation, conversation], params)
    assert not any(isinstance(r, BaseException) for r in results), results
    formats = sorted((r.body["response_format"] for r in stub.requests), key=str)
    assert formats == sorted(
        [
            {"type": "json_schema", "json_schema": {"name": "reply", "schema": SCHEMA}},
            {"type": "json_object"},
        ],
        key=str,
    )
    assert all("json_schema" not in r.body for r in stub.requests)
    assert response_format(Person.model_json_schema())["json_schema"]["name"] == "Person"


def _chat(response_format: object) -> ChatCompletionRequest:
    return ChatCompletionRequest.model_validate(
        {
            "model": "m",
            "messages": [{"role": "user", "content": "hi"}],
            "response_format": response_format,
        }
    )


def test_response_format_becomes_the_params_schema() -> None:
    assert _chat({"type": "text"}).to_params().json_schema is None
    assert _chat({"type": "json_object"}).to_params().json_schema == {"type": "object"}
    wanted = {"type": "json_schema", "json_schema": {"name": "p", "schema": SCHEMA, "strict": True}}
    assert _chat(wanted).to_params().json_schema == SCHEMA


@pytest.mark.parametrize(
    ("value", "field"),
    [
        ({"type": "xml"}, "response_format.type"),
        ({"type": "json_schema"}, "response_format.json_schema"),
        ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "p", "schema": 3}}, "json_schema.schema"),
        ({"type": "json_schema", "json_schema": {"name": "p", "strict": "y"}}, "strict"),
    ],
)
def test_bad_response_formats_name_the_field(value: object, field: str) -> None:
    with pytest.raises(ValidationError, match=field):
        _chat(value)


def test_generators_that_cannot_honour_it_get_a_400_naming_the_field() -> None:
    params = GenerateParams(json_schema={"type": "object"})
    refused = serve_format.refusal(TransformersGenerator(model="smollm2-135m"), params, "smol")
    assert refused is not None
    assert (refused.status_code, refused.param) == (400, "response_format")
    assert "TransformersGenerator" in str(refused)
    vllm = get_generator("vllm!smollm2-135m")
    assert serve_format.refusal(vllm, params, "smol") is None
    assert serve_format.refusal(TransformersGenerator(model="x"), GenerateParams(), "x") is None
