"""ChatPipeline and Chat on the in-process fakes: templating, params, batching, retries, JSON."""

from __future__ import annotations

import copy
import typing as t

import backoff
import pytest

from rig_ray import (
    Chat,
    ChatPipeline,
    GenerateParams,
    GenerationError,
    Generator,
    InvalidMessageError,
    Message,
    Model,
    ParseError,
    ParseRetriesExhaustedError,
    RigRayError,
    TemplateError,
)
from rig_ray.generator import registry
from tests.fakes import (
    CallbackGenerator,
    EchoGenerator,
    FailingGenerator,
    FixedGenerator,
)


class Answer(Model):
    text: str


class Score(Model):
    value: int


def recorder(reply: t.Callable[[list[Message]], str | BaseException] = lambda c: "ok"):
    """A CallbackGenerator that keeps every conversation it is sent."""
    seen: list[list[Message]] = []

    def callback(conversation: t.Any, params: GenerateParams) -> str | BaseException:
        seen.append(list(conversation))
        return reply(list(conversation))

    return CallbackGenerator(model="m", callback=callback), seen


def contents(messages: t.Sequence[Message]) -> list[str]:
    return [m.content for m in messages]


def retry_backoff(tries: int = 3) -> t.Callable[[t.Any], t.Any]:
    return backoff.on_exception(backoff.constant, Exception, max_tries=tries, interval=0)


# --- templating and metadata -----------------------------------------------------------------


async def test_apply_touches_only_the_last_message() -> None:
    generator = EchoGenerator(model="m")
    pipeline = generator.chat(["system $x", "user $x $$"]).apply(x="1")
    assert contents(pipeline.messages) == ["system $x", "user 1 $"]
    chat = await pipeline.run()
    assert chat.last.content == "user 1 $"
    with pytest.raises(TemplateError) as info:
        generator.chat(["$x", "$y"]).apply(x="1", strict=True)
    assert (info.value.missing, info.value.unused) == (["y"], ["x"])
    with pytest.raises(GenerationError, match="no"):
        generator.chat().apply(x=1)


def test_apply_to_all_with_strict_checks_across_messages() -> None:
    pipeline = EchoGenerator(model="m").chat(["$a", {"role": "assistant", "content": "$b $a"}])
    filled = pipeline.apply_to_all({"a": 1}, b=2, strict=True)
    assert contents(filled.messages) == ["1", "2 1"]
    assert filled.messages[1].role == "assistant"
    with pytest.raises(TemplateError) as info:
        pipeline.apply_to_all(a=1, c=3, strict=True)
    assert (info.value.missing, info.value.unused) == (["b"], ["c"])
    assert contents(pipeline.apply_to_all(a=1).messages) == ["1", "$b 1"]
    tagged = pipeline.add({"role": "user", "content": "$a", "metadata": {"seen": []}})
    tagged.apply_to_all(a=1).messages[-1].metadata["seen"].append(1)
    assert tagged.messages[-1].metadata == {"seen": []}


async def test_metadata_flows_to_every_chat_and_through_json() -> None:
    base = EchoGenerator(model="m").chat("hi")
    pipeline = base.meta(a=1).meta(b="two")
    chats = await pipeline.run_many(3)
    assert [c.metadata for c in chats] == [{"a": 1, "b": "two"}] * 3
    assert chats[0].meta(c=3) is chats[0]
    assert chats[1].metadata == pipeline.metadata == {"a": 1, "b": "two"}
    assert base.metadata == {}
    again = Chat.model_validate_json(chats[0].model_dump_json())
    assert again.metadata == {"a": 1, "b": "two", "c": 3}


# --- builders and params ---------------------------------------------------------------------

BUILDERS: dict[str, t.Callable[[ChatPipeline], ChatPipeline]] = {
    "with_": lambda p: p.with_(temperature=1.0),
    "meta": lambda p: p.meta(k="v"),
    "apply": lambda p: p.apply(x="X"),
    "apply_to_all": lambda p: p.apply_to_all(x="X"),
    "add": lambda p: p.add("more"),
    "fork": lambda p: p.fork(["more", "again"]),
    "wrap": lambda p: p.wrap(retry_backoff()),
    "catch": lambda p: p.catch(on_failed="skip"),
    "watch": lambda p: p.watch(print),
    "until_parsed_as": lambda p: p.until_parsed_as(Answer, max_depth=1),
}


