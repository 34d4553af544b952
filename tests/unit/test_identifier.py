"""The identifier grammar `[<provider>!]<model>[,<key>=<value>]*` and the provider registry."""

from __future__ import annotations

import base64
import json
import random
import subprocess
import sys
import typing as t

import pytest
from pydantic import Field

from rig_ray import (
    GenerateParams,
    Generator,
    InvalidGeneratorError,
    LiteLLMGenerator,
    RigRayError,
    TransformersGenerator,
    UnknownProviderError,
    VLLMGenerator,
    get_generator,
    get_identifier,
    register_generator,
    registered_providers,
)
from rig_ray.generator import registry
from rig_ray.generator.serve_ import ServeGenerator
from tests.fakes import EchoGenerator, FixedGenerator


@pytest.fixture(autouse=True)
def restore_registry() -> t.Iterator[None]:
    saved = dict(registry._providers)
    yield
    registry._providers.clear()
    registry._providers.update(saved)


class CustomGenerator(Generator):
    """A user-defined provider with one field of every shape the grammar handles."""

    flag: bool = False
    count: int = 0
    ratio: float = 0.5
    label: str = "x"
    maybe: int | None = None
    tags: list[str] = Field(default_factory=list)
    options: dict[str, t.Any] = Field(default_factory=dict)


class MyVLLMGenerator(VLLMGenerator):
    lora: str | None = None


class PlainVLLMSubclass(VLLMGenerator):
    pass


class Unregistered(Generator):
    pass


# --- parsing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "model", "params", "api_key"),
    [
        ("gpt-3.5-turbo,temperature=0.5", "gpt-3.5-turbo", {"temperature": 0.5}, None),
        ("openai/gpt-4,api_key=sk-1234", "openai/gpt-4", {}, "sk-1234"),
        ("litellm!claude-3-sonnet-2024022", "claude-3-sonnet-2024022", {}, None),
        (
            "anthropic/claude-2.1,stop=output:;---,seed=1337",
            "anthropic/claude-2.1",
            {"stop": ["output:", "---"], "seed": 1337},
            None,
        ),
        (
            "together_ai/meta-llama/Llama-3-70b-chat-hf",
            "together_ai/meta-llama/Llama-3-70b-chat-hf",
            {},
            None,
        ),
        (
            "openai/google/gemma-7b,api_base=https://integrate.api.nvidia.com/v1",
            "openai/google/gemma-7b",
            {"api_base": "https://integrate.api.nvidia.com/v1"},
            None,
        ),
    ],
)
def test_litellm_examples(
    identifier: str, model: str, params: dict[str, t.Any], api_key: str | None
) -> None:
    generator = get_generator(identifier)
    assert type(generator) is LiteLLMGenerator
    assert generator.model == model
    assert generator.params == GenerateParams(**params)
    assert generator.api_key == api_key
    if "seed" in params:
        assert type(generator.params.seed) is int


def test_vllm_example_builds_without_loading() -> None:
    identifier = (
        "vllm!TinyLlama/TinyLlama-1.1B-Chat-v1.0,gpu_memory_utilization=0.3,trust_remote_code=True"
    )
    generator = get_generator(identifier)
    assert type(generator) is VLLMGenerator
    assert generator.model == "TinyLlama/TinyLlama-1.1B-Chat-v1.0"
    assert generator.gpu_memory_utilization == 0.3
    assert generator.trust_remote_code is True
    assert generator.params == GenerateParams()
    assert not generator.is_loaded


def test_transformers_example_builds_without_loading() -> None:
    generator = get_generator("transformers!meta-llama/Meta-Llama-3-8B-Instruct")
    assert type(generator) is TransformersGenerator
    assert generator.model == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert not generator.is_loaded


