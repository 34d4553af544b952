"""`response_format` through the official `openai` client: JSON of the schema from SmolLM2 on
vLLM (the package's one vLLM app, `vllm_url` in conftest.py), and a 400 naming the field from
a generator that cannot constrain decoding."""

from __future__ import annotations

import json
import typing as t

import openai
import pytest

from tests.serve.conftest import VLLM_MODEL
from tests.serve.support import KEY, TIMEOUT, Endpoint

pytestmark = pytest.mark.engine

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
    },
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.slow  # the vLLM app takes 80 s to start here
def test_json_schema_through_the_openai_client_on_vllm(vllm_url: str) -> None:
    client = openai.OpenAI(base_url=vllm_url, api_key=KEY, max_retries=0, timeout=TIMEOUT)
    reply = client.chat.completions.create(
        model=VLLM_MODEL,
        messages=[{"role": "user", "content": "Describe Ada Lovelace, aged 36, as JSON."}],
        max_tokens=64,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "person", "schema": PERSON, "strict": True},
        },
    )
    content = reply.choices[0].message.content or ""
    person = json.loads(content)
    assert set(person) == {"name", "age"}, content
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    assert 0 <= person["age"] <= 150 and reply.choices[0].finish_reason == "stop"


def test_a_generator_that_cannot_honour_it_answers_400(endpoint: Endpoint) -> None:
    client = openai.OpenAI(base_url=endpoint.base_url, api_key=KEY, max_retries=0, timeout=TIMEOUT)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model="smollm2-135m",  # on transformers
            messages=[{"role": "user", "content": "hi"}],
            response_format={"type": "json_object"},
        )
    error = t.cast(dict[str, t.Any], caught.value.body)
    assert error["param"] == "response_format" and error["code"] == "unsupported_parameter"
    assert "TransformersGenerator" in error["message"]