FIELDS = ("params", "metadata", "wrappers", "errors", "on_failed", "watchers", "parse_models")


def state(pipeline: ChatPipeline) -> list[t.Any]:
    fields = [copy.copy(getattr(pipeline, name)) for name in FIELDS]
    return [[m.model_dump() for m in pipeline.messages], *fields]


@pytest.mark.parametrize("name", list(BUILDERS))
async def test_builders_return_new_pipelines(name: str) -> None:
    generator = EchoGenerator(model="m")
    pipeline = generator.chat(["sys", "hi $x"]).meta(a=1)
    before = state(pipeline)
    built = BUILDERS[name](pipeline)
    assert isinstance(built, ChatPipeline)
    assert built is not pipeline
    assert state(built) != before
    assert state(pipeline) == before
    built.metadata["later"] = True
    built.messages[0].content = "changed"
    assert state(pipeline) == before
    chat = await pipeline.run()
    assert contents(chat.all) == ["sys", "hi $x", "hi $x"]
    assert chat.metadata == {"a": 1}


async def test_params_layer_generator_pipeline_then_item() -> None:
    defaults = GenerateParams(temperature=0.1, max_tokens=5, seed=1, extra={"a": 1, "z": 0})
    generator = EchoGenerator(model="m", params=defaults)
    pipeline = (
        generator.chat("q", params=GenerateParams(top_k=3))
        .with_(temperature=0.5)
        .with_(GenerateParams(top_p=0.9, temperature=0.6), max_tokens=7, extra={"b": 2})
    )
    assert pipeline.params == GenerateParams(
        top_k=3, temperature=0.6, top_p=0.9, max_tokens=7, extra={"b": 2}
    )
    assert pipeline.with_(GenerateParams(seed=2), seed=4).params.seed == 4  # type: ignore[union-attr]
    await pipeline.run_batch(["x", "y"], [GenerateParams(temperature=0.9, extra={"a": 3}), None])
    first, second = generator.params_seen
    assert (first.temperature, second.temperature) == (0.9, 0.6)
    assert (first.max_tokens, first.seed, first.top_k, first.top_p) == (7, 1, 3, 0.9)
    assert first.extra == {"a": 3, "z": 0, "b": 2}
    assert second.extra == {"a": 1, "z": 0, "b": 2}
    await pipeline.run_batch(["x", "y"], GenerateParams(seed=7))
    assert [p.seed for p in generator.params_seen[2:]] == [7, 7]
    with pytest.raises(GenerationError, match="2 inputs but 1 params"):
        await pipeline.run_batch(["a", "b"], [None])
    assert generator.calls == [2, 2]


# --- batching --------------------------------------------------------------------------------


async def test_run_many_is_one_batch_with_messages_once() -> None:
    generator, seen = recorder(lambda c: f"reply to {c[-1].content}")
    chats = await generator.chat([{"role": "system", "content": "sys"}, "q"]).run_many(4)
    assert generator.calls == [4]
    assert [contents(c) for c in seen] == [["sys", "q"]] * 4
    for chat in chats:
        assert contents(chat.messages) == ["sys", "q"]
        assert contents(chat.all) == ["sys", "q", "reply to q"]
        assert (chat.last.role, chat.stop_reason, chat.failed) == ("assistant", "stop", False)
        assert chat.usage is not None and chat.usage.output_tokens == 3
        assert chat.generator is generator
    assert chats[0].conversation == "[system]: sys\n\n[user]: q\n\n[assistant]: reply to q"


async def test_run_batch_appends_each_item_to_the_pipeline_messages() -> None:
    generator, seen = recorder()
    items = ["a", ["b", {"role": "assistant", "content": "c"}, Message(role="user", content="d")]]
    chats = await generator.chat(["sys", "q"]).run_batch(items)
    assert generator.calls == [2]
    assert [contents(c) for c in seen] == [["sys", "q", "a"], ["sys", "q", "b", "c", "d"]]
    assert [contents(c.messages) for c in chats] == [contents(c) for c in seen]
    assert [c.role for c in chats[1].messages] == ["user", "user", "user", "assistant", "user"]
    for one in ["ab", Message(role="user", content="ab"), {"role": "user", "content": "ab"}]:
        with pytest.raises(InvalidMessageError, match="one item per chat"):
            await generator.chat().run_batch(one)  # type: ignore[arg-type]
    assert generator.calls == [2]


