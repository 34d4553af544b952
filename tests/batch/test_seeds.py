"""A seeded generation depends on (seed, row id, generation index) only: the same row gives
the same text alone, in a batch, beside a row with the same prompt, and in a resumed run; an
OpenAI batch line's, on (seed, generation index), as the endpoint's choices."""

from __future__ import annotations

import typing as t

import pyarrow as pa
import pytest

from rig_ray.batch.prepare import ID_COLUMN, TODO_COLUMN
from rig_ray.batch.prompts import PromptSpec
from rig_ray.batch.stage import GenerateStage, StageConfig
from rig_ray.cluster.options import config_payload
from rig_ray.generator.params import GenerateParams
from rig_ray.generator.seeds import derive_seed, for_request_sample, for_sample
from tests.fakes import Conversation, _FakeGenerator, _last_text


class SeedEcho(_FakeGenerator):
    """Replies with the prompt and the seed it was sampled with: a text that depends on the
    seed, as a sampling engine's does."""

    def _reply(self, item: str | Conversation, params: GenerateParams) -> str:
        return f"{_last_text(item)}@{params.seed}"


def stage(seed: int | None = 5, seeds: t.Literal["row", "request"] = "row") -> GenerateStage:
    config = StageConfig(
        prompts=PromptSpec(template="$topic"),
        num_generations=3,
        params=GenerateParams(temperature=1.0, seed=seed),
        input_columns=("topic",),
        seeds=seeds,
    )
    return GenerateStage(config_payload(SeedEcho(model="seed-echo")), config)


async def texts(
    rows: list[dict[str, t.Any]], seed: int | None = 5, seeds: t.Literal["row", "request"] = "row"
) -> dict[tuple, str]:
    table = await stage(seed, seeds)(pa.Table.from_pylist(rows))
    out = table.select(["id", "generation_index", "text"]).to_pylist()
    return {(r["id"], r["generation_index"]): r["text"] for r in out}


def row(row_id: str, topic: str = "paris", todo: list[int] | None = None) -> dict[str, t.Any]:
    values: dict[str, t.Any] = {"topic": topic, ID_COLUMN: row_id}
    if todo is not None:
        values[TODO_COLUMN] = todo
    return values


async def test_a_row_gives_the_same_texts_whatever_shares_its_batch() -> None:
    alone = await texts([row("r1")])
    assert len(alone) == 3 and len(set(alone.values())) == 3  # each generation its own seed
    in_batch = await texts([row("r0", "rome"), row("r1"), row("r2", "oslo")])
    beside_its_repeat = await texts([row("r9"), row("r1"), row("r1b")])
    resumed = await texts([row("r1", todo=[2])])
    for index in range(3):
        assert in_batch["r1", index] == alone["r1", index]
        assert beside_its_repeat["r1", index] == alone["r1", index]
    assert resumed == {("r1", 2): alone["r1", 2]}
    # Another row with the same prompt samples its own texts.
    assert beside_its_repeat["r9", 0] != alone["r1", 0]


async def test_without_a_seed_nothing_is_seeded() -> None:
    assert set((await texts([row("r1")], seed=None)).values()) == {"paris@None"}


@pytest.mark.parametrize("seed", [0, 5, 2**40])
def test_derived_seeds_are_stable_and_in_range(seed: int) -> None:
    assert derive_seed(seed, "r1", 0) == derive_seed(seed, "r1", 0)
    assert derive_seed(seed, "r1", 0) != derive_seed(seed, "r1", 1)
    assert 0 <= derive_seed(seed, "r1", 0) < 2**31
    params = GenerateParams(seed=seed)
    assert for_sample(params, "r1", 2).seed == derive_seed(seed, "r1", 2)
    assert for_sample(GenerateParams(), "r1", 2).seed is None


async def test_a_request_seeds_its_choices_as_the_endpoint_does() -> None:
    """An OpenAI batch line (`seeds="request"`): its first choice takes the seed as given, choice
    k the seed of (seed, k), whatever its row id: what the same request to the endpoint gives."""
    made = await texts([row("line-1"), row("line-2", "rome")], seeds="request")
    assert made["line-1", 0] == "paris@5" and made["line-2", 0] == "rome@5"
    assert (
        made["line-1", 2]
        == f"paris@{derive_seed(5, 2)}"
        == made["line-2", 2].replace("rome", "paris")
    )
    assert for_request_sample(GenerateParams(seed=5), 1).seed == derive_seed(5, 1)
    assert for_request_sample(GenerateParams(), 1).seed is None
