"""The output columns and how input columns are named when written through."""

from __future__ import annotations

import pyarrow as pa

from rig_ray.batch.schema import INPUT_PREFIX, OUTPUT_COLUMNS, OUTPUT_SCHEMA, passthrough_names


def test_output_columns_are_in_the_documented_order() -> None:
    assert OUTPUT_COLUMNS == (
        "id",
        "generation_index",
        "generator",
        "model",
        "text",
        "stop_reason",
        "input_tokens",
        "output_tokens",
        "latency_s",
        "error",
        "metadata",
    )
    assert tuple(OUTPUT_SCHEMA.names) == OUTPUT_COLUMNS


def test_id_and_generation_index_are_never_null() -> None:
    assert not OUTPUT_SCHEMA.field("id").nullable
    assert OUTPUT_SCHEMA.field("id").type == pa.string()
    assert not OUTPUT_SCHEMA.field("generation_index").nullable


def test_an_id_column_named_id_is_left_out() -> None:
    assert passthrough_names(["id", "prompt", "topic"], "id") == {
        "prompt": "prompt",
        "topic": "topic",
    }


def test_a_column_named_id_is_kept_when_another_column_is_the_id() -> None:
    names = passthrough_names(["key", "id", "prompt"], "key")
    assert names == {"key": "key", "id": f"{INPUT_PREFIX}id", "prompt": "prompt"}


def test_a_column_named_like_a_generation_column_gets_the_input_prefix() -> None:
    names = passthrough_names(["text", "model", "error", "prompt"], "id")
    assert names == {
        "text": "input_text",
        "model": "input_model",
        "error": "input_error",
        "prompt": "prompt",
    }


def test_a_double_collision_still_gives_unique_names() -> None:
    for columns in (["text", "input_text"], ["input_text", "text"]):
        names = passthrough_names(columns, "id")
        assert set(names) == set(columns)
        outputs = list(names.values())
        assert len(set(outputs)) == len(outputs)
        assert not set(outputs) & set(OUTPUT_COLUMNS)


def test_a_triple_collision_still_gives_unique_names() -> None:
    columns = ["input_input_text", "text", "input_text", "id", "input_id"]
    names = passthrough_names(columns, "row")
    outputs = list(names.values())
    assert set(names) == set(columns)
    assert len(set(outputs)) == len(outputs)
    assert not set(outputs) & set(OUTPUT_COLUMNS)


def test_no_columns_give_no_names() -> None:
    assert passthrough_names([], "id") == {}
