"""`rig-ray pipeline PIPELINE.yaml` with fake providers, and the YAML's errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rig_ray.batch.pipeline_yaml import load_pipeline, pipeline_from
from rig_ray.cli import main
from rig_ray.errors import PipelineError

GOOD = """
input: {input}
output: {output}
gpu_sharing: swap
stages:
  - name: answer
    generator: [echo!a, echo!b]
    template: "Answer: $question"
    num-generations: 2
    num_cpus: 0.05
  - name: judge
    generator: fixed!j
    template: "Judge $text"
    max-tokens: 8
"""


@pytest.mark.slow
def test_pipeline_from_yaml_runs_and_shows_rows(
    tmp_path: Path, fake_providers: None, local_ray: object, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "q.jsonl"
    source.write_text(json.dumps({"id": "q0", "question": "why?"}) + "\n")
    config = tmp_path / "pipeline.yaml"
    config.write_text(GOOD.format(input=source, output=tmp_path / "out"))
    code = main(["pipeline", str(config), "--show", "--quiet"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "[q0/0] answer: Answer: why? | judge: fixed" in printed
    assert "[q0/1] answer: Answer: why? | judge: fixed" in printed
    assert "stage answer: 1 rows in, 2 generations written" in printed
    assert "stage judge: 2 rows in, 2 generations written" in printed
    assert "swap" in printed


def test_a_bad_key_is_an_error_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "pipeline.yaml"
    config.write_text(GOOD.format(input="q.jsonl", output="out").replace("num_cpus", "num_cpu"))
    assert main(["pipeline", str(config)]) == 2
    error = capsys.readouterr().err
    assert "stage 'answer': unknown key 'num_cpu'" in error
    with pytest.raises(PipelineError, match="unknown key 'outputs'") as raised:
        pipeline_from({"input": "a", "outputs": "b", "stages": []})
    assert raised.value.key == "outputs"
    with pytest.raises(PipelineError, match="'stages' is missing"):
        pipeline_from({"input": "a", "output": "b"})
    with pytest.raises(PipelineError, match="num_generations"):
        pipeline_from(
            {"input": "a", "output": "b", "stages": [{"name": "s", "generator": "echo!x",
                                                       "num-generations": 0}]}
        )  # fmt: skip


def test_yaml_options_become_the_stage(tmp_path: Path) -> None:
    schema = tmp_path / "score.json"
    schema.write_text(json.dumps({"type": "object", "properties": {"score": {"type": "integer"}}}))
    config = tmp_path / "p.yaml"
    config.write_text(
        "input: q.jsonl\noutput: out\nstages:\n"
        "  - {name: a, generator: echo!x, temperature: 0, params: {top_p: 0.5}}\n"
        f"  - {{name: j, generator: echo!y, json-schema: {schema}, on-error: keep}}\n"
    )
    loaded = load_pipeline(str(config))
    first, second = loaded.stages
    assert first.params is not None and first.params.temperature == 0
    assert first.params.top_p == 0.5 and first.generator == "echo!x"
    assert second.json_schema == json.loads(schema.read_text()) and second.on_error == "keep"
    assert loaded.gpu_sharing == "auto"


def test_a_stage_takes_every_option_a_batch_job_takes() -> None:
    """`Stage` (and so a YAML stage) has a field for each of `batch.generate`'s options, but
    those an OpenAI batch file sets for itself."""
    import inspect

    from rig_ray.batch import Stage, generate
    from rig_ray.batch.pipeline_yaml import STAGE_KEYS

    own = {"dataset", "route_column", "routes", "generations_column", "seeds"}
    options = set(inspect.signature(generate).parameters) - own
    assert options <= set(Stage.model_fields)
    assert options <= set(STAGE_KEYS)


def test_a_yaml_stage_takes_a_text_column_and_data_cpus(tmp_path: Path) -> None:
    config = tmp_path / "p.yaml"
    config.write_text(
        "input: q.jsonl\noutput: out\nstages:\n"
        "  - {name: a, generator: echo!x, text-column: body, data-cpus: 0}\n"
    )
    (stage,) = load_pipeline(str(config)).stages
    assert (stage.text_column, stage.data_cpus) == ("body", 0)
    assert stage.run_options()["text_column"] == "body"


@pytest.mark.parametrize("rows", ["-3", "many"])
def test_a_show_that_is_no_number_of_rows_is_refused(
    rows: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["pipeline", "pipeline.yaml", "--show", rows])
    assert exit_.value.code == 2
    assert "a number of rows of at least 0" in capsys.readouterr().err
