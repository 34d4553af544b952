"""CompletionPipeline and Completion on the in-process fakes."""

from __future__ import annotations

import typing as t

import backoff
import pytest

from rig_ray import (
    Completion,
    CompletionPipeline,
    GenerateParams,
    GenerationError,
    RigRayError,
    TemplateError,
)
from rig_ray.generator import registry
from tests.fakes import CallbackGenerator, EchoGenerator, FailingGenerator


def recorder(reply: t.Callable[[str], str | BaseException] = lambda text: " done"):
    """A CallbackGenerator that keeps every text it is sent."""
    seen: list[str] = []

    def callback(text: t.Any, params: GenerateParams) -> str | BaseException:
        seen.append(text)
        return reply(text)

    return CallbackGenerator(model="m", callback=callback), seen


async def test_completion_holds_prompt_and_generated_text() -> None:
    generator, seen = recorder(lambda text: " three more words")
    completion = await generator.complete("Once upon").run()
    assert seen == ["Once upon"]
    assert (completion.text, completion.generated) == ("Once upon", " three more words")
    assert completion.all == "Once upon three more words"
    assert completion.stop_reason == "stop" and not completion.failed
    assert completion.usage is not None
    assert (completion.usage.input_tokens, completion.usage.output_tokens) == (2, 3)
    assert completion.generator is generator


async def test_apply_fills_the_prompt() -> None:
    generator, seen = recorder()
    pipeline = generator.complete("Say $word, not $other or $$x")
    await pipeline.apply({"word": "a"}, other="b").run()
    assert seen == ["Say a, not b or $x"]
    assert pipeline.text == "Say $word, not $other or $$x"
    assert pipeline.apply(word="a").text == "Say a, not $other or $x"
    with pytest.raises(TemplateError) as info:
        pipeline.apply(word="a", nope=1, strict=True)
    assert (info.value.missing, info.value.unused) == (["other"], ["nope"])


async def test_run_many_and_run_batch_are_one_batch() -> None:
    generator, seen = recorder()
    many = await generator.complete("P:").run_many(3)
    assert generator.calls == [3]
    assert [c.text for c in many] == ["P:"] * 3
    batch = await generator.complete("P:").run_batch([" a", " b"])
    assert generator.calls == [3, 2]
    assert seen[3:] == ["P: a", "P: b"]
    assert [c.text for c in batch] == ["P: a", "P: b"]
    with pytest.raises(TypeError):
        await generator.complete("P:").run_batch("ab")
    with pytest.raises(TypeError):
        await generator.complete("P:").run_batch(["a", 1])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        generator.complete(["not", "a", "str"])  # type: ignore[arg-type]
    assert generator.calls == [3, 2]


async def test_params_layer_generator_pipeline_then_item() -> None:
    generator = EchoGenerator(model="m", params=GenerateParams(temperature=0.1, seed=1))
    pipeline = generator.complete("x").with_(temperature=0.5, max_tokens=9)
    await pipeline.run_batch(["a", "b"], [GenerateParams(temperature=0.9), None])
    assert [p.temperature for p in generator.params_seen] == [0.9, 0.5]
    assert {(p.seed, p.max_tokens) for p in generator.params_seen} == {(1, 9)}
    with pytest.raises(GenerationError, match="2 inputs but 3 params"):
        await pipeline.run_batch(["a", "b"], [None, None, None])
    assert generator.calls == [2]


@pytest.mark.parametrize(
    "build",
    [
        lambda p: p.with_(seed=3),
        lambda p: p.meta(k=1),
        lambda p: p.apply(x="X"),
        lambda p: p.add(" more"),
        lambda p: p.fork(" more"),
        lambda p: p.wrap(backoff.on_exception(backoff.constant, Exception, max_tries=2)),
        lambda p: p.catch(),
        lambda p: p.watch(print),
    ],
)
async def test_builders_leave_the_original_alone(
    build: t.Callable[[CompletionPipeline], CompletionPipeline],
) -> None:
    generator, seen = recorder()
    pipeline = generator.complete("go $x").meta(a=1)

    def snapshot(p: CompletionPipeline) -> tuple[t.Any, ...]:
        return (p.text, p.params, dict(p.metadata), p.wrappers, p.errors, p.watchers)

    before = snapshot(pipeline)
    built = build(pipeline)
    assert isinstance(built, CompletionPipeline) and built is not pipeline
    assert snapshot(built) != before
    built.metadata["later"] = True
    assert snapshot(pipeline) == before
    completion = await pipeline.run()
    assert seen == ["go $x"] and completion.metadata == {"a": 1}


