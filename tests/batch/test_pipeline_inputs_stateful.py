"""A stateful search over a stage's output folder and the next stage's input made from it
(no Ray): parts written (new rows, and retries of failed ones), clean-ups (`compact`) and
merges (`merge`) of the stage before, in any order, with the next stage's input brought up
to date (`update_input`) between them. After each update the input must hold exactly one
row per (id, generation_index) of the stage before, made from the row its clean-up keeps
(the first success, else the newest failure), failures left out unless kept, with ids
`<id>/<generation_index>` and `parent_id`; the rows of new parts must be in the update's
fresh subfolder, which holds nothing else."""

from __future__ import annotations

import shutil
import tempfile
import typing as t
from pathlib import Path

import pyarrow.fs as pafs
import pyarrow.parquet as pq
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from rig_ray.batch.output import OutputFolder
from rig_ray.batch.pipeline_inputs import update_input
from tests.batch.test_pipeline_inputs import HOW, part

Key = tuple[str, int]
Made = tuple[Key, str, str | None]  # (key, text, error) of a row of the stage before

_key = st.tuples(st.sampled_from(["q0", "q1", "q2", "q3"]), st.integers(0, 2))
_rows = st.lists(st.tuples(_key, st.booleans()), min_size=1, max_size=4)


class StageBefore(RuleBasedStateMachine):
    """The model: every row the stage before wrote, in the order its parts hold them."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="rig-ray-inputs-"))
        self.stage, self.target = self.root / "answer", self.root / "_inputs" / "judge"
        self.written = 0
        self.rows: list[Made] = []
        self.new: set[str] = set()  # texts of rows written since the last update
        self.updated = False

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    @initialize(keep=st.booleans())
    def choose(self, keep: bool) -> None:
        self.how = HOW._replace(keep_errors=keep)

    def kept(self) -> dict[Key, Made]:
        """Key -> the row a clean-up keeps: the first success, else the newest failure."""
        found: dict[Key, Made] = {}
        for row in self.rows:
            earlier = found.get(row[0])
            if earlier is None or earlier[2] is not None:
                found[row[0]] = row
        return found

    @rule(drawn=_rows)
    def write_a_part(self, drawn: list[tuple[Key, bool]]) -> None:
        """New rows for keys not made yet, or retries of failed ones (as `batch.run` and
        `retry_failed` write them), in a part named after the ones before."""
        kept, rows = self.kept(), []
        for key, ok in dict(drawn).items():
            if key in kept and kept[key][2] is None:
                continue  # a success is never made again
            self.written += 1
            text = f"{key[0]}/{key[1]} #{self.written}"
            rows.append((key, text, None if ok else f"boom #{self.written}"))
        if not rows:
            return
        texts = [text for _, text, _ in rows]
        part(self.stage, f"{self.written:06d}", [(k[0], k[1], e) for k, _, e in rows], texts)
        self.rows += rows
        self.new.update(texts)

    def _compacted(self) -> None:
        kept = set(self.kept().values())
        self.rows = [row for row in self.rows if row in kept]  # in the parts' order still

    @rule()
    def clean_up(self) -> None:
        OutputFolder(str(self.stage)).compact()
        self._compacted()

    @rule(rows_per_part=st.integers(1, 6))
    def merge(self, rows_per_part: int) -> None:
        folder = OutputFolder(str(self.stage))
        if folder._merge_runs(rows_per_part):  # a merge cleans up first where it merges
            folder.merge(rows_per_part=rows_per_part)
            self._compacted()

    @rule()
    def update(self) -> None:
        made = update_input(
            OutputFolder(str(self.stage)), str(self.target), pafs.LocalFileSystem(), self.how
        )
        want = {
            f"{key[0]}/{key[1]}": row
            for key, row in self.kept().items()
            if row[2] is None or self.how.keep_errors
        }
        if made is None:
            assert not self.rows
            return
        found = {r["id"]: r for r in _read(self.target.rglob("*.parquet"))}
        assert sorted(found) == sorted(want) and made.rows == len(want)
        for row_id, row in found.items():
            key, text, _ = want[row_id]
            assert (row["parent_id"], row["text"]) == (key[0], text)
        fresh = [] if made.fresh is None else _read((self.target / made.fresh).glob("*.parquet"))
        texts = {row["text"] for row in fresh}
        assert texts <= {text for _, text, _ in want.values()}  # nothing but rows it holds
        assert {text for text in self.new if _kept(text, want)} <= texts  # and all new ones
        self.new.clear()

    @invariant()
    def parts_are_the_model(self) -> None:
        on_disk = sorted(r["text"] for r in _read(self.stage.glob("part-*.parquet")))
        assert on_disk == sorted(text for _, text, _ in self.rows)


def _read(files: t.Iterable[Path]) -> list[dict[str, t.Any]]:
    return [row for f in sorted(files) for row in pq.read_table(f).to_pylist()]


def _kept(text: str, want: dict[str, Made]) -> bool:
    return any(text == made for _, made, _ in want.values())


TestStageBefore = StageBefore.TestCase
TestStageBefore.settings = settings(
    max_examples=60,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    database=None,
)
