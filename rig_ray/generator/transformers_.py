"""Transformers: a local causal LM, one batched `generate` per group of equal params."""

from __future__ import annotations

import asyncio
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
from rig_ray.generator.base import (
    DEFAULT_MAX_TOKENS,
    GeneratedMessage,
    GeneratedText,
    GenerateParams,
    Generator,
    Messages,
    StopReason,
    Usage,
)
from rig_ray.message import Message

logger = logging.getLogger(__name__)

_REMOTE_ONLY = {"api_base", "timeout"}
_UNSUPPORTED = {"presence_penalty", "frequency_penalty"}


@dataclasses.dataclass
class _Output:
    text: str
    stop_reason: StopReason
    usage: Usage


def _params_key(params: GenerateParams) -> str:
    return json.dumps(params.to_dict(), sort_keys=True, default=str)


class TransformersGenerator(Generator):
    """Runs a Hugging Face causal LM in this process, batching each call into `generate`.

    The model is a local folder, a hub name (where the machine can reach a hub), or the short
    name of an embedded model (`smollm2-135m`).
    """

    dtype: str = "auto"
    """Torch dtype of the weights: auto, bfloat16, float16 or float32."""
    device: str | None = None
    """Where to run: cpu, cuda, cuda:1, ...; unset picks CUDA when present."""
    device_map: str | None = None
    """Accelerate device map (e.g. auto) to spread a large model; overrides `device`."""
    trust_remote_code: bool = False
    """Allow model code from the model folder."""

    _model: t.Any = PrivateAttr(None)
    _tokenizer: t.Any = PrivateAttr(None)
    _lock: threading.RLock = PrivateAttr(default_factory=threading.RLock)

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
                if self.dtype != "auto":
                    options["dtype"] = getattr(torch, self.dtype)
                if self.device_map:
                    options["device_map"] = self.device_map
                model = transformers.AutoModelForCausalLM.from_pretrained(path, **options)
            except OSError as error:
                raise ModelNotAvailableError(
                    f"transformers could not load {self.model!r}: {error}", model=self.model
                ) from error
            if not self.device_map:
                model.to(self.device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self._install(model, tokenizer)
        return self

    def unload(self) -> t.Self:
        with self._lock:
            self._model = self._tokenizer = None
        gc.collect()
        torch = sys.modules.get("torch")
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return self

    async def generate_messages(
        self, messages: Messages, params: t.Sequence[GenerateParams]
    ) -> t.Sequence[GeneratedMessage | BaseException]:
        merged = self.merged_params(params, len(messages))
        await asyncio.to_thread(self.load)
        prompts: list[str | BaseException] = []
        for conversation in messages:
            try:
                prompts.append(
                    self._tokenizer.apply_chat_template(
                        [message.to_openai() for message in conversation],
                        tokenize=False,
                        add_generation_prompt=True,
                    )
                )
            except Exception as error:  # a template may reject a conversation's shape
                prompts.append(error)
        outputs = await asyncio.to_thread(self._generate, prompts, merged, False)
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
        await asyncio.to_thread(self.load)
        outputs = await asyncio.to_thread(self._generate, list(texts), merged, True)
        return [
            GeneratedText(text=out.text, stop_reason=out.stop_reason, usage=out.usage)
            if isinstance(out, _Output)
            else out
            for out in outputs
        ]

    def _generate(
        self,
        prompts: list[str | BaseException],
        params: list[GenerateParams],
        add_special_tokens: bool,
    ) -> list[_Output | BaseException]:
        """Generate every prompt, one engine call per group of items with equal params."""
        results: list[_Output | BaseException] = [
            p if isinstance(p, BaseException) else ValueError("not generated") for p in prompts
        ]
        groups: dict[str, list[int]] = {}
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, BaseException):
                groups.setdefault(_params_key(params[index]), []).append(index)
        for indices in groups.values():
            try:
                batch = [t.cast(str, prompts[i]) for i in indices]
                outputs = self._generate_group(batch, params[indices[0]], add_special_tokens)
            except Exception as error:
                outputs = [error] * len(indices)
            for index, output in zip(indices, outputs, strict=True):
                results[index] = output
        return results

    def _generation_kwargs(self, params: GenerateParams) -> dict[str, t.Any]:
        values = params.to_dict()
        ignored = _UNSUPPORTED.intersection(values)
        if ignored:
            logger.warning("transformers has no %s; ignoring them", ", ".join(sorted(ignored)))
        kwargs = {k: v for k, v in values.items() if k not in _REMOTE_ONLY | _UNSUPPORTED}
        kwargs["max_new_tokens"] = kwargs.pop("max_tokens", DEFAULT_MAX_TOKENS)
        kwargs.pop("seed", None)
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

        with self._lock:
            model, tokenizer = self._model, self._tokenizer
            if model is None:
                raise ModelNotAvailableError("the model was unloaded mid-call", model=self.model)
            encoded = tokenizer(
                prompts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens
            ).to(model.device)
            with torch.inference_mode():
                if params.seed is not None:
                    torch.manual_seed(params.seed)
                generated = model.generate(
                    **encoded,
                    pad_token_id=tokenizer.pad_token_id,
                    **self._generation_kwargs(params),
                )
        new_tokens = generated[:, encoded["input_ids"].shape[1] :].tolist()
        input_counts = encoded["attention_mask"].sum(dim=1).tolist()
        return [
            self._decode(tokens, int(count), params.stop or [])
            for tokens, count in zip(new_tokens, input_counts, strict=True)
        ]

    def _end_ids(self) -> set[int]:
        ids = self._model.generation_config.eos_token_id
        ids = ids if isinstance(ids, list) else [ids]
        ends = {i for i in ids if i is not None}
        if self._tokenizer.eos_token_id is not None:
            ends.add(self._tokenizer.eos_token_id)
        return ends

    def _decode(self, tokens: list[int], input_count: int, stop: list[str]) -> _Output:
        ends = self._end_ids() | {self._tokenizer.pad_token_id}
        length = next((i for i, tok in enumerate(tokens) if tok in ends), None)
        reason: StopReason = "length" if length is None else "stop"
        kept = tokens if length is None else tokens[:length]
        text = self._tokenizer.decode(kept, skip_special_tokens=True)
        cuts = [text.find(s) for s in stop if s and s in text]
        if cuts:
            text, reason = text[: min(cuts)], "stop"
        output_count = len(kept) + (0 if length is None else 1)
        return _Output(
            text=text,
            stop_reason=reason,
            usage=Usage(input_tokens=input_count, output_tokens=output_count),
        )