async def test_metadata_is_copied_onto_each_completion_and_kept_in_json() -> None:
    pipeline = EchoGenerator(model="m").complete("x").meta(tags=["a"])
    first, second = await pipeline.run_many(2)
    first.meta(more=1).metadata["tags"].append("b")
    assert second.metadata == pipeline.metadata == {"tags": ["a"]}
    again = Completion.model_validate_json(first.model_dump_json())
    assert again.metadata == {"tags": ["a", "b"], "more": 1}
    assert (again.text, again.generated, again.usage) == ("x", "x", first.usage)


async def test_catch_modes() -> None:
    generator = FailingGenerator(model="m")
    with pytest.raises(GenerationError, match="refused"):
        await generator.complete().run_batch(["ok", "FAIL"])
    with pytest.raises(GenerationError):
        await generator.complete().catch(TypeError).run_batch(["FAIL"])
    included = await generator.complete().catch().run_batch(["ok", "FAIL"])
    assert [c.failed for c in included] == [False, True]
    assert included[1].generated == "" and isinstance(included[1].error, GenerationError)
    skipped = await generator.complete().catch(on_failed="skip").run_batch(["ok", "FAIL", "ok2"])
    assert [c.generated for c in skipped] == ["ok", "ok2"]
    assert (await generator.complete("FAIL").catch(on_failed="skip").run()).failed
    assert generator.calls == [2, 1, 2, 3, 1]


async def test_wrap_retries_only_failing_items_and_watch_sees_results() -> None:
    attempts: dict[str, int] = {}

    def reply(text: str) -> str | BaseException:
        attempts[text] = attempts.get(text, 0) + 1
        return "!" if attempts[text] >= {"a": 1, "b": 2}.get(text, 99) else GenerationError(text)

    watched: list[list[Completion]] = []

    async def watcher(completions: list[Completion]) -> None:
        watched.append(completions)

    generator, _ = recorder(reply)
    retrying = backoff.on_exception(backoff.constant, Exception, max_tries=3, interval=0)
    pipeline = generator.complete().wrap(retrying).watch(watcher).catch()
    results = await pipeline.run_batch(["a", "b", "c"])
    assert generator.calls == [3, 2, 1]
    assert [r.failed for r in results] == [False, False, True]
    assert watched == [results]
    await generator.complete().catch().run_batch(["c"])
    assert generator.calls == [3, 2, 1, 1]


async def test_fork_continue_restart_and_json(fake_providers: None) -> None:
    generator = EchoGenerator(model="m")
    completion = await generator.complete("ab").meta(k=1).run()
    assert completion.generator_id == "echo!m"
    assert completion.fork("c").text == "abc"
    assert completion.continue_("c").text == "ababc"
    assert completion.restart(include_all=True).text == "abab"
    again = Completion.model_validate_json(completion.model_dump_json())
    assert again.generator == generator and again.generator is not generator
    rerun = await again.restart().run()
    assert (rerun.text, rerun.generated, rerun.metadata) == ("ab", "ab", {"k": 1})
    registry._providers.clear()
    lost = Completion.model_validate_json(completion.model_dump_json())
    assert lost.generator is None and lost.generator_id == "echo!m"
    with pytest.raises(RigRayError, match="echo!m"):
        lost.restart()
    assert lost.restart(generator=generator).text == "ab"


async def test_failed_completion_error_survives_json() -> None:
    failed = await FailingGenerator(model="m").complete("FAIL").catch().run()
    again = Completion.model_validate_json(failed.model_dump_json())
    assert again.failed and isinstance(again.error, GenerationError)
    assert "refused 'FAIL'" in str(again.error)