async def test_chats_do_not_share_state_with_each_other_or_the_pipeline() -> None:
    pipeline = EchoGenerator(model="m").chat(["sys <answer>x</answer>", "q"]).meta(tags=["a"])
    first, second = await pipeline.run_many(2)
    first.messages[0].parse(Answer)
    first.messages[1].content = "edited"
    first.metadata["tags"].append("b")
    assert second.messages[1].content == pipeline.messages[1].content == "q"
    assert pipeline.messages[0].parts == [] and second.messages[0].parts == []
    assert second.metadata == pipeline.metadata == {"tags": ["a"]}
    user = Message(role="user", content="<answer>y</answer>")
    (chat,) = await pipeline.run_batch([user])
    chat.messages[-1].parse(Answer)
    assert user.parts == []


# --- failures: catch, wrap, watch ------------------------------------------------------------


async def test_uncaught_failure_raises() -> None:
    generator = FailingGenerator(model="m")
    with pytest.raises(GenerationError, match="refused 'FAIL 1'"):
        await generator.chat().run_batch(["ok", "FAIL 1", "ok 2"])
    assert generator.calls == [3]
    with pytest.raises(GenerationError):
        await generator.chat("FAIL").catch(ValueError, KeyError).run()


@pytest.mark.parametrize("errors", [(), (GenerationError,), (RigRayError, ValueError)])
async def test_catch_include_and_skip(errors: tuple[type[Exception], ...]) -> None:
    pipeline = FailingGenerator(model="m").chat()
    chats = await pipeline.catch(*errors).run_batch(["ok", "FAIL 1", "ok 2"])
    assert [c.failed for c in chats] == [False, True, False]
    assert isinstance(chats[1].error, GenerationError)
    assert chats[1].generated == [] and chats[0].error is None
    kept = await pipeline.catch(*errors, on_failed="skip").run_batch(["ok", "FAIL 1", "ok 2"])
    assert [c.last.content for c in kept] == ["ok", "ok 2"]
    lone = await pipeline.catch(*errors, on_failed="skip").add("FAIL").run()
    assert lone.failed and isinstance(lone.error, GenerationError)
    with pytest.raises(ValueError, match="on_failed"):
        pipeline.catch(on_failed="ignore")  # type: ignore[arg-type]
    with pytest.raises(GenerationError, match="FAIL 1"):
        await pipeline.catch(*errors, on_failed="raise").run_batch(["ok", "FAIL 1"])


async def test_wrap_retries_only_the_failing_items() -> None:
    attempts: dict[str, int] = {}

    def reply(conversation: list[Message]) -> str | BaseException:
        key = conversation[-1].content
        attempts[key] = attempts.get(key, 0) + 1
        needed = {"good": 1, "flaky": 2, "flakier": 3}.get(key, 99)
        return f"ok {key}" if attempts[key] >= needed else GenerationError(f"down {key}")

    generator, seen = recorder(reply)
    pipeline = generator.chat("sys").wrap(retry_backoff())
    chats = await pipeline.run_batch(["good", "flaky", "flakier"])
    assert generator.calls == [3, 2, 1]
    assert " ".join(c[-1].content for c in seen) == "good flaky flakier flaky flakier flakier"
    assert [c.last.content for c in chats] == ["ok good", "ok flaky", "ok flakier"]

    attempts.clear()
    chats = await pipeline.catch().run_batch(["good", "never"])
    assert generator.calls[3:] == [2, 1, 1]
    assert [c.failed for c in chats] == [False, True]
    with pytest.raises(GenerationError, match="down never"):
        await pipeline.run_batch(["never"])


async def test_wrap_leaves_other_pipelines_on_the_same_generator_alone() -> None:
    generator = FailingGenerator(model="m")
    wrapped = generator.chat().wrap(retry_backoff(4)).catch()
    plain = generator.chat().catch()
    assert (await plain.run_batch(["FAIL"]))[0].failed
    assert generator.calls == [1]
    assert (await wrapped.run_batch(["FAIL"]))[0].failed
    assert generator.calls == [1, 1, 1, 1, 1]
    assert (await plain.run_batch(["FAIL"]))[0].failed
    assert generator.calls == [1, 1, 1, 1, 1, 1]
    assert generator == FailingGenerator(model="m")


