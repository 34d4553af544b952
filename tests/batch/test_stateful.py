"""A stateful search over sequences of batch runs into one output folder.

Hypothesis picks the steps: runs to the end (with operational settings that may change),
runs SIGKILLed after some parts, rows appended or inserted at the front (identical twins and
per-row params included), `num_generations` raised, `retry_failed`, and reruns with a pinned
setting changed (which must be refused and leave the folder as it was). After every step the
folder is checked against a model of what it must hold.
"""

from __future__ import annotations

import collections
import hashlib
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rig_ray.batch import OutputFolder, read_output, run
from rig_ray.batch.manifest import MANIFEST_NAME
from rig_ray.batch.plan import member_indices
from rig_ray.errors import BatchInputError
from rig_ray.generator import seeds
from rig_ray.generator.params import GenerateParams
from tests.batch.stateful_members import FAIL, members, reply_for
from tests.stateful_runs import explore

pytestmark = pytest.mark.usefixtures("local_ray")

HERE = Path(__file__).resolve().parent
SPLIT_SEED = 3
PARAMS = GenerateParams(seed=5)
TEMPLATE = "About $topic"

_row = st.fixed_dictionaries(
    {
        "topic": st.sampled_from(["sea", "sky", f"{FAIL} rock"]),
        "temperature": st.sampled_from([None, 0.5, 1.0]),
        "named": st.booleans(),
    }
)
_operational = st.fixed_dictionaries(
    {
        "batch_size": st.sampled_from([1, 2, 8]),
        "max_concurrent_batches": st.sampled_from([1, 3]),
        "rows_per_part": st.sampled_from([1, 3, 100]),
    }
)
_refused = st.sampled_from(
    [
        {"template": "On $topic"},
        {"seed": SPLIT_SEED + 1},
        {"params": GenerateParams(seed=6)},
        {"num_generations": "lower"},
    ]
)


