"""The columns a batch job writes: one row per generation, then the input's own columns."""

from __future__ import annotations

import typing as t

import pyarrow as pa

OUTPUT_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("generation_index", pa.int32(), nullable=False),
        pa.field("generator", pa.string()),
        pa.field("model", pa.string()),
        pa.field("text", pa.string()),
        pa.field("stop_reason", pa.string()),
        pa.field("input_tokens", pa.int64()),
        pa.field("output_tokens", pa.int64()),
        pa.field("latency_s", pa.float64()),
        pa.field("error", pa.string()),
        pa.field("metadata", pa.string()),
    ]
)
"""The generation columns, in order; input columns follow them."""

OUTPUT_COLUMNS: tuple[str, ...] = tuple(OUTPUT_SCHEMA.names)

SCHEMA_VERSION = 1
"""The version of these columns, recorded in every output folder's manifest."""

INPUT_PREFIX = "input_"
"""Put before an input column whose name is also a generation column (`text` -> `input_text`)."""


def passthrough_names(columns: t.Sequence[str], id_column: str) -> dict[str, str]:
    """Input column -> its name in the output, for every input column written through.

    The id column is written as `id` already, so it is left out when it is named `id`; any
    other input column named like a generation column gets `INPUT_PREFIX`.
    """
    names: dict[str, str] = {}
    for column in columns:
        if column == "id" and id_column == "id":
            continue
        out = column
        while out in OUTPUT_COLUMNS or out in names.values():
            out = INPUT_PREFIX + out
        names[column] = out
    return names
