"""Documents in, a typed Parquet table out: each reply parsed as a `Book`, asked again where it
does not parse, one column per field.

    python examples/books.py [OUTPUT]      # the embedded SmolLM2 on transformers

The command line does the same with `--parse-as examples.books:Book` (see the README).
"""

from __future__ import annotations

import sys

from pydantic_xml import element

import rig_ray as rr
from rig_ray import batch


class Book(rr.Model):
    """`<book><title>...</title><author>...</author><year>...</year></book>`"""

    title: str = element()
    author: str = element()
    year: int = element()

    @classmethod
    def xml_example(cls) -> str:
        return "<book><title>TITLE</title><author>AUTHOR</author><year>YEAR</year></book>"


SYSTEM = (
    "You fill in XML blocks. Example: for 'Emma, a novel by Jane Austen, came out in 1815' you "
    "reply <book><title>Emma</title><author>Jane Austen</author><year>1815</year></book>"
)
TEMPLATE = f"Fill in {Book.xml_example()} for this text: $document"

if __name__ == "__main__":
    output = sys.argv[1] if len(sys.argv) > 1 else "out/books"
    summary = batch.run(
        "examples/books.jsonl",
        output,
        generator="transformers!smollm2-135m,max_tokens=64,temperature=0",
        system=SYSTEM,
        template=TEMPLATE,
        parse_as=Book,
        max_parse_retries=2,
        num_cpus=1,
    )
    print(summary.line())
    table = batch.read_output(output, ["id", "title", "author", "year", "parse_retries", "error"])
    print(table.schema)
    for row in table.sort_by("id").to_pylist():
        print(row)
