"""Documents in, a typed Parquet table out: each reply parsed as a `Book` (asked again where it
does not parse), one column per field.

    python examples/books.py [OUTPUT]      # the embedded SmolLM2 on transformers, out/books

Each document becomes a short conversation with one worked example (a few-shot turn, which a
small model follows far better than instructions alone), then goes through `batch.generate`.
"""

from __future__ import annotations

import sys
import typing as t

from pydantic_xml import element

import rig_ray as rr
from rig_ray import batch


class Book(rr.Model):
    """`<book><title>...</title><author>...</author><year>...</year></book>`"""

    title: str = element()
    author: str = element()
    year: int = element()

    @classmethod
    def xml_example(cls) -> str:  # what a retry asks for
        return "<book><title>TITLE</title><author>AUTHOR</author><year>YEAR</year></book>"


EXAMPLE = [
    {"role": "system", "content": "You extract books from texts as XML."},
    {"role": "user", "content": "Text: Emma, a novel by Jane Austen, came out in 1815."},
    {
        "role": "assistant",
        "content": "<book><title>Emma</title><author>Jane Austen</author><year>1815</year></book>",
    },
]


def with_messages(row: dict[str, t.Any]) -> dict[str, t.Any]:
    """The row with its conversation: the worked example, then its own document."""
    return {**row, "messages": [*EXAMPLE, {"role": "user", "content": f"Text: {row['document']}"}]}


def main(output: str) -> None:
    import pyarrow.parquet as pq
    import ray

    ray.init(address="local", num_cpus=2, logging_level="warning")
    documents = ray.data.read_json("examples/books.jsonl").map(with_messages)
    books = batch.generate(
        documents,
        generator="transformers!smollm2-135m,max_tokens=48,temperature=0",
        messages_column="messages",
        parse_as=Book,
        max_parse_retries=2,
        num_cpus=1,
    )
    books.drop_columns(["messages"]).write_parquet(output)
    columns = ["id", "title", "author", "year", "parse_retries", "error"]
    table = pq.read_table(output, columns=columns)
    print(table.schema)
    for row in table.sort_by("id").to_pylist():
        print(row)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "out/books")
