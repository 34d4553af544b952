"""The `rig-ray` command line."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import typing as t

from pydantic import ValidationError

from rig_ray.batch import cli as batch_cli
from rig_ray.batch import pipeline_cli
from rig_ray.embedded import DEFAULT_MODEL, embedded_model_path
from rig_ray.errors import RigRayError, validation_line
from rig_ray.generator import (
    GeneratedMessage,
    GeneratedText,
    GenerateParams,
    get_generator,
    registered_providers,
)
from rig_ray.message import Message
from rig_ray.redaction import redact
from rig_ray.serve import cli as serve_cli
from rig_ray.terminal import printable

DEMO_GENERATOR = f"transformers!{DEFAULT_MODEL},temperature=0,max_tokens=48"
DEMO_PROMPTS = (
    "What is the capital of France?",
    "Name three primary colors.",
    "Write one sentence about the sea.",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rig-ray", description="LLM generators named by identifier strings."
    )
    commands = parser.add_subparsers(dest="command", required=True)

    generate = commands.add_parser(
        "generate", help="generate one reply per prompt, as one batch, and print them"
    )
    generate.add_argument("generator", help="identifier, e.g. 'transformers!smollm2-135m'")
    generate.add_argument("prompts", nargs="+", help="prompts (user messages)")
    generate.add_argument("--system", help="system message put before each prompt")
    generate.add_argument("--text", action="store_true", help="complete raw text, not chats")
    generate.add_argument("--max-tokens", type=int, help="most tokens to generate")
    generate.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")

    batch_cli.add_parser(commands)
    pipeline_cli.add_parser(commands)
    serve_cli.add_parser(commands)

    commands.add_parser(
        "demo", help=f"answer a few prompts with the embedded model ({DEMO_GENERATOR})"
    )
    model_path = commands.add_parser(
        "model-path", help="print the folder of an embedded model, converting it on first use"
    )
    model_path.add_argument("name", nargs="?", default=DEFAULT_MODEL)
    commands.add_parser("providers", help="list the registered providers")
    return parser


def _run_generate(
    identifier: str,
    prompts: t.Sequence[str],
    *,
    system: str | None = None,
    as_text: bool = False,
    params: GenerateParams | None = None,
) -> int:
    generator = get_generator(identifier)
    per_item = [params or GenerateParams()] * len(prompts)
    started = time.perf_counter()
    generator.load()
    loaded = time.perf_counter()
    results: t.Sequence[GeneratedMessage | GeneratedText | BaseException]
    if as_text:
        results = asyncio.run(generator.generate_texts(list(prompts), per_item))
    else:
        head = [Message(role="system", content=system)] if system else []
        chats = [[*head, Message(role="user", content=p)] for p in prompts]
        results = asyncio.run(generator.generate_messages(chats, per_item))
    done = time.perf_counter()
    failed = 0
    output_tokens = 0
    for prompt, result in zip(prompts, results, strict=True):
        print(printable(f"> {prompt}"))
        if isinstance(result, BaseException):
            failed += 1
            print(printable(redact(f"  error: {type(result).__name__}: {result}\n")))
            continue
        text = result.message.content if isinstance(result, GeneratedMessage) else result.text
        tokens = result.usage.output_tokens if result.usage else 0
        output_tokens += tokens
        print(printable(f"  {text.strip()}\n  [{result.stop_reason}, {tokens} tokens]\n"))
    rate = output_tokens / max(done - loaded, 1e-9)
    print(
        f"{len(prompts) - failed}/{len(prompts)} ok with {redact(generator.to_identifier())}: "
        f"load {loaded - started:.1f}s, generate {done - loaded:.1f}s ({rate:.1f} tok/s)"
    )
    generator.unload()
    return 1 if failed else 0


def main(argv: t.Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "generate":
            params = GenerateParams(max_tokens=args.max_tokens, temperature=args.temperature)
            return _run_generate(
                args.generator, args.prompts, system=args.system, as_text=args.text, params=params
            )
        if args.command == "batch":
            return batch_cli.run(args)
        if args.command == "pipeline":
            return pipeline_cli.run(args)
        if args.command == "serve":
            return serve_cli.run(args)
        if args.command == "demo":
            return _run_generate(DEMO_GENERATOR, DEMO_PROMPTS)
        if args.command == "model-path":
            print(embedded_model_path(args.name))
            return 0
        for name, cls in sorted(registered_providers().items()):
            print(f"{name}\t{cls.__module__}.{cls.__qualname__}")
        return 0
    except (RigRayError, ValidationError, NotImplementedError) as error:
        print(f"rig-ray: error: {printable(validation_line(error))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
