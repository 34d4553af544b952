"""A fuzz test of reading OpenAI batch files (no Ray): files of random lines, mostly request
lines whose bodies are the endpoint fuzz test's random and hostile bodies (as objects, or as
JSON strings), the rest lines of random JSON, raw bytes, odd keys, methods and urls. Every
line must become either a request row or an error line naming its line number (and its
custom_id where it has one); only a custom_id used twice may refuse the file, naming it."""

from __future__ import annotations

import json
import os
import tempfile
import typing as t
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.batch.openai_files import prepare, read_invalid
from rig_ray.errors import BatchInputError
from rig_ray.generator.params import GenerateParams
from tests.serve.test_fuzz import CHAT, TEXT, bodies, texts, values

EXAMPLES = int(os.environ.get("RIG_RAY_FUZZ_EXAMPLES", 150))

custom_ids = st.sampled_from(["a", "b", "c", "d", "e", "f", "g", "h"]) | st.integers(0, 9) | values


@st.composite
def lines(draw: st.DrawFn) -> bytes:
    """One line of a batch file (no newline in it)."""
    kind = draw(st.sampled_from(["request"] * 6 + ["odd", "json", "raw"]))
    if kind == "raw":
        return draw(st.binary(max_size=80)).replace(b"\n", b" ")
    if kind == "json":
        return json.dumps(draw(values)).encode("utf-8", errors="surrogatepass")
    path, body = draw(bodies())
    if draw(st.booleans()):  # a body sent as a JSON string, which the reader accepts
        body = json.dumps(body.decode("utf-8", errors="replace")).encode()
    line: dict[t.Any, t.Any] = {"custom_id": draw(custom_ids), "method": "POST", "url": path}
    if kind == "odd":
        changes = {
            "method": st.sampled_from(["GET", "post", None]) | values,
            "url": st.sampled_from([CHAT, TEXT, "/v1/embeddings", "/v1/chat/completions/"]) | texts,
            "extra": values,
        }
        for key in draw(st.lists(st.sampled_from(sorted(changes)), min_size=1, max_size=3)):
            line[key] = draw(changes[key])
        if draw(st.booleans()):
            line.pop(draw(st.sampled_from(["custom_id", "method", "url"])))
    head = json.dumps(line, ensure_ascii=draw(st.booleans()))
    head = head.encode("utf-8", errors="surrogatepass")
    if kind == "odd" and draw(st.booleans()):
        return head  # no body
    return head[:-1] + b', "body": ' + body.replace(b"\n", b" ") + b"}"


def _unicode(value: t.Any) -> bool:
    """Whether every string in `value` (keys included) is valid Unicode."""
    if isinstance(value, str):
        return not any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, dict):
        return all(_unicode(k) and _unicode(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_unicode(item) for item in value)
    return True


def read_id(raw: bytes) -> str | None:
    """The custom_id the reader takes from a line (None where it takes none): an object whose
    keys and values outside its body are valid Unicode, with a non-empty string or integer."""
    try:
        line = json.loads(raw.decode("utf-8", errors="replace"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(line, dict):
        return None
    if not _unicode({key: value for key, value in line.items() if key != "body"}):
        return None
    found = line.get("custom_id")
    return str(found) if isinstance(found, str | int) and str(found) else None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(drawn=st.lists(lines(), min_size=1, max_size=8))
def test_every_line_becomes_a_row_or_an_error_line(drawn: list[bytes]) -> None:
    with tempfile.TemporaryDirectory(prefix="rig-ray-openai-fuzz-") as root:
        source, out = Path(root) / "in.jsonl", Path(root) / "out"
        source.write_bytes(b"\n".join(drawn) + b"\n")
        ids = [read_id(raw) for raw in drawn]
        named = [found for found in ids if found is not None]
        if len(set(named)) < len(named):  # a custom_id used twice refuses the whole file
            with pytest.raises(BatchInputError, match=r"custom_id .* is used on lines"):
                prepare(str(source), str(out), vllm_fields=False)
            return
        prepared = prepare(str(source), str(out), vllm_fields=False)
        rows = pq.read_table(prepared.requests).to_pylist()
        invalid = read_invalid(str(out))
        assert (prepared.valid, prepared.invalid) == (len(rows), len(invalid))
        numbers = sorted([row["line"] for row in rows] + [line.line for line in invalid])
        assert numbers == list(range(1, len(drawn) + 1))  # each line once, as a row or error
        for row in rows:
            assert row["id"] == ids[row["line"] - 1] and row["n"] >= 1
            GenerateParams.model_validate_json(row["params"])
            assert row["messages"] or row["prompt"] is not None
        for line in invalid:
            assert line.message and line.code
            if line.custom_id is not None:
                assert line.custom_id == ids[line.line - 1]
            assert f"line {line.line}" in line.message
