"""Completions: a text and what a generator wrote after it, and the pipelines that make them."""

from __future__ import annotations

import copy
import typing as t

from rig_ray.generator.base import GeneratedMessage, GeneratedText, Generator
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.registry import identifier_of
from rig_ray.message import fill_templates
from rig_ray.pipeline import Pipeline
from rig_ray.result import Result


class Completion(Result):
    """A prompt text and the text generated after it."""

    text: str
    """The prompt."""
    generated: str = ""
    """The generated text (empty when failed)."""

    def record(self, result: GeneratedMessage | GeneratedText | BaseException) -> bool:
        """`Result.record`, and the generated text becomes `generated`."""
        if not super().record(result):
            return False
        self.generated = t.cast(GeneratedText, result).text
        return True

    @property
    def all(self) -> str:
        """text + generated."""
        return self.text + self.generated

    def restart(
        self, *, generator: Generator | None = None, include_all: bool = False
    ) -> CompletionPipeline:
        """A pipeline from this completion's text (and the generated text, with include_all)."""
        text = self.all if include_all else self.text
        return CompletionPipeline(self._require_generator(generator), text).meta(**self.metadata)

    def fork(self, text: str, *, include_all: bool = False) -> CompletionPipeline:
        """A pipeline from this completion's text (and generated text, with include_all) + text."""
        return self.restart(include_all=include_all).add(text)

    def continue_(self, text: str) -> CompletionPipeline:
        """A pipeline from the whole text, generated part included, plus `text`."""
        return self.fork(text, include_all=True)


class CompletionPipeline(Pipeline):
    """A prompt text plus settings, ready to generate one completion or a batch of them."""

    def __init__(self, generator: Generator, text: str = "", params: GenerateParams | None = None):
        super().__init__(generator, params)
        if not isinstance(text, str):
            raise TypeError(f"a completion prompt is a str, got {type(text).__name__}")
        self.text = text

    def add(self, text: str) -> t.Self:
        """A pipeline with `text` appended to the prompt."""
        twin = self.clone()
        twin.text = self.text + text
        return twin

    def fork(self, text: str) -> t.Self:
        """A separate pipeline that continues with `text`; this one is left as it was."""
        return self.add(text)

    def apply(
        self,
        values: t.Mapping[str, t.Any] | None = None,
        /,
        *,
        strict: bool = False,
        **kwargs: t.Any,
    ) -> t.Self:
        """Fill `$name` fields in the prompt (see `fill_templates`)."""
        twin = self.clone()
        (twin.text,) = fill_templates([self.text], {**(values or {}), **kwargs}, strict=strict)
        return twin

    async def run(self) -> Completion:
        """Generate one completion."""
        (completion,) = await self._run([""], None, keep_failed=True)
        return completion

    async def run_many(self, count: int) -> list[Completion]:
        """Generate `count` completions of the same prompt, in one batch."""
        return await self._run([""] * count, None)

    async def run_batch(
        self,
        many: t.Sequence[str],
        params: GenerateParams | t.Sequence[GenerateParams | None] | None = None,
    ) -> list[Completion]:
        """Generate one completion per text of `many` (appended to this pipeline's prompt), in
        one batch; `params` is one GenerateParams for all, or one per item."""
        if isinstance(many, str) or not all(isinstance(item, str) for item in many):
            raise TypeError("run_batch takes a sequence of str")
        return await self._run(list(many), params)

    async def _run(
        self, additions: list[str], params: t.Any, *, keep_failed: bool = False
    ) -> list[Completion]:
        texts = [self.text + added for added in additions]
        item_params = self.item_params(params, len(texts))
        results = await self.generate(self.generator.generate_texts, texts, item_params)
        generator_id = identifier_of(self.generator)
        completions = [
            self._completion(text, result, generator_id)
            for text, result in zip(texts, results, strict=True)
        ]
        await self.notify(completions)
        return self.settle(completions, keep_failed=keep_failed)

    def _completion(
        self, text: str, result: GeneratedText | BaseException, generator_id: str | None
    ) -> Completion:
        completion = Completion(
            text=text,
            metadata=copy.deepcopy(self.metadata),
            generator=self.generator,
            generator_id=generator_id,
        )
        completion.record(result)
        return completion
