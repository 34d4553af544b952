"""What rig_ray prints of model output, a user's data and errors holds no live control
characters: escape sequences, carriage returns and bidirectional overrides come out escaped."""

from __future__ import annotations

import logging
import typing as t
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rig_ray.batch.cli import _show_some
from rig_ray.batch.console import _FORWARDING, _wrapped
from rig_ray.cli import main
from rig_ray.redaction import RedactingFilter
from rig_ray.terminal import printable

HOSTILE = "ok\x1b]52;c;cm0gLXJm\x07\x1b[2J\rfake line\u202edesrever\x9b"
"""A clipboard write (OSC 52), a screen clear, a carriage return, a bidi override, a C1 CSI."""


def _live(text: str) -> list[str]:
    return [c for c in text if c in "\x1b\x07\r\u202e\x9b"]


def test_control_characters_come_out_as_escapes() -> None:
    shown = printable(HOSTILE)
    assert _live(shown) == []
    assert shown == "ok\\x1b]52;c;cm0gLXJm\\x07\\x1b[2J\\rfake line\\u202edesrever\\x9b"
    kept = "two\nlines\tand tabs, ünïcödé, 漢字, emoji 🙂"
    assert printable(kept) == kept


def test_shown_rows_of_a_batch_output_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    table = pa.table(
        {"id": [f"id{HOSTILE}"], "generator": ["echo!e"], "text": [HOSTILE], "error": [None]}
    )
    pq.write_table(table, tmp_path / "part-000000.parquet")
    _show_some(str(tmp_path))
    shown = capsys.readouterr().out
    assert "fake line" in shown and _live(shown) == []


@pytest.mark.usefixtures("fake_providers")
@pytest.mark.parametrize("generator", ["echo!e", "failing!f"])
def test_generated_replies_and_errors_are_printed_escaped(
    generator: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # echo replies with the prompt (as a model may repeat it); failing's error quotes it
    main(["generate", generator, f"FAIL {HOSTILE}"])
    shown = capsys.readouterr().out
    assert shown.count("fake line") == 2 and _live(shown) == []


def test_a_log_record_quoting_it_is_escaped() -> None:
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "reply was %s", (HOSTILE,), None)
    assert RedactingFilter().filter(record)
    assert "fake line" in record.getMessage() and _live(record.getMessage()) == []


def test_lines_forwarded_from_actors_are_escaped_and_show_their_last_drawing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_FORWARDING, "quiet_jobs", 0)  # no quiet batch job runs meanwhile
    monkeypatch.setattr(_FORWARDING, "quiet_until", 0.0)
    got: list[dict[str, t.Any]] = []
    forward = _wrapped(got.append)
    forward({"lines": [HOSTILE, "Loading: 10%\rLoading: 100%\r"], "pid": 1})
    (data,) = got
    assert data["pid"] == 1
    assert "fake line" in data["lines"][0] and _live(data["lines"][0]) == []
    assert data["lines"][1] == "Loading: 100%"  # what the terminal would have left
