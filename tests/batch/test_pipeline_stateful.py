"""A stateful search over sequences of pipeline runs into one output folder.

Hypothesis picks the steps: whole runs in either mode (with operational settings that may
change), runs of the first stages only, questions added, more answers per question, an echo
stage added at the end, runs SIGKILLed in a chosen stage, and reruns with a stage's template
changed (refused, naming the stage, with every folder left as it was). After every step each
stage's folder is checked against what its parents allow: one row per (id, generation), ids
`<parent id>/<generation index>`, `parent_id`, the right text and typed score, nothing written
lost; after a whole run, that every stage is complete and `read_pipeline` joins them.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
import typing as t
from pathlib import Path

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from rig_ray import PipelineError
from rig_ray.batch import OutputFolder, read_output, read_pipeline, run_pipeline
from rig_ray.batch.manifest import MANIFEST_NAME
from tests.batch.pipeline_members import loads
from tests.batch.pipeline_search_job import STAGE_NAMES, chain
from tests.batch.test_pipeline_recovery import ROOT, _kill_all
from tests.stateful_runs import explore

pytestmark = pytest.mark.usefixtures("local_ray")

Key = tuple[str, int]
Row = dict[str, t.Any]

_question = st.sampled_from(["sea", "deep sky", "sky BAD", "rock FAIL"])
_mode = st.sampled_from(["swap", "stream"])
_operational = st.fixed_dictionaries(
    {
        "batch_size": st.sampled_from([1, 2, 8]),
        "max_concurrent_batches": st.sampled_from([1, 3]),
        "rows_per_part": st.sampled_from([1, 3, 100]),
    }
)


def judged(question: str) -> tuple[str, int | None]:
    """The judge's reply and score for an answer to `question` (its prompt's word count)."""
    if "BAD" in question:
        return "not JSON", None
    words = len(f"Q: {question} A: Answer: {question}".split())
    return json.dumps({"score": words}), words


class PipelineFolder(RuleBasedStateMachine):
    """The model: the questions (id -> text), answers per question, the stages the folder's
    record holds, and whether the last run was whole and ended."""

    examples = 0
    steps = 0
    done: t.ClassVar[collections.Counter[str]] = collections.Counter()  # what the steps did

    def __init__(self) -> None:
        super().__init__()
        PipelineFolder.examples += 1
        self.root = Path(tempfile.mkdtemp(prefix="rig-ray-pipeline-search-"))
        self.source, self.output = self.root / "q.jsonl", self.root / "out"
        self.questions: dict[str, str] = {}
        self.answers = 1
        self.stages = 2
        self.keep = False
        self.recorded = 0  # stages in the folder's record
        self.complete = False
        self.written: dict[str, dict[Key, Row]] = {name: {} for name in STAGE_NAMES}

    def teardown(self) -> None:
        import shutil

        shutil.rmtree(self.root, ignore_errors=True)

    # -- the input and the chain -----------------------------------------------------------

    def _add(self, drawn: list[str]) -> None:
        for text in drawn:
            self.questions[f"q{len(self.questions)}"] = text
        rows = [{"id": key, "question": text} for key, text in self.questions.items()]
        self.source.write_text("".join(json.dumps(row) + "\n" for row in rows))
        self.complete = False

    @initialize(drawn=st.lists(_question, min_size=1, max_size=3))
    def start(self, drawn: list[str]) -> None:
        self._add(drawn)

    def _chain(self, stages: int | None = None, **changes: t.Any) -> dict[str, t.Any]:
        return {
            "logs": str(self.root),
            "stages": self.stages if stages is None else stages,
            "answers": self.answers,
            "keep": self.keep,
            **changes,
        }

    def _run(self, mode: str, stages: int | None = None, **changes: t.Any) -> None:
        made = chain(**self._chain(stages, **changes))
        run_pipeline(
            str(self.source), str(self.output), stages=made, gpu_sharing=mode, progress=False
        )
        self.recorded = max(self.recorded, len(made))

    # -- rules (a change may be followed by a whole run at once) -----------------------------

    @rule(drawn=st.lists(_question, min_size=1, max_size=2), mode=st.none() | _mode)
    def add_questions(self, drawn: list[str], mode: str | None) -> None:
        self._add(drawn)
        self._then(mode)

    @rule(by=st.integers(1, 2), mode=st.none() | _mode)
    def more_answers_per_question(self, by: int, mode: str | None) -> None:
        self.answers += by
        self.complete = False
        self._then(mode)

    def _then(self, mode: str | None) -> None:
        if mode is not None:
            self.run_whole(mode, {})

    @rule(mode=_mode, operational=_operational)
    def run_whole(self, mode: str, operational: dict[str, t.Any]) -> None:
        self._run(mode, operational=operational)
        self.complete = True
        PipelineFolder.done[f"whole {mode} runs"] += 1

    @rule(stages=st.integers(1, 2), mode=_mode)
    def run_the_first_stages(self, stages: int, mode: str) -> None:
        stages = min(stages, self.stages)
        self._run(mode, stages=stages)
        if stages == self.stages:  # else what is new has not reached the later stages
            self.complete = True

    @precondition(lambda self: self.stages == 2)
    @rule(keep=st.booleans(), mode=_mode)
    def add_an_echo_stage(self, keep: bool, mode: str) -> None:
        """A stage added at the end of a complete pipeline runs alone."""
        self.stages, self.keep = 3, keep
        was_complete = self.complete
        before = [loads(self.root / f"{name}.log") for name in ("answer", "judge")]
        self._run(mode)
        if was_complete:
            assert [loads(self.root / f"{name}.log") for name in ("answer", "judge")] == before
            PipelineFolder.done["a stage added alone"] += 1
        self.complete = True

    @precondition(lambda self: self.recorded > 0)
    @rule(stage=st.integers(0, 2))
    def rerun_with_a_template_changed(self, stage: int) -> None:
        name = STAGE_NAMES[min(stage, self.stages - 1)]
        if not (self.output / name / MANIFEST_NAME).exists():
            return
        before = self._snapshot()
        with pytest.raises(PipelineError, match=f"stage {name!r}"):
            self._run("swap", changed=name)
        assert self._snapshot() == before  # a refused pipeline touches no stage
        PipelineFolder.done["refused"] += 1

    @rule(question=_question, stage=st.integers(0, 2), parts=st.integers(1, 2), mode=_mode)
    def run_and_be_killed(self, question: str, stage: int, parts: int, mode: str) -> None:
        """A question added (so that every stage has work), then a run in a process of its
        own, SIGKILLed once the chosen stage has written `parts` parts."""
        import ray

        self._add([question])
        name = STAGE_NAMES[min(stage, self.stages - 1)]
        folder = OutputFolder(str(self.output / name))
        before = len(folder.parts())
        operational = {"batch_size": 1, "rows_per_part": 1, "seconds_per_part": 0.1}
        spec = self.root / "spec.json"
        made = self._chain(seconds=0.3, operational=operational)
        spec.write_text(
            json.dumps(
                {
                    "source": str(self.source),
                    "output": str(self.output),
                    "mode": mode,
                    "chain": made,
                }
            )
        )
        address = ray.get_runtime_context().gcs_address
        job = subprocess.Popen(
            [sys.executable, "-m", "tests.batch.pipeline_search_job", str(spec)],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "RAY_ADDRESS": address},
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 120
            while job.poll() is None and time.monotonic() < deadline:
                if len(folder.parts()) >= before + parts:
                    break
                time.sleep(0.05)
        finally:
            if job.poll() is None:
                _kill_all(job)
        self.recorded = max(self.recorded, self.stages)
        self.complete = job.returncode == 0  # it ran the whole chain to its end
        PipelineFolder.done[f"killed in {name}" if job.returncode else "ran before a kill"] += 1

    # -- checks ------------------------------------------------------------------------------

    def _snapshot(self) -> dict[str, str]:
        return {
            str(path.relative_to(self.output)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(self.output.rglob("*"))
            if path.is_file() and path.name != "_rig_ray.lock"
        }

    def _rows(self, name: str) -> list[Row]:
        if not OutputFolder(str(self.output / name)).parts():
            return []
        return t.cast(list[Row], read_output(str(self.output / name)).to_pylist())

    @invariant()
    def every_stage_holds_what_its_parents_allow(self) -> None:
        PipelineFolder.steps += 1
        if not self.questions:
            return
        parents: dict[str, Row] = {}  # id of a row the stage may take -> its parent row
        for key, text in self.questions.items():
            parents[key] = {"question": text}
        wanted: dict[str, set[Key]] = {}
        for name in STAGE_NAMES:
            rows = self._rows(name)
            self._check_stage(name, rows, parents)
            if name == "answer":
                wanted[name] = {(q, g) for q in self.questions for g in range(self.answers)}
            else:
                wanted[name] = {(key, 0) for key in parents}
            parents = {
                f"{row['id']}/{row['generation_index']}": row
                for row in rows
                if row["error"] is None or (name == "judge" and self.keep)
            }
        if self.complete:
            for name in STAGE_NAMES[: self.stages]:
                found = {(row["id"], row["generation_index"]) for row in self._rows(name)}
                assert found == wanted[name], name
            self._check_joined()

    def _check_stage(self, name: str, rows: list[Row], parents: dict[str, Row]) -> None:
        keys = collections.Counter((row["id"], row["generation_index"]) for row in rows)
        assert not [key for key, count in keys.items() if count > 1], name  # one row per key
        by_key = {(row["id"], row["generation_index"]): row for row in rows}
        for key, earlier in self.written[name].items():  # nothing written is lost
            assert key in by_key, (name, key)
            if earlier["error"] is None:
                assert by_key[key]["text"] == earlier["text"], (name, key)
        self.written[name] = by_key
        for row in rows:
            if name == "answer":
                parent, question = row["id"], self.questions[row["id"]]
                assert row["generation_index"] < self.answers
                assert (row["error"] is not None) == ("FAIL" in question)
                assert row["error"] is not None or row["text"] == f"Answer: {question}"
                continue
            parent = row["parent_id"]
            assert row["id"].rsplit("/", 1)[0] == parent and row["generation_index"] == 0
            assert row["id"] in parents, (name, row["id"])  # its parent is there, and passed
            question = row["question"]
            assert question == self.questions[row["id"].split("/")[0]]
            if name == "judge":
                text, score = judged(question)
                assert row["text"] == text and row["score"] == score
                assert (row["error"] is not None) == (score is None)
            elif parents[row["id"]]["error"] is None:
                assert row["text"] == f"{parents[row['id']]['score']}|Answer: {question}"

    def _check_joined(self) -> None:
        last = STAGE_NAMES[self.recorded - 1]
        final = read_pipeline(str(self.output)).to_pylist()
        assert len(final) == len(self._rows(last))
        answers = {f"{row['id']}/{row['generation_index']}": row for row in self._rows("answer")}
        for row in final:
            answer = answers["/".join(row["id"].split("/")[:2])]
            assert row["answer_text"] == answer["text"] and row["answer_model"] == answer["model"]
            if last == "echo":
                assert "judge_score" in row


def _explore(examples: int, steps: int) -> None:
    PipelineFolder.examples = PipelineFolder.steps = 0
    PipelineFolder.done.clear()
    explore(
        PipelineFolder,
        examples,
        steps,
        lambda: (
            f"stateful pipeline test: {PipelineFolder.examples} examples, "
            f"{PipelineFolder.steps} checks; {dict(PipelineFolder.done)}"
        ),
    )


@pytest.mark.slow
def test_pipeline_folders_hold_their_invariants_over_random_runs() -> None:
    _explore(examples=8, steps=6)