def test_building_local_generators_imports_no_engine() -> None:
    code = """
import sys
import rig_ray
for identifier in (
    "vllm!TinyLlama/TinyLlama-1.1B-Chat-v1.0,gpu_memory_utilization=0.3,trust_remote_code=True",
    "transformers!meta-llama/Meta-Llama-3-8B-Instruct,device=cpu",
    "gpt-4,temperature=0",
):
    generator = rig_ray.get_generator(identifier)
    assert not generator.is_loaded or identifier.startswith("gpt"), identifier
    generator.to_identifier()
print(sorted(m for m in ("torch", "vllm", "transformers", "litellm") if m in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]", result.stderr


@pytest.mark.parametrize(
    ("identifier", "get", "expected"),
    [
        ("m,api_key=1234", lambda g: g.api_key, "1234"),
        ("m,api_base=0.5", lambda g: g.params.api_base, "0.5"),
        ("m,seed=7", lambda g: g.params.seed, 7),
        ("m,temperature=1", lambda g: g.params.temperature, 1.0),
        ("m,top_k=-1", lambda g: g.params.top_k, -1),
        ("m,stop=1.5", lambda g: g.params.stop, ["1.5"]),
        ("m,stop=only", lambda g: g.params.stop, ["only"]),
        ("m,max_connections=3", lambda g: g.max_connections, 3),
        ("m,min_delay_between_requests=2", lambda g: g.min_delay_between_requests, 2.0),
        ("vllm!m,trust_remote_code=false", lambda g: g.trust_remote_code, False),
        ("vllm!m,trust_remote_code=True", lambda g: g.trust_remote_code, True),
        ("vllm!m,gpu_memory_utilization=0.3", lambda g: g.gpu_memory_utilization, 0.3),
        ("vllm!m,max_model_len=4096", lambda g: g.max_model_len, 4096),
        ("vllm!m,quantization=1", lambda g: g.quantization, "1"),
        ("transformers!m,device=0", lambda g: g.device, "0"),
    ],
)
def test_values_coerced_by_field_type(
    identifier: str, get: t.Callable[[Generator], t.Any], expected: t.Any
) -> None:
    value = get(get_generator(identifier))
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize(
    ("identifier", "provider_cls", "model", "api_base"),
    [
        ("m,api_base=http://h/?a=1&b=2", LiteLLMGenerator, "m", "http://h/?a=1&b=2"),
        ("m,api_base==x=", LiteLLMGenerator, "m", "=x="),
        ("litellm!m,api_base=http://x/!y", LiteLLMGenerator, "m", "http://x/!y"),
        ("m,api_base=a!b", LiteLLMGenerator, "m", "a!b"),
        ("vllm!/models/a!b", VLLMGenerator, "/models/a!b", None),
        ("vllm!a=b", VLLMGenerator, "a=b", None),
        ('"a!b"', LiteLLMGenerator, "a!b", None),
        ('vllm!"a,b",api_base=x', VLLMGenerator, "a,b", "x"),
        ('"a,b"', LiteLLMGenerator, "a,b", None),
        ("  vllm ! m , api_base = x  ", VLLMGenerator, "m", "x"),
    ],
)
def test_splitting(identifier: str, provider_cls: type, model: str, api_base: str | None) -> None:
    generator = get_generator(identifier)
    assert type(generator) is provider_cls
    assert generator.model == model
    assert generator.params.api_base == api_base


_EXTRA_B64 = base64.urlsafe_b64encode(json.dumps({"k": [1, "a,b"]}).encode()).decode()


@pytest.mark.parametrize(
    ("identifier", "field", "expected"),
    [
        ('m,stop="a,b";c', "stop", ["a,b", "c"]),
        ('m,stop="a;b"', "stop", ["a;b"]),
        ('m,stop=" a ";b ', "stop", [" a ", "b"]),
        ('m,stop="\\u00fc\\n"', "stop", ["ü\n"]),
        ('m,api_base="x,y=z;\\"q\\""', "api_base", 'x,y=z;"q"'),
        ('m,api_base="  x "', "api_base", "  x "),
        ('m,api_base="back\\\\slash"', "api_base", "back\\slash"),
        ('m,api_base="base64:not-decoded"', "api_base", "base64:not-decoded"),
        ('m,extra="{\\"k\\": 1}"', "extra", {"k": 1}),
        ('m,extra={"k": 1}', "extra", {"k": 1}),
        (f"m,extra=base64:{_EXTRA_B64}", "extra", {"k": [1, "a,b"]}),
        (f"m,extra=base64:{_EXTRA_B64.rstrip('=')}", "extra", {"k": [1, "a,b"]}),
    ],
)
def test_quoting(identifier: str, field: str, expected: t.Any) -> None:
    assert getattr(get_generator(identifier).params, field) == expected


@pytest.mark.parametrize("identifier", ['m,stop="";x', 'm,stop=""', "m,stop=a;;b"])
def test_an_empty_stop_string_is_refused(identifier: str) -> None:
    # It would match at once: vLLM refuses one, and transformers stopped after a token.
    with pytest.raises(InvalidGeneratorError, match="a stop string must not be empty"):
        get_generator(identifier)


def test_engine_args_dict() -> None:
    generator = get_generator('vllm!m,engine_args="{\\"swap_space\\": 4, \\"x\\": [true]}"')
    assert generator.engine_args == {"swap_space": 4, "x": [True]}


def test_get_generator_params_override_the_identifier() -> None:
    identifier = "m,temperature=0.5,seed=3,extra=base64:" + base64.urlsafe_b64encode(
        b'{"a": 1, "b": 2}'
    ).decode().rstrip("=")
    generator = get_generator(
        identifier, params=GenerateParams(temperature=0.9, extra={"b": 3, "c": 4})
    )
    assert generator.params.temperature == 0.9
    assert generator.params.seed == 3
    assert generator.params.extra == {"a": 1, "b": 3, "c": 4}
    assert get_generator(identifier, params=GenerateParams()).params.temperature == 0.5
    assert get_generator(identifier, params=None).params.temperature == 0.5


# --- round trip ----------------------------------------------------------------------------

SECRET = "sk-SECRET-never-written"

SPICY = [
    "a,b",
    "x;y",
    'say "hi"',
    "back\\slash",
    "  lead",
    "trail ",
    "k=v",
    "",
    " ",
    "ünïcødé ✓ 日本",
    "base64:abc",
    "!bang!",
    "new\nline\ttab",
    '";,=\\',
    "null",
    "True",
    "1.5",
]

_FULL_PARAMS = GenerateParams(
    temperature=0.7,
    max_tokens=12,
    top_k=-1,
    top_p=0.9,
    stop=[text for text in SPICY if text],  # an empty stop string is refused
    presence_penalty=-1.5,
    frequency_penalty=2,
    api_base="http://h:1/v1?a=1&b=2",
    timeout=3.5,
    seed=-7,
    extra={"k": [1, {"n": None}], "s": 'a,"b";c', "ü": True, "f": 1e-300},
)


def _round_trip_cases() -> list[Generator]:
    cases: list[Generator] = [
        LiteLLMGenerator(model="m"),
        VLLMGenerator(model="m"),
        TransformersGenerator(model="m"),
        LiteLLMGenerator(
            model='openai/"weird, model"',
            api_key=SECRET,
            max_connections=3,
            min_delay_between_requests=0.25,
            params=_FULL_PARAMS,
        ),
        TransformersGenerator(
            model=" /models/a,b ",
            api_key=SECRET,
            dtype="bfloat16",
            device="cuda:1",
            device_map="auto",
            trust_remote_code=True,
            params=_FULL_PARAMS,
        ),
        VLLMGenerator(
            model="/x!y",
            api_key=SECRET,
            gpu_memory_utilization=0.35,
            dtype="float16",
            quantization="awq",
            enforce_eager=True,
            trust_remote_code=True,
            max_model_len=2048,
            tensor_parallel_size=2,
            engine_args={"swap_space": 4, "kv": "fp8", "nested": {"a": [1, 2.5, True, None]}},
            params=_FULL_PARAMS,
        ),
        VLLMGenerator(model="m", params=GenerateParams(stop=[], extra={"e": {}})),
        LiteLLMGenerator(model="m", params=GenerateParams(temperature=0, top_p=1, seed=0)),
    ]
    for text in SPICY:
        cases.append(
            LiteLLMGenerator(
                model=text or "m",
                api_key=SECRET,
                params=GenerateParams(stop=[text or "s"], api_base=text, extra={text: text}),
            )
        )
        cases.append(VLLMGenerator(model=f"m{text}", dtype="float16", quantization=text))
    return cases


def _assert_round_trip(generator: Generator) -> None:
    identifier = generator.to_identifier()
    back = get_generator(identifier)
    assert type(back) is type(generator), identifier
    assert back == generator, identifier
    assert back.model_dump(exclude={"api_key"}) == generator.model_dump(exclude={"api_key"})
    assert back.to_identifier() == identifier
    assert SECRET not in identifier
    assert back.api_key is None


@pytest.mark.parametrize("generator", _round_trip_cases(), ids=lambda g: type(g).__name__)
def test_round_trip_registered_providers(generator: Generator) -> None:
    _assert_round_trip(generator)


@pytest.mark.parametrize(
    "generator",
    [
        CustomGenerator(model="m"),
        CustomGenerator(
            model="c,m",
            api_key=SECRET,
            flag=True,
            count=-3,
            ratio=1e-9,
            label=' ,;="\\ ',
            maybe=0,
            tags=SPICY,
            options={"a": [1, "b,c"], "n": None},
            params=_FULL_PARAMS,
        ),
        CustomGenerator(model="m", tags=[], label="", ratio=0.0),
        CustomGenerator(model="m", tags=[""], options={"": ""}),
    ],
    ids=lambda g: type(g).__name__,
)
def test_round_trip_custom_provider(generator: Generator) -> None:
    register_generator("custom", CustomGenerator)
    assert generator.to_identifier().startswith("custom!")
    _assert_round_trip(generator)


def test_round_trip_registered_vllm_subclass() -> None:
    register_generator("myvllm", MyVLLMGenerator)
    generator = MyVLLMGenerator(
        model="m", lora="adapters/a,b", enforce_eager=True, api_key=SECRET, params=_FULL_PARAMS
    )
    assert generator.to_identifier().startswith("myvllm!")
    _assert_round_trip(generator)
    # The base class keeps its own name.
    assert VLLMGenerator(model="m").to_identifier() == "vllm!m"


_ALPHABET = 'ab Z09,;="\\!:/.-_ü✓\n\t'


def _text(rng: random.Random, min_size: int = 0) -> str:
    return "".join(rng.choice(_ALPHABET) for _ in range(rng.randint(min_size, 8)))


def _json_value(rng: random.Random) -> t.Any:
    scalars = [None, True, False, rng.randint(-(10**20), 10**20), rng.uniform(-1e6, 1e6)]
    return rng.choice([*scalars, _text(rng), [_text(rng), 1], {_text(rng): [None, 0.5]}])


def _random_params(rng: random.Random) -> GenerateParams:
    makers: dict[str, t.Callable[[], t.Any]] = {
        "temperature": lambda: rng.choice([0.0, 7.0, 1e-300, rng.uniform(0, 2)]),
        "max_tokens": lambda: rng.randint(1, 10**6),
        "top_k": lambda: rng.randint(-1, 100),
        "top_p": lambda: rng.choice([1.0, rng.uniform(1e-9, 1)]),
        "stop": lambda: [_text(rng, min_size=1) for _ in range(rng.randint(0, 4))],
        "presence_penalty": lambda: rng.uniform(-2, 2),
        "frequency_penalty": lambda: rng.choice([-2.0, 2.0, rng.uniform(-2, 2)]),
        "api_base": lambda: _text(rng),
        "timeout": lambda: rng.uniform(1e-3, 1e3),
        "seed": lambda: rng.randint(-(2**63), 2**63 - 1),
        "extra": lambda: {_text(rng): _json_value(rng) for _ in range(rng.randint(0, 3))},
    }
    return GenerateParams(**{k: make() for k, make in makers.items() if rng.random() < 0.5})


def _random_generator(rng: random.Random) -> Generator:
    model = _text(rng, min_size=1)
    params = _random_params(rng)
    kind = rng.randrange(3)
    if kind == 0:
        return LiteLLMGenerator(
            model=model,
            params=params,
            api_key=SECRET,
            max_connections=rng.randint(1, 50),
            min_delay_between_requests=rng.choice([0.0, rng.uniform(0, 5)]),
        )
    if kind == 1:
        return TransformersGenerator(
            model=model,
            params=params,
            device=rng.choice([None, _text(rng)]),
            dtype=rng.choice(["auto", "bfloat16", "float16", "float32"]),
        )
    return VLLMGenerator(
        model=model,
        params=params,
        max_model_len=rng.choice([None, rng.randint(1, 10**5)]),
        engine_args={_text(rng): _json_value(rng) for _ in range(rng.randint(0, 2))},
    )


@pytest.mark.parametrize("seed", range(20))
def test_round_trip_random(seed: int) -> None:
    rng = random.Random(seed)
    for _ in range(10):
        _assert_round_trip(_random_generator(rng))


# --- identifiers of generators -------------------------------------------------------------


def test_to_identifier_names_most_specific_registered_provider() -> None:
    assert PlainVLLMSubclass(model="m").to_identifier() == "vllm!m"
    back = get_generator(PlainVLLMSubclass(model="m", enforce_eager=True).to_identifier())
    assert type(back) is VLLMGenerator
    assert back.enforce_eager is True

    register_generator("custom", PlainVLLMSubclass)
    assert PlainVLLMSubclass(model="m").to_identifier() == "custom!m"
    assert type(get_generator("custom!m")) is PlainVLLMSubclass
    assert VLLMGenerator(model="m").to_identifier() == "vllm!m"


def test_to_identifier_of_unregistered_generator_says_to_register() -> None:
    with pytest.raises(InvalidGeneratorError, match="register_generator"):
        Unregistered(model="m").to_identifier()


def test_get_identifier_overlays_params() -> None:
    generator = LiteLLMGenerator(model="m", params=GenerateParams(temperature=0.5, seed=1))
    overlay = GenerateParams(temperature=0.1, stop="x", extra={"k": 1})
    identifier = get_identifier(generator, overlay)
    assert identifier == generator.to_identifier(overlay)
    assert get_generator(identifier).params == generator.params.merge_with(overlay)
    assert get_generator(identifier).params.temperature == 0.1
    assert (
        get_identifier(generator)
        == get_identifier(generator, None)
        == "litellm!m,temperature=0.5,seed=1"
    )
    assert generator.params.temperature == 0.5


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("identifier", "part", "fragment"),
    [
        ("m,temprature=0.5", "temprature", "did you mean 'temperature'"),
        ("m,max_conections=2", "max_conections", "did you mean 'max_connections'"),
        ("vllm!m,max_connections=3", "max_connections", "unknown key 'max_connections'"),
        ("m,zzz=1", "zzz", "unknown key 'zzz'"),
        ("m,temperature=abc", "temperature", "'abc'"),
        ("m,seed=1.5", "seed", "'1.5'"),
        ("m,seed=", "seed", "'seed'"),
        ("m,max_connections=x", "max_connections", "'x'"),
        ("m,max_connections=0", "max_connections", "greater than or equal to 1"),
        ("vllm!m,trust_remote_code=maybe", "trust_remote_code", "'maybe'"),
        ("m,temperature=-1", "temperature", "greater than or equal to 0"),
        ("m,top_p=2", "top_p", "less than or equal to 1"),
        ("m,top_p=0", "top_p", "greater than 0"),
        ("m,max_tokens=0", "max_tokens", "'max_tokens'"),
        ("vllm!m,gpu_memory_utilization=1.5", "gpu_memory_utilization", "'1.5'"),
        ("x,temperature", "temperature", "malformed pair"),
        ("x,=1", "=1", "malformed pair"),
        ("x,", "", "malformed pair"),
        ("m,seed=1,seed=2", "seed", "given twice"),
        ("m,seed=1, seed =2", "seed", "given twice"),
        ("m,model=x", "model", "reserved"),
        ("m,params=x", "params", "reserved"),
        ('m,stop="abc', 'stop="abc', "unterminated double quote"),
        ('m,stop=a;"b', 'stop=a;"b', "unterminated double quote"),
        ('"abc', '"abc', "unterminated double quote"),
        ('m,api_base="a"b', "api_base", "quoted value"),
        ("m,extra=base64:!!!", "extra", "base64"),
        ("m,extra=base64:" + base64.urlsafe_b64encode(b"not json").decode(), "extra", "base64"),
        ("m,extra=base64:WzFd", "extra", "valid dictionary"),
        ("m,extra=notjson", "extra", "JSON object"),
        ("m,extra=[1]", "extra", "'extra'"),
        ("vllm!m,engine_args=1", "engine_args", "'engine_args'"),
        ("vllm!m,max_model_len=0", "max_model_len", "greater than or equal to 1"),
        ("vllm!m,max_model_len=-5", "max_model_len", "greater than or equal to 1"),
        ("vllm!", "", "no model"),
        ('vllm!"",seed=1', '""', "no model"),
    ],
)
def test_bad_identifier(identifier: str, part: str, fragment: str) -> None:
    with pytest.raises(InvalidGeneratorError) as info:
        get_generator(identifier)
    error = info.value
    assert isinstance(error, RigRayError)
    assert isinstance(error, ValueError)
    assert error.part == part
    assert error.identifier == identifier
    assert fragment in str(error)
    assert repr(identifier) in str(error)


@pytest.mark.parametrize(
    ("identifier", "provider"), [("nope!m", "nope"), ("openai/x!y", "openai/x"), ("VLLM!m", "VLLM")]
)
def test_unknown_provider(identifier: str, provider: str) -> None:
    register_generator("custom", CustomGenerator)
    with pytest.raises(UnknownProviderError) as info:
        get_generator(identifier)
    error = info.value
    assert isinstance(error, InvalidGeneratorError)
    assert error.provider == error.part == provider
    assert f"unknown provider {provider!r}" in str(error)
    assert "custom, litellm, serve, transformers, vllm" in str(error)
    assert "register_generator" in str(error)


@pytest.mark.parametrize("identifier", ["", "   ", "\t\n"])
def test_empty_identifier(identifier: str) -> None:
    with pytest.raises(InvalidGeneratorError, match="empty identifier"):
        get_generator(identifier)


@pytest.mark.parametrize("identifier", [None, 42, b"gpt-4", ["gpt-4"]])
def test_non_str_identifier(identifier: t.Any) -> None:
    with pytest.raises(InvalidGeneratorError, match="an identifier is a str, not"):
        get_generator(identifier)


@pytest.mark.parametrize("identifier", ["!m", " ! m", "!"])
def test_empty_provider(identifier: str) -> None:
    with pytest.raises(InvalidGeneratorError, match="empty provider before '!'"):
        get_generator(identifier)


def test_empty_provider_error_names_its_part() -> None:
    with pytest.raises(InvalidGeneratorError) as info:
        get_generator("!m")
    assert info.value.part is not None


def test_round_trip_field_set_to_none_against_non_none_default() -> None:
    class NullableGenerator(Generator):
        choice: str | None = "a"

    register_generator("nullable", NullableGenerator)
    _assert_round_trip(NullableGenerator(model="m", choice=None))


# --- registry ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["", "bad name", "a!b", "a,b", "a=b", 'q"', 42, None])
def test_register_rejects_bad_provider_name(name: t.Any) -> None:
    with pytest.raises(InvalidGeneratorError, match="bad provider name"):
        register_generator(name, EchoGenerator)
    assert name not in registered_providers()


@pytest.mark.parametrize(
    "cls", [int, "EchoGenerator", EchoGenerator(model="m"), GenerateParams, None]
)
def test_register_rejects_non_generator(cls: t.Any) -> None:
    with pytest.raises(InvalidGeneratorError, match="must be a Generator subclass"):
        register_generator("fake", cls)
    assert "fake" not in registered_providers()


@pytest.mark.parametrize("name", ["fake", "my-provider.v2", "A_1"])
def test_register_and_replace(name: str) -> None:
    register_generator(name, EchoGenerator)
    assert type(get_generator(f"{name}!m")) is EchoGenerator
    register_generator(name, FixedGenerator)
    generator = get_generator(f'{name}!m,text="a, b"')
    assert type(generator) is FixedGenerator
    assert generator.text == "a, b"
    assert registered_providers()[name] is FixedGenerator


def test_registered_providers_is_a_copy() -> None:
    providers = registered_providers()
    assert providers == {
        "litellm": LiteLLMGenerator,
        "serve": ServeGenerator,
        "transformers": TransformersGenerator,
        "vllm": VLLMGenerator,
    }
    providers["fake"] = EchoGenerator
    assert "fake" not in registered_providers()


def test_registry_restored_between_tests() -> None:
    # Registrations made by earlier tests (custom, fake, ...) are gone.
    assert set(registered_providers()) == {"litellm", "serve", "transformers", "vllm"}


# --- the interface -------------------------------------------------------------------------


class OnlyMessages(Generator):
    async def generate_messages(self, messages: t.Any, params: t.Any) -> list[t.Any]:
        return []


async def test_missing_generate_texts_raises_not_implemented() -> None:
    generator = OnlyMessages(model="m")
    assert await generator.generate_messages([], []) == []
    with pytest.raises(NotImplementedError, match="OnlyMessages does not generate text"):
        await generator.generate_texts(["x"], [GenerateParams()])


async def test_missing_generate_messages_raises_not_implemented() -> None:
    with pytest.raises(NotImplementedError, match="Unregistered does not generate chat"):
        await Unregistered(model="m").generate_messages([], [])


def test_register_rejects_fields_named_like_params() -> None:
    class Clashing(Generator):
        seed: int = 0

    with pytest.raises(InvalidGeneratorError, match="seed"):
        register_generator("clashing", Clashing)
