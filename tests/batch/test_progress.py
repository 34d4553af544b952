"""The batch progress line: what it says, and when it is printed."""

from __future__ import annotations

import io
import json
import threading
import time
import types
from pathlib import Path

import pytest

from rig_ray.batch import progress, run
from rig_ray.batch.progress import Progress
from tests.fakes import EchoGenerator


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """The time Progress sees, moved by hand (only in rig_ray.batch.progress)."""
    fake = FakeClock()
    monkeypatch.setattr(progress, "time", types.SimpleNamespace(monotonic=fake.monotonic))
    return fake


def _lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


# -- the line ----------------------------------------------------------------------------------


def test_line_shows_done_of_total_rates_time_left_and_elapsed(clock: FakeClock) -> None:
    meter = Progress(100, every_s=-1)
    clock.now += 2
    meter.add(10, 0, 50)
    assert meter.line() == (
        "rig-ray batch: 10/100 rows, 5.0 rows/s, 25.0 tok/s, about 0:18 left, 0:02 elapsed"
    )


def test_line_uses_thousands_separators_and_hours(clock: FakeClock) -> None:
    meter = Progress(20_000, every_s=-1)
    clock.now += 3600
    meter.add(1_234, 1_001, 0)
    line = meter.line()
    assert "1,234/20,000 rows" in line
    assert "1,001 failed" in line
    assert "1:00:00 elapsed" in line
    assert "about 15:12:27 left" in line  # 18,766 rows at 1,234 an hour


def test_failed_is_shown_only_when_some_rows_failed(clock: FakeClock) -> None:
    meter = Progress(10, every_s=-1)
    clock.now += 1
    meter.add(3, 0, 0)
    assert "failed" not in meter.line()
    meter.add(1, 2, 0)
    assert "2 failed" in meter.line()


def test_without_a_total_there_is_no_time_left(clock: FakeClock) -> None:
    meter = Progress(None, every_s=-1)
    clock.now += 4
    meter.add(8, 0, 40)
    assert meter.line() == "rig-ray batch: 8 rows, 2.0 rows/s, 10.0 tok/s, 0:04 elapsed"


def test_a_line_of_rows_read_tells_no_tokens(clock: FakeClock) -> None:
    meter = Progress(None, every_s=-1, label="rig-ray batch: reading the input", tokens=False)
    clock.now += 4
    meter.add(8_000, 0, 0)
    assert (
        meter.line() == "rig-ray batch: reading the input: 8,000 rows, 2000.0 rows/s, 0:04 elapsed"
    )


@pytest.mark.parametrize("rows", [10, 12])
def test_there_is_no_time_left_once_done(clock: FakeClock, rows: int) -> None:
    meter = Progress(10, every_s=-1)
    clock.now += 1
    meter.add(rows, 0, 0)
    assert "left" not in meter.line()
    assert f"{rows}/10 rows" in meter.line()


def test_there_is_no_time_left_before_the_first_row(clock: FakeClock) -> None:
    meter = Progress(10, every_s=-1)
    clock.now += 1
    line = meter.line()
    assert "0/10 rows" in line and "0.0 rows/s" in line
    assert "left" not in line


def test_line_at_the_very_start_does_not_divide_by_zero(clock: FakeClock) -> None:
    meter = Progress(10, every_s=-1)
    meter.add(1, 0, 1)
    assert "1/10 rows" in meter.line()


def test_counts_add_up(clock: FakeClock) -> None:
    meter = Progress(None, every_s=-1)
    meter.add(3, 1, 30)
    meter.add(2, 0, 20)
    assert (meter.rows, meter.failed, meter.output_tokens) == (5, 1, 50)
    clock.now += 2.5
    assert meter.elapsed_s == 2.5


# -- when it is printed ------------------------------------------------------------------------


def test_a_negative_interval_never_prints(clock: FakeClock) -> None:
    stream = io.StringIO()
    meter = Progress(10, every_s=-1, stream=stream)
    for _ in range(5):
        clock.now += 100
        meter.add(1, 0, 1)
    meter.finish()
    assert stream.getvalue() == ""


def test_a_zero_interval_prints_on_every_add(clock: FakeClock) -> None:
    stream = io.StringIO()
    meter = Progress(10, every_s=0, stream=stream)
    for _ in range(3):
        meter.add(1, 0, 1)
    assert [line.split(",")[0] for line in _lines(stream)] == [
        "rig-ray batch: 1/10 rows",
        "rig-ray batch: 2/10 rows",
        "rig-ray batch: 3/10 rows",
    ]


