"""`batch_throughput.py --parse-as`: what parsing and parse retries cost next to generation.

    .venv/bin/python benchmarks/batch_throughput.py --parse-as --engine transformers \
        --prompts 32 --max-tokens 24 --batch-size 16

The same rows (chat prompts asking for an `<answer>` block, a few of them phrased so that the
embedded SmolLM2 tends to miss the tags) go, in one process and on one loaded engine, through:
- plain: `generate_messages` in calls of `--batch-size` rows, as a batch stage makes them;
- parsing itself: the batch parse step (`rig_ray.batch.parsed`: parse every reply, build the
  typed columns) on those very replies, replayed by a generator that answers instantly, so
  the time is parsing and column building alone;
- with retries: the parse step on the real engine with `max_parse_retries=2`: the rows that do
  not parse are asked again, one engine call per round.
Target: parsing itself < 5% of plain generation time.
"""

from __future__ import annotations

import argparse
import asyncio
import time
import typing as t

import pyarrow as pa

import rig_ray as rr
from rig_ray.batch.parsed import StructuredSpec, StructuredStep
from rig_ray.batch.schema import OUTPUT_SCHEMA

TARGET = 0.05
RETRIES = 2


class Answer(rr.Model):
    value: str


SHOTS = [
    {"role": "system", "content": "Answer with one word inside <answer></answer> tags."},
    {"role": "user", "content": "What color is the sky?"},
    {"role": "assistant", "content": "<answer>blue</answer>"},
]
QUESTIONS = (
    "What color is grass?",
    "What is frozen water called?",
    "What animal says meow?",
    "Tell me a long story about a dragon.",  # tends to come back without the tags
)


class Replay(rr.Generator):
    """Answers each conversation with the recorded reply to its last message, instantly."""

    replies: dict[str, str]

    async def generate_messages(
        self, messages: t.Sequence[t.Sequence[rr.Message]], params: t.Sequence[rr.GenerateParams]
    ) -> list[rr.GeneratedMessage | BaseException]:
        return [
            rr.GeneratedMessage(
                message=rr.Message(role="assistant", content=self.replies[conv[-1].content]),
                stop_reason="stop",
                usage=rr.Usage(input_tokens=1, output_tokens=1),
            )
            for conv in messages
        ]


def conversations(count: int) -> list[list[rr.Message]]:
    return [
        rr.Message.fit_many([*SHOTS, f"{QUESTIONS[i % len(QUESTIONS)]} (#{i})"])
        for i in range(count)
    ]


def chunks(items: list[t.Any], size: int) -> list[list[t.Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def plain(generator: rr.Generator, rows: list[list[rr.Message]], size: int) -> t.Any:
    results: list[t.Any] = []
    for batch in chunks(rows, size):
        results += await generator.generate_messages(batch, [rr.GenerateParams()] * len(batch))
    return results


def step(retries: int) -> StructuredStep:
    spec = StructuredSpec.build(Answer, None, retries)
    assert spec is not None
    return StructuredStep(spec, OUTPUT_SCHEMA.names)


async def parsed(
    step: StructuredStep, generator: rr.Generator, rows: list[list[rr.Message]], size: int
) -> int:
    """Rows parsed through the parse step, its typed columns built, in calls of `size`."""
    ok = 0
    for batch in chunks(rows, size):
        results = await step.generate(generator, batch, [rr.GenerateParams()] * len(batch))
        table = pa.Table.from_pydict(
            {name: [None] * len(results) for name in OUTPUT_SCHEMA.names}, schema=OUTPUT_SCHEMA
        )
        table = step.finish(table, results)
        ok += table.num_rows - table["value"].null_count
    return ok


def run(args: argparse.Namespace, machine: str) -> None:
    """Time the three passes and print the table."""
    engine = "vllm" if args.engine == "vllm" else "transformers"
    ident = f"{engine}!smollm2-135m,max_tokens={args.max_tokens},temperature=0"
    if engine == "vllm":
        ident += ",enforce_eager=true,max_model_len=1024"
    rows = conversations(args.prompts)
    generator = rr.get_generator(ident).load()
    asyncio.run(plain(generator, rows[:2], 2))  # warm-up
    started = time.perf_counter()
    replies = asyncio.run(plain(generator, rows, args.batch_size))
    plain_s = time.perf_counter() - started
    tokens = sum(r.usage.output_tokens for r in replies if isinstance(r, rr.GeneratedMessage))

    recorded = {
        conv[-1].content: (r.message.content if isinstance(r, rr.GeneratedMessage) else "")
        for conv, r in zip(rows, replies, strict=True)
    }
    replay = Replay(model="replay", replies=recorded)
    started = time.perf_counter()
    parsed_first = asyncio.run(parsed(step(0), replay, rows, args.batch_size))
    parse_s = time.perf_counter() - started

    sizes: list[int] = []
    real = generator.generate_messages

    async def counted(messages: t.Any, params: t.Any) -> t.Any:
        sizes.append(len(messages))
        return await real(messages, params)

    object.__setattr__(generator, "generate_messages", counted)
    started = time.perf_counter()
    parsed_last = asyncio.run(parsed(step(RETRIES), generator, rows, args.batch_size))
    retry_s = time.perf_counter() - started
    generator.unload()

    first_calls = len(chunks(rows, args.batch_size))
    resent = sum(sizes[first_calls:]) if len(sizes) > first_calls else 0
    print(
        f"SmolLM2-135M on {engine}, {args.prompts} chat prompts x <= {args.max_tokens} tokens, "
        f"greedy, batch size {args.batch_size}\nmachine: {machine}\n"
    )
    print(f"{'pass':44} {'seconds':>8} {'x plain':>8}  notes")
    print(f"{'plain generation':44} {plain_s:8.2f} {1:8.3f}  {tokens} tokens")
    share = parse_s / plain_s
    verdict = "ok" if share < TARGET else "MISSED"
    print(
        f"{'parsing itself (replayed replies)':44} {parse_s:8.3f} {share:8.3f}  "
        f"{parsed_first}/{len(rows)} parsed; target < {TARGET:.2f} {verdict}"
    )
    print(
        f"{f'generation + parsing + {RETRIES} retry rounds':44} {retry_s:8.2f} "
        f"{retry_s / plain_s:8.3f}  {parsed_last}/{len(rows)} parsed; engine calls {sizes}, "
        f"{resent} rows re-sent"
    )