async def test_watch_callbacks_receive_every_run() -> None:
    received: list[tuple[str, list[Chat]]] = []

    async def later(chats: list[Chat]) -> None:
        received.append(("async", chats))

    pipeline = FailingGenerator(model="m").chat().catch(on_failed="skip")
    pipeline = pipeline.watch(lambda chats: received.append(("sync", chats))).watch(later)
    chats = await pipeline.run_batch(["a", "FAIL", "b"])
    assert [kind for kind, _ in received] == ["sync", "async"]
    for _, watched in received:
        assert [c.failed for c in watched] == [False, True, False]
        assert watched[0] is chats[0] and watched[2] is chats[1]
    await pipeline.run()
    assert len(received) == 4 and len(received[3][1]) == 1


# --- until_parsed_as -------------------------------------------------------------------------


async def test_parsed_chats_are_not_sent_again() -> None:
    generator = FixedGenerator(model="m", text="<answer> 42 </answer>")
    chats = await generator.chat("q").until_parsed_as(Answer).run_many(3)
    assert generator.calls == [3]
    assert [c.last.parse(Answer).text for c in chats] == ["42"] * 3
    assert chats[0].last.content == "<answer>42</answer>"
    assert "parse_retries" not in chats[0].extra


async def test_one_call_per_retry_round_with_only_the_unparsed() -> None:
    needed = {"p0": 0, "p1": 1, "p2": 2, "p3": 99}

    def reply(conversation: list[Message]) -> str:
        retries = sum(m.role == "assistant" for m in conversation)
        done = retries >= needed[conversation[1].content]
        return "<answer>yes</answer>" if done else "no answer here"

    generator, seen = recorder(reply)
    pipeline = generator.chat("sys").until_parsed_as(Answer, max_depth=2)
    chats = await pipeline.catch().run_batch(["p0", "p1", "p2", "p3"])
    assert generator.calls == [4, 3, 2]
    assert [c.failed for c in chats] == [False, False, False, True]
    assert [c.extra.get("parse_retries") for c in chats] == [None, 1, 2, 2]
    for chat, prompt in zip(chats, ["p0", "p1", "p2", "p3"], strict=True):
        assert contents(chat.messages) == ["sys", prompt]
        assert len(chat.generated) == 1
    error = chats[3].error
    assert isinstance(error, ParseRetriesExhaustedError)
    assert (error.models, error.max_depth) == (["Answer"], 2)
    with pytest.raises(ParseError) as expected:
        Message(role="assistant", content="no answer here").parse(Answer)
    assert str(expected.value) in error.last_error
    retry = seen[4]  # the first retry round starts with p1
    assert contents(retry)[:3] == ["sys", "p1", "no answer here"]
    assert retry[3].role == "user" and str(expected.value) in retry[3].content
    assert [contents(c).count("sys") for c in seen] == [1] * len(seen)
    with pytest.raises(ParseRetriesExhaustedError, match="Answer"):
        await pipeline.run_batch(["p3"])


async def test_a_retry_that_fails_keeps_the_reply_before_it() -> None:
    replies = iter(["no answer here", GenerationError("down")])
    generator, _ = recorder(lambda c: next(replies))
    chat = await generator.chat("q").until_parsed_as(Answer).catch().run()
    assert chat.failed and isinstance(chat.error, GenerationError)
    assert contents(chat.generated) == ["no answer here"]


async def test_retry_shows_the_validation_error_and_needs_every_model() -> None:
    invalid, partial = "<score>many</score><answer>a</answer>", "<score>3</score>"
    replies = iter([invalid, partial, "<score>4</score><answer>b</answer>"])
    generator, seen = recorder(lambda c: next(replies))
    chat = await generator.chat("q").until_parsed_as(Answer, Score, max_depth=3).run()
    assert generator.calls == [1, 1, 1]
    assert "Score" in seen[1][-1].content and "value" in seen[1][-1].content
    assert "<answer>" in seen[2][-1].content
    assert chat.last.parse_many(Score, Answer) == [Score(value=4), Answer(text="b")]