def test_lines_are_printed_once_per_interval(clock: FakeClock) -> None:
    stream = io.StringIO()
    meter = Progress(None, every_s=5, stream=stream)
    for step in (1, 2, 3, 1, 1, 1, 4):  # adds at 1, 3, 6*, 7, 8, 9, 13*
        clock.now += step
        meter.add(1, 0, 0)
    assert [line.split(",")[0] for line in _lines(stream)] == [
        "rig-ray batch: 3 rows",
        "rig-ray batch: 7 rows",
    ]


def test_threads_adding_at_once_print_one_line_for_one_interval(clock: FakeClock) -> None:
    """The ticker and the thread that adds rows both see an interval pass: one line (a
    terminal that is slow to take the line gave each thread its own)."""

    class SlowStream(io.StringIO):
        def write(self, text: str) -> int:
            time.sleep(0.05)
            return super().write(text)

    stream = SlowStream()
    meter = Progress(None, every_s=5, stream=stream)
    clock.now += 5
    ready = threading.Barrier(16)

    def add() -> None:
        ready.wait()
        meter.add(1, 0, 0)

    def tick() -> None:  # what `ticking()`'s thread does
        ready.wait()
        meter._maybe_print()

    threads = [threading.Thread(target=(add, tick)[n % 2]) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(_lines(stream)) == 1


def test_a_job_shorter_than_one_interval_prints_nothing(clock: FakeClock) -> None:
    stream = io.StringIO()
    meter = Progress(3, every_s=5, stream=stream)
    for _ in range(3):
        clock.now += 1
        meter.add(1, 0, 0)
    meter.finish()
    assert stream.getvalue() == ""


def test_finish_prints_a_last_line_when_rows_were_added_since_the_last(clock: FakeClock) -> None:
    stream = io.StringIO()
    meter = Progress(4, every_s=5, stream=stream)
    clock.now += 6
    meter.add(1, 0, 0)
    clock.now += 1
    meter.add(3, 0, 0)
    meter.finish()
    assert [line.split(",")[0] for line in _lines(stream)] == [
        "rig-ray batch: 1/4 rows",
        "rig-ray batch: 4/4 rows",
    ]


def test_finish_prints_nothing_when_no_rows_were_added_since_the_last(clock: FakeClock) -> None:
    stream = io.StringIO()
    meter = Progress(4, every_s=5, stream=stream)
    clock.now += 6
    meter.add(4, 0, 0)
    clock.now += 1
    meter.add(0, 0, 0)
    meter.finish()
    assert len(_lines(stream)) == 1


def test_finish_prints_a_last_line_after_a_line_printed_at_zero_rows(clock: FakeClock) -> None:
    stream = io.StringIO()
    meter = Progress(4, every_s=5, stream=stream)
    clock.now += 6
    meter.add(0, 0, 0)
    clock.now += 1
    meter.add(4, 0, 0)
    meter.finish()
    assert [line.split(",")[0] for line in _lines(stream)] == [
        "rig-ray batch: 0/4 rows",
        "rig-ray batch: 4/4 rows",
    ]


def test_lines_go_to_stderr_without_a_stream(
    clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    meter = Progress(2, every_s=0)
    meter.add(1, 0, 0)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("rig-ray batch: 1/2 rows")


def test_ticking_prints_while_no_rows_arrive() -> None:
    stream = io.StringIO()
    meter = Progress(10, every_s=0.05, stream=stream)
    with meter.ticking():
        time.sleep(0.4)  # e.g. a model loading before the first batch
    lines = stream.getvalue().splitlines()
    assert len(lines) >= 2
    assert lines[0].startswith("rig-ray batch: 0/10 rows")


def test_ticking_is_silent_when_progress_is_off() -> None:
    stream = io.StringIO()
    with Progress(10, every_s=-1, stream=stream).ticking():
        time.sleep(0.1)
    assert stream.getvalue() == ""


@pytest.mark.usefixtures("local_ray")
def test_a_job_tells_the_rows_it_has_read_while_it_reads_its_input(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """A large input takes a while to read before anything is made: lines say how far the
    reading has come (here one a block, as the interval is 0), without tokens."""
    source = tmp_path / "in"
    source.mkdir()
    for name in "abc":
        lines = [json.dumps({"id": f"{name}{n}", "prompt": "p"}) for n in range(4)]
        (source / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    run(
        str(source), str(tmp_path / "out"), generator=EchoGenerator(model="e"),
        num_cpus=0.25, progress_every_s=0,
    )  # fmt: skip
    reading = [
        line for line in capfd.readouterr().err.splitlines()
        if line.startswith("rig-ray batch: reading the input: ")
    ]  # fmt: skip
    assert reading and "12 rows" in reading[-1], reading
    assert any(line.startswith("rig-ray batch: reading the input: 4 rows") for line in reading)
    assert not [line for line in reading if "tok/s" in line]
