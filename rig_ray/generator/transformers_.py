"""Transformers: a local causal LM, one batched `generate` per group of equal params."""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import gc
import json
import logging
import sys
import threading
import typing as t

from pydantic import PrivateAttr

from rig_ray._deps import require
from rig_ray.embedded import resolve_model
from rig_ray.errors import ModelNotAvailableError
from rig_ray.generator import structured
from rig_ray.generator.base import (
    DEFAULT_MAX_TOKENS,
    GeneratedMessage,
    GeneratedText,
    Messages,
    StopReason,
    Usage,
)
from rig_ray.generator.cpu import auto_cpu_dtype
from rig_ray.generator.local import LocalGenerator, cancelled
from rig_ray.generator.params import GenerateParams
from rig_ray.message import Message

logger = logging.getLogger(__name__)

_REMOTE_ONLY = {"api_base", "timeout"}
_UNSUPPORTED = {"presence_penalty", "frequency_penalty"}
_warned: set[str] = set()


@dataclasses.dataclass
class _Output:
    text: str
    stop_reason: StopReason
    usage: Usage


def _params_key(params: GenerateParams) -> str:
    return json.dumps(params.to_dict(), sort_keys=True, default=str)


class TransformersGenerator(LocalGenerator):
    """Runs a Hugging Face causal LM in this process, batching each call into `generate`.

    The model is a local folder, a hub name (where the machine can reach a hub), or the short
    name of an embedded model (`smollm2-135m`).
    """

    dtype: t.Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    """Torch dtype of the weights. auto keeps the checkpoint's, except on a CPU without native
    16-bit arithmetic, where it loads float32 (about 3x faster there)."""
    device: str | None = None
    """Where to run: cpu, cuda, cuda:1, ...; unset picks CUDA when present."""
    device_map: str | None = None
    """Accelerate device map (e.g. auto) to spread a large model; overrides `device`."""
    trust_remote_code: bool = False
    """Allow model code from the model folder."""

    _model: t.Any = PrivateAttr(None)
    _tokenizer: t.Any = PrivateAttr(None)
    _counter: t.Any = PrivateAttr(None)
    """A copy of the tokenizer for counting prompts while the engine thread generates (a fast
    tokenizer refuses to be used from two threads while one changes its padding)."""
    _counter_lock: threading.Lock = PrivateAttr(default_factory=threading.Lock)

    @classmethod
    def from_obj(
        cls,
        model: t.Any,
        tokenizer: t.Any,
        *,
        params: GenerateParams | None = None,
        **fields: t.Any,
    ) -> TransformersGenerator:
        """Wrap an already-built transformers model and tokenizer."""
        name = getattr(model, "name_or_path", None) or type(model).__name__
        generator = cls(model=name, params=params or GenerateParams(), **fields)
        generator._install(model, tokenizer)
        return generator

    @property
    def is_loaded(self) -> bool:
        return self._model is not None

    def _install(self, model: t.Any, tokenizer: t.Any) -> None:
        tokenizer.padding_side = "left"
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        model.eval()
        self._model, self._tokenizer = model, tokenizer
        self._counter = None

    def takes_a_gpu_where_there_is_one(self) -> bool:
        if self.device_map is not None:  # accelerate places it on whatever GPUs it sees
            return self.device_map != "cpu"
        return self.device is None or self.device.startswith("cuda")

    def spreads_over_its_gpus(self) -> bool:
        return self.device_map is not None and self.device_map != "cpu"

    def load(self) -> t.Self:
        with self._lock:
            if self._model is not None:
                return self
            torch = require("torch", purpose="the transformers provider")
            transformers = require("transformers", purpose="the transformers provider")
            path = resolve_model(self.model)
            options: dict[str, t.Any] = {"trust_remote_code": self.trust_remote_code}
            try:
                tokenizer = transformers.AutoTokenizer.from_pretrained(path, **options)
                device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
                dtype = self._load_dtype(path, on_cpu=not self.device_map and device == "cpu")
                if dtype is not None:
                    options["dtype"] = getattr(torch, dtype)
                if self.device_map:
                    options["device_map"] = self.device_map
                model = transformers.AutoModelForCausalLM.from_pretrained(path, **options)
                if not self.device_map:
                    model.to(device)
            except (OSError, ValueError, RuntimeError) as error:
                raise ModelNotAvailableError(
                    f"transformers could not load {self.model!r}: {error}", model=self.model
                ) from error
            self._install(model, tokenizer)
        return self

    def _load_dtype(self, path: str, *, on_cpu: bool) -> str | None:
        """The dtype to load in: the one asked for, else float32 on a CPU that would emulate
        the checkpoint's 16-bit dtype, else None (the checkpoint's own)."""
        if self.dtype != "auto":
            return self.dtype
        return auto_cpu_dtype(path) if on_cpu else None

    def unload(self) -> t.Self:
        with self._lock:
            self._model = self._tokenizer = self._counter = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self

    async def context_window(self) -> int | None:
        """The model's `max_position_embeddings` (None before load, or when it has none)."""
        config = getattr(self._model, "config", None)
        value = getattr(config, "max_position_embeddings", None)
        return value if isinstance(value, int) and value > 0 else None

    async def count_prompt_tokens(self, prompt: t.Sequence[Message] | str) -> int | None:
        """Tokens of the prompt as `generate_*` encodes it (None before load)."""
        if self._tokenizer is None:
            return None
        return await asyncio.to_thread(self._count, prompt)

    def _count(self, prompt: t.Sequence[Message] | str) -> int | None:
        with self._counter_lock:
            tokenizer = self._tokenizer
            if tokenizer is None:
                return None
            if self._counter is None:
                self._counter = copy.deepcopy(tokenizer)
            counter = self._counter
            if isinstance(prompt, str):
                return len(counter(prompt, add_special_tokens=True)["input_ids"])
            text = counter.apply_chat_template(
                [message.to_openai() for message in prompt],
                tokenize=False,
                add_generation_prompt=True,
            )
            return len(counter(text, add_special_tokens=False)["input_ids"])

    async def generate_messages(
        self, messages: Messages, params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedMessage | BaseException]:
        merged = self.merged_params(params, len(messages))
        conversations = [[message.to_openai() for message in conv] for conv in messages]
        outputs = await self._in_engine_thread(self._generate, conversations, merged)
        return [
            GeneratedMessage(
                message=Message(role="assistant", content=out.text),
                stop_reason=out.stop_reason,
                usage=out.usage,
            )
            if isinstance(out, _Output)
            else out
            for out in outputs
        ]

    async def generate_texts(
        self, texts: t.Sequence[str], params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedText | BaseException]:
        merged = self.merged_params(params, len(texts))
        outputs = await self._in_engine_thread(self._generate, list(texts), merged)
        return [
            GeneratedText(text=out.text, stop_reason=out.stop_reason, usage=out.usage)
            if isinstance(out, _Output)
            else out
            for out in outputs
        ]

    def _generate(
        self, items: list[str] | list[list[dict[str, str]]], params: list[GenerateParams]
    ) -> list[_Output | BaseException]:
        """Generate every item (texts, or conversations to render with the chat template),
        one engine call per group of items with equal params. Holds the lock throughout, so an
        `unload()` from another thread waits for the batch to finish."""
        with self._lock:
            self.load()
            prompts: list[str | BaseException] = []
            for item in items:
                try:
                    prompts.append(item if isinstance(item, str) else self._render(item))
                except Exception as error:  # a template may reject a conversation's shape
                    prompts.append(error)
            results: dict[int, _Output | BaseException] = {}
            groups: dict[str, list[int]] = {}
            for index, prompt in enumerate(prompts):
                if isinstance(prompt, BaseException):
                    results[index] = prompt
                else:
                    groups.setdefault(_params_key(params[index]), []).append(index)
            add_special_tokens = bool(items) and isinstance(items[0], str)
            for indices in groups.values():
                batch = [t.cast(str, prompts[i]) for i in indices]
                outputs: list[_Output | BaseException]
                if cancelled():  # the caller gave up: the other groups are not made
                    results.update((i, TimeoutError("the call was given up")) for i in indices)
                    continue
                try:
                    outputs = [*self._generate_group(batch, params[indices[0]], add_special_tokens)]
                except Exception as error:
                    outputs = [error] * len(indices)
                results.update(zip(indices, outputs, strict=True))
            return [results[index] for index in range(len(items))]

    def _render(self, conversation: list[dict[str, str]]) -> str:
        return t.cast(
            str,
            self._tokenizer.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=True
            ),
        )

    def _generation_kwargs(self, params: GenerateParams) -> dict[str, t.Any]:
        values = params.to_dict()
        if values.get("json_schema") is not None:
            raise structured.refuse_json_schema(self)
        ignored = _UNSUPPORTED.intersection(values) - _warned
        if ignored:  # once per setting and process: batch jobs call this for every batch
            _warned.update(ignored)
            logger.warning("transformers has no %s; ignoring them", ", ".join(sorted(ignored)))
        kwargs = {k: v for k, v in values.items() if k not in _REMOTE_ONLY | _UNSUPPORTED}
        kwargs["max_new_tokens"] = kwargs.pop("max_tokens", DEFAULT_MAX_TOKENS)
        kwargs.pop("seed", None)
        if kwargs.get("top_k", 1) <= 0:  # "all tokens", which transformers spells as no top_k
            kwargs.pop("top_k")
        if "stop" in kwargs:
            kwargs["stop_strings"] = kwargs.pop("stop")
            kwargs["tokenizer"] = self._tokenizer
        temperature = kwargs.get("temperature")
        if temperature == 0:
            for key in ("temperature", "top_p", "top_k"):
                kwargs.pop(key, None)
            kwargs["do_sample"] = False
        elif temperature is not None:
            kwargs["do_sample"] = True
        return kwargs

    def _generate_group(
        self, prompts: list[str], params: GenerateParams, add_special_tokens: bool
    ) -> list[_Output]:
        import torch

        model, tokenizer = self._model, self._tokenizer
        encoded = tokenizer(
            prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
        ).to(model.device)
        with torch.inference_mode():
            if params.seed is not None:
                torch.manual_seed(params.seed)
            generated = model.generate(
                **encoded,
                pad_token_id=tokenizer.pad_token_id,
                stopping_criteria=_stop_when_cancelled(),
                **self._generation_kwargs(params),
            )
        new_tokens = generated[:, encoded["input_ids"].shape[1] :].tolist()
        input_counts = encoded["attention_mask"].sum(dim=1).tolist()
        end_ids = self._end_ids()
        return [
            self._decode(tokens, int(count), params.stop or [], end_ids)
            for tokens, count in zip(new_tokens, input_counts, strict=True)
        ]

    def _end_ids(self) -> set[int]:
        ids = self._model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        ends = {i for i in ids if i is not None}
        if self._tokenizer.eos_token_id is not None:
            ends.add(self._tokenizer.eos_token_id)
        return ends

    def _decode(
        self, tokens: list[int], input_count: int, stop: list[str], end_ids: set[int]
    ) -> _Output:
        """One row of `generate` output: cut at its end token or padding, then at a stop string.

        A row that ended early is padded up to the longest row; the padding is not output, and
        the end token counts as output only when it is a real end-of-sequence token.
        """
        pad = self._tokenizer.pad_token_id
        length = next((i for i, tok in enumerate(tokens) if tok in end_ids or tok == pad), None)
        kept = tokens if length is None else tokens[:length]
        text = self._tokenizer.decode(kept, skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s and s in text]
        if cuts:
            usage = Usage(input_tokens=input_count, output_tokens=len(kept))
            return _Output(text=text[: min(cuts)], stop_reason="stop", usage=usage)
        ended_on_eos = length is not None and tokens[length] in end_ids
        return _Output(
            text=text,
            stop_reason="length" if length is None else "stop",
            usage=Usage(input_tokens=input_count, output_tokens=len(kept) + ended_on_eos),
        )


def _stop_when_cancelled() -> t.Any:
    """Stopping criteria that end `generate` at the next token once its caller gave up on
    the call (a batch past its timeout, a client that left), freeing the engine thread."""
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class WhenCancelled(StoppingCriteria):  # type: ignore[misc]
        def __call__(self, input_ids: t.Any, scores: t.Any, **kwargs: t.Any) -> t.Any:
            return torch.full((input_ids.shape[0],), cancelled(), dtype=torch.bool)

    return StoppingCriteriaList([WhenCancelled()])