@pytest.mark.parametrize("depth", [0, 1, 3])
async def test_max_depth_exhaustion_and_usage_over_retries(depth: int) -> None:
    generator, seen = recorder(lambda c: "two words")
    pipeline = generator.chat("q").until_parsed_as(Answer, max_depth=depth)
    with pytest.raises(ParseRetriesExhaustedError):
        await pipeline.run()
    assert generator.calls == [1] * (depth + 1)
    chat = await pipeline.catch().run()
    assert chat.failed and isinstance(chat.error, ParseRetriesExhaustedError)
    assert chat.usage is not None
    assert chat.usage.output_tokens == 2 * (depth + 1)
    later = seen[depth + 1 :]
    assert chat.usage.input_tokens == sum(len(c[-1].content.split()) for c in later)
    with pytest.raises(ValueError):
        generator.chat("q").until_parsed_as(Answer, max_depth=-1)
    with pytest.raises(ValueError):
        generator.chat("q").until_parsed_as()


# --- Chat: fork, continue_, restart, JSON ----------------------------------------------------


async def test_fork_continue_and_restart() -> None:
    generator, seen = recorder(lambda c: "r")
    chat = (await generator.chat(["sys", "q"]).meta(tag=1).run()).meta(extra=2)
    assert contents(chat.fork("next").messages) == ["sys", "q", "next"]
    assert contents(chat.continue_(["next", "more"]).messages) == ["sys", "q", "r", "next", "more"]
    assert contents(chat.restart().messages) == ["sys", "q"]
    assert contents(chat.restart(include_all=True).messages) == ["sys", "q", "r"]
    forked = await chat.continue_("next").run()
    assert contents(seen[-1]) == ["sys", "q", "r", "next"]
    assert forked.metadata == {"tag": 1, "extra": 2}
    assert contents(chat.all) == ["sys", "q", "r"]
    other = EchoGenerator(model="m")
    await chat.restart(generator=other).run()
    assert other.calls == [1]


async def test_chat_json_round_trip_brings_the_generator_back(fake_providers: None) -> None:
    generator = FixedGenerator(model="m", text="<answer>a</answer>", params=GenerateParams(seed=3))
    chat = await generator.chat("q").meta(k=[1]).until_parsed_as(Answer).run()
    chat.extra["note"] = "kept"
    assert chat.generator_id is not None and chat.generator_id.startswith("fixed!m")
    again = Chat.model_validate_json(chat.model_dump_json())
    assert again.generator == generator and again.generator is not generator
    assert (again.metadata, again.extra) == ({"k": [1]}, {"note": "kept"})
    assert (again.stop_reason, again.usage) == ("stop", chat.usage)
    assert again.all == chat.all and again.last.models == [Answer(text="a")]
    rerun = await again.restart().run()
    assert rerun.last.content == "<answer>a</answer>" and rerun.metadata == {"k": [1]}
    assert again.generator.calls == [1]  # type: ignore[union-attr]


async def test_chat_json_without_registered_provider(fake_providers: None) -> None:
    echo = await EchoGenerator(model="m").chat("q").run()
    registry._providers.clear()
    unregistered = await EchoGenerator(model="m").chat("q").run()
    assert unregistered.generator_id is None
    for chat in (echo, unregistered):
        again = Chat.model_validate_json(chat.model_dump_json())
        assert again.generator is None and again.generator_id == chat.generator_id
        with pytest.raises(RigRayError, match="no generator"):
            again.restart()
        with pytest.raises(RigRayError, match="no generator"):
            again.fork("more")
        assert contents(again.restart(generator=EchoGenerator(model="m")).messages) == ["q"]


async def test_error_survives_json_as_generation_error() -> None:
    chat = await FailingGenerator(model="m").chat("FAIL").catch().run()
    again = Chat.model_validate_json(chat.model_dump_json())
    assert again.failed and isinstance(again.error, GenerationError)
    assert str(again.error) == f"GenerationError: {chat.error}"
    twice = Chat.model_validate_json(again.model_dump_json())
    assert str(twice.error) == str(again.error)  # no second "GenerationError: " prefix


class ChatOnlyGenerator(EchoGenerator):
    generate_texts = Generator.generate_texts


async def test_generator_without_generate_texts_cannot_complete() -> None:
    generator = ChatOnlyGenerator(model="m")
    assert (await generator.chat("q").run()).last.content == "q"
    with pytest.raises(NotImplementedError, match="text completions"):
        await generator.complete("q").run()
    with pytest.raises(NotImplementedError, match="chat messages"):
        await Generator(model="m").chat("q").run()