class BatchFolder(RuleBasedStateMachine):
    """The model: the input rows (each with a `uid` that the output carries through), the
    folder's rows as they must be, and whether the last run finished."""

    examples = 0
    steps = 0

    def __init__(self) -> None:
        super().__init__()
        BatchFolder.examples += 1
        self.root = Path(tempfile.mkdtemp(prefix="rig-ray-stateful-"))
        self.source, self.output = self.root / "in.jsonl", self.root / "out"
        self.healthy = self.root / "healthy"
        self.rows: list[dict[str, t.Any]] = []
        self.next_uid = 0
        self.n = 1
        self.complete = False
        self.written: dict[tuple[str, int], dict[str, t.Any]] = {}
        self.id_of: dict[int, str] = {}  # uid -> its id, once written

    def teardown(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    # -- the input -----------------------------------------------------------------------

    def _make(self, drawn: list[dict[str, t.Any]]) -> list[dict[str, t.Any]]:
        made = []
        for value in drawn:
            row: dict[str, t.Any] = {"uid": self.next_uid, "topic": value["topic"]}
            if value["named"]:
                row["id"] = f"row-{self.next_uid}"
            temperature = value["temperature"]
            row["params"] = None if temperature is None else {"temperature": temperature}
            self.next_uid += 1
            made.append(row)
        return made

    def _save(self) -> None:
        self.source.write_text("".join(json.dumps(row) + "\n" for row in self.rows))
        self.complete = False

    @initialize(drawn=st.lists(_row, min_size=1, max_size=5))
    def start(self, drawn: list[dict[str, t.Any]]) -> None:
        self.rows = self._make(drawn)
        self._save()

    # (each change may be followed by a run at once: sequences that matter come sooner)

    @rule(drawn=st.lists(_row, min_size=1, max_size=3), then_run=st.booleans())
    def append_rows(self, drawn: list[dict[str, t.Any]], then_run: bool) -> None:
        self.rows += self._make(drawn)
        self._save()
        self._then(then_run)

    @rule(drawn=st.lists(_row, min_size=1, max_size=3), then_run=st.booleans())
    def insert_rows_at_the_front(self, drawn: list[dict[str, t.Any]], then_run: bool) -> None:
        self.rows = self._make(drawn) + self.rows
        self._save()
        self._then(then_run)

    @rule(by=st.integers(1, 3), then_run=st.booleans())
    def raise_num_generations(self, by: int, then_run: bool) -> None:
        self.n += by
        self.complete = False
        self._then(then_run)

    def _then(self, then_run: bool) -> None:
        if then_run:
            self._run()
            self.complete = True

    # -- runs ----------------------------------------------------------------------------

    def _options(self, **changes: t.Any) -> dict[str, t.Any]:
        options: dict[str, t.Any] = {
            "template": TEMPLATE,
            "params_column": "params",
            "params": PARAMS,
            "num_generations": self.n,
            "seed": SPLIT_SEED,
            "num_cpus": 0.25,
            "progress": False,
        }
        options.update(changes)
        return options

    def _run(self, **changes: t.Any) -> None:
        run(
            str(self.source),
            str(self.output),
            generators=members(str(self.healthy)),
            **self._options(**changes),
        )

    @rule(operational=_operational)
    def run_to_the_end(self, operational: dict[str, t.Any]) -> None:
        self._run(**operational)  # settings that change no output never refuse a rerun
        self.complete = True

    @rule(operational=_operational)
    def retry_failed(self, operational: dict[str, t.Any]) -> None:
        self.healthy.write_text("")
        try:
            self._run(retry_failed=True, **operational)
        finally:
            self.healthy.unlink()
        self.complete = True
        failed = [row for row in read_output(str(self.output)).to_pylist() if row["error"]]
        assert not failed, failed[:3]

    @rule(parts=st.integers(1, 3))
    def run_and_be_killed(self, parts: int) -> None:
        import ray

        before = len(OutputFolder(str(self.output)).parts())
        spec = self.root / "spec.json"
        spec.write_text(
            json.dumps(
                {
                    "source": str(self.source),
                    "output": str(self.output),
                    "healthy": str(self.healthy),
                    "seconds": 0.3,
                    "params": PARAMS.model_dump(exclude_none=True),
                    "options": {
                        **{k: v for k, v in self._options().items() if k != "params"},
                        "batch_size": 1,
                        "rows_per_part": 1,
                        "seconds_per_part": 0.1,
                        "address": ray.get_runtime_context().gcs_address,
                    },
                }
            )
        )
        job = subprocess.Popen(
            [sys.executable, str(HERE / "stateful_members.py"), str(spec)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while job.poll() is None and time.monotonic() < deadline:
                if len(OutputFolder(str(self.output)).parts()) >= before + parts:
                    break
                time.sleep(0.05)
        finally:
            job.send_signal(signal.SIGKILL)
            job.wait()

    @precondition(lambda self: (self.root / "out" / MANIFEST_NAME).exists())
    @rule(change=_refused)
    def rerun_with_a_pinned_setting_changed(self, change: dict[str, t.Any]) -> None:
        if change.get("num_generations") == "lower":
            if self._manifest_n() < 2:
                return
            change = {"num_generations": self._manifest_n() - 1}
        before = self._snapshot()
        with pytest.raises(BatchInputError, match="from the run that made the output folder"):
            self._run(**change)
        assert self._snapshot() == before  # a refused rerun changes nothing

    # -- checks --------------------------------------------------------------------------

    def _manifest_n(self) -> int:
        manifest = json.loads((self.output / MANIFEST_NAME).read_text())
        return int(manifest["num_generations"])

    def _snapshot(self) -> dict[str, str]:
        if not self.output.exists():
            return {}
        return {
            path.name: hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(self.output.iterdir())
            if path.name != "_rig_ray.lock"
        }

    def _folder(self) -> list[dict[str, t.Any]]:
        if not OutputFolder(str(self.output)).parts():
            return []
        return read_output(str(self.output)).to_pylist()

    @invariant()
    def the_folder_holds_what_it_must(self) -> None:
        BatchFolder.steps += 1
        if not hasattr(self, "rows") or not self.rows:
            return
        found = self._folder()
        keys = collections.Counter((row["id"], row["generation_index"]) for row in found)
        assert not [key for key, count in keys.items() if count > 1]  # one row per key
        by_key = {(row["id"], row["generation_index"]): row for row in found}
        for key, earlier in self.written.items():  # nothing written is lost
            assert key in by_key, key
            if earlier["error"] is None:
                assert by_key[key]["text"] == earlier["text"]
        for row in found:
            uid, row_id = row["uid"], row["id"]
            params = seeds.for_sample(  # a seeded row samples with its own derived seed
                PARAMS.merge_with(GenerateParams(**(row["params"] or {}))),
                row_id,
                row["generation_index"],
            )
            want = reply_for(row["model"], f"About {row['topic']}", params)
            assert row["error"] is not None or row["text"] == want
            owned = member_indices(row_id, row["generation_index"] + 1, 2, SPLIT_SEED)
            assert row["model"] == f"m{[row['generation_index'] in o for o in owned].index(True)}"
            if self._twins(uid) == 1:  # a row with no identical twin: its id never changes
                assert self.id_of.setdefault(uid, row_id) == row_id
        self.written = by_key
        if self.complete:
            self._check_complete(found)

    def _twins(self, uid: int) -> int:
        row = next((r for r in self.rows if r["uid"] == uid), None)
        if row is None or "id" in row:
            return 1
        same = [r for r in self.rows if "id" not in r and self._key(r) == self._key(row)]
        return len(same)

    @staticmethod
    def _key(row: dict[str, t.Any]) -> tuple[str, t.Any]:
        return row["topic"], (row["params"] or {}).get("temperature")

    def _check_complete(self, found: list[dict[str, t.Any]]) -> None:
        per_id: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        indices: dict[str, set[int]] = collections.defaultdict(set)
        for row in found:
            per_id[row["id"]][row["model"]] += 1
            indices[row["id"]].add(row["generation_index"])
        named = [r for r in self.rows if "id" in r]
        assert {f"row-{r['uid']}" for r in named} <= set(per_id)
        groups = collections.Counter(self._key(r) for r in self.rows if "id" not in r)
        assert len(per_id) == len(named) + sum(groups.values())  # one id per input row
        share, extra = divmod(self.n, 2)
        for row_id, made in per_id.items():
            assert indices[row_id] == set(range(self.n)), row_id
            counts = sorted(made.get(f"m{k}", 0) for k in range(2))
            assert counts == sorted([share + (k < extra) for k in range(2)])  # the pool's rule


def _explore(examples: int, steps: int) -> None:
    BatchFolder.examples = BatchFolder.steps = 0
    explore(
        BatchFolder,
        examples,
        steps,
        lambda: f"stateful batch test: {BatchFolder.examples} examples, {BatchFolder.steps} checks",
    )


def test_batch_folders_hold_their_invariants_over_random_runs() -> None:
    _explore(examples=2, steps=4)


@pytest.mark.slow
def test_batch_folders_hold_their_invariants_over_many_random_runs() -> None:
    _explore(examples=12, steps=8)
