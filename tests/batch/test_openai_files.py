"""OpenAI batch files through `batch.run` and `rig-ray batch --output-format openai`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

from rig_ray.batch import OutputFolder, export_openai, read_output, run
from rig_ray.batch.openai_files import prepare, read_invalid
from rig_ray.errors import BatchInputError
from tests.fakes import EchoGenerator, FailingGenerator

NO_MESSAGE_EXTRAS = dict.fromkeys(("refusal", "annotations", "audio", "function_call"))
"""OpenAI's message keys that rig_ray has no value for: null, as OpenAI's own."""

REPO = Path(__file__).resolve().parents[2]
FAST = {"num_cpus": 0.25, "progress": False}


def chat_line(custom_id: str, text: str, **body: t.Any) -> dict[str, t.Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": text}], **body},
    }


def write_lines(path: Path, lines: t.Sequence[dict[str, t.Any] | str]) -> Path:
    path.write_text(
        "".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines)
    )
    return path


def read_jsonl(path: Path) -> list[dict[str, t.Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


BAD_LINES: list[dict[str, t.Any] | str] = [
    chat_line("ok-1", "one"),
    {**chat_line("bad-url", "x"), "url": "/v1/embeddings"},
    "{not json",
    chat_line("bad-field", "x", logit_bias={"1": 2}),
    chat_line("bad-temp", "x", temperature=5),
    chat_line("vllm-only", "x", ignore_eos=True),
    {"custom_id": "no-body", "method": "POST", "url": "/v1/chat/completions", "body": 3},
    chat_line("ok-2", "two", max_tokens=4),
]


def test_bad_lines_are_recorded_by_line_and_custom_id(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", BAD_LINES)
    prepared = prepare(str(source), str(tmp_path / "out"), vllm_fields=False)
    assert (prepared.valid, prepared.invalid, prepared.num_generations) == (2, 6, 1)
    invalid = {line.line: line for line in read_invalid(str(tmp_path / "out"))}
    assert sorted(invalid) == [2, 3, 4, 5, 6, 7]
    assert invalid[2].custom_id == "bad-url" and invalid[2].code == "invalid_url"
    assert invalid[3].custom_id is None and "line 3" in invalid[3].message
    assert invalid[4].param == "logit_bias" and invalid[4].custom_id == "bad-field"
    assert invalid[5].param == "temperature"
    assert invalid[6].param == "ignore_eos"
    assert invalid[7].param == "body"


def test_a_custom_id_used_twice_refuses_the_file(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [chat_line("a", "x"), chat_line("a", "y")])
    with pytest.raises(BatchInputError, match="'a' is used on lines 1 and 2"):
        prepare(str(source), str(tmp_path / "out"), vllm_fields=False)


def test_the_params_are_the_endpoints(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from rig_ray.generator.params import GenerateParams
    from rig_ray.serve.wire import ChatCompletionRequest

    body = {
        "max_completion_tokens": 7,
        "temperature": 0.5,
        "top_p": 0.9,
        "stop": "END",
        "seed": 3,
        "presence_penalty": 0.1,
        "response_format": {"type": "json_object"},
    }
    source = write_lines(tmp_path / "in.jsonl", [chat_line("a", "x", **body)])
    prepared = prepare(str(source), str(tmp_path / "out"), vllm_fields=False)
    row = pq.read_table(prepared.requests).to_pylist()[0]
    endpoint = ChatCompletionRequest.model_validate(chat_line("a", "x", **body)["body"])
    assert GenerateParams.model_validate_json(row["params"]) == endpoint.to_params()


def test_each_line_is_held_to_the_endpoints_caps(tmp_path: Path) -> None:
    """`n`, messages and stop strings are capped per line as the endpoint caps a request:
    by `rig-ray serve`'s defaults, or by the limits given (a `/v1/batches` batch: its app's)."""
    from rig_ray.serve.limits import RequestLimits

    source = write_lines(
        tmp_path / "in.jsonl",
        [chat_line("n20", "x", n=20), chat_line("stops", "x", stop=["a", "b", "c"])],
    )
    default = prepare(str(source), str(tmp_path / "default"), vllm_fields=False)
    assert (default.valid, default.invalid) == (1, 1)
    assert read_invalid(str(tmp_path / "default"))[0].param == "n"
    wider = RequestLimits(max_n=32, max_stop=2)
    given = prepare(str(source), str(tmp_path / "given"), vllm_fields=False, limits=wider)
    assert (given.valid, given.invalid, given.num_generations) == (1, 1, 20)
    assert read_invalid(str(tmp_path / "given"))[0].param == "stop"


@pytest.mark.usefixtures("local_ray")
def test_output_and_error_files_in_input_order(tmp_path: Path) -> None:
    lines = [
        *BAD_LINES,
        chat_line("three-choices", "many", n=3),
        chat_line("fails", "please FAIL"),
        {
            "custom_id": "text",
            "method": "POST",
            "url": "/v1/completions",
            "body": {"model": "m", "prompt": "Once", "echo": True, "max_tokens": 3},
        },
    ]
    source = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    summary = run(
        str(source), str(out), generator=FailingGenerator(model="f"), output_format="openai", **FAST
    )
    # each line makes its own n: 1 + 1 + 3 + 1 + 1, not the file's largest n for every line
    assert summary.generations_written == 7 and summary.skipped == 0
    assert len(read_output(str(out))) == 7
    again = run(
        str(source), str(out), generator=FailingGenerator(model="f"), output_format="openai", **FAST
    )
    assert (again.generations_written, again.skipped) == (0, 7)
    outputs = read_jsonl(out / "output.jsonl")
    errors = read_jsonl(out / "errors.jsonl")
    assert [line["custom_id"] for line in outputs] == ["ok-1", "ok-2", "three-choices", "text"]
    assert [line["custom_id"] for line in errors] == [
        "bad-url",
        None,
        "bad-field",
        "bad-temp",
        "vllm-only",
        "no-body",
        "fails",
    ]
    first = outputs[0]
    assert set(first) == {"id", "custom_id", "response", "error"} and first["error"] is None
    assert first["response"]["status_code"] == 200
    body = first["response"]["body"]
    assert body["object"] == "chat.completion" and body["model"] == "m"
    assert body["id"] == f"chatcmpl-{first['response']['request_id']}"
    assert body["choices"] == [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "one", **NO_MESSAGE_EXTRAS},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ]
    assert body["usage"] == {
        "prompt_tokens": 1,
        "completion_tokens": 1,
        "total_tokens": 2,
        "prompt_tokens_details": None,
        "completion_tokens_details": None,
    }
    many = outputs[2]["response"]["body"]
    assert [choice["index"] for choice in many["choices"]] == [0, 1, 2]
    assert many["usage"]["prompt_tokens"] == 1 and many["usage"]["completion_tokens"] == 3
    completion = outputs[3]["response"]["body"]
    assert completion["object"] == "text_completion"
    assert completion["id"].startswith("cmpl-")
    assert completion["choices"][0]["text"] == "OnceOnce"  # echo: the prompt, then the reply
    assert errors[-1]["response"]["status_code"] == 500
    assert "FAIL" in errors[-1]["response"]["body"]["error"]["message"]
    assert errors[0]["response"] is None and errors[0]["error"]["code"] == "invalid_url"
    # exporting again elsewhere gives the same lines (ids are stable for the job)
    export_openai(str(out), str(tmp_path / "o.jsonl"), str(tmp_path / "e.jsonl"))
    assert read_jsonl(tmp_path / "o.jsonl") == outputs


def as_openai(source: Path, out: Path) -> t.Any:
    return run(
        str(source), str(out), generator=EchoGenerator(model="e"), output_format="openai", **FAST
    )


@pytest.mark.usefixtures("local_ray")
def test_a_batch_file_whose_first_lines_cannot_run_or_none_can(tmp_path: Path) -> None:
    """Lines that cannot run before the first request (not UTF-8, not an object, an object
    without custom_id) do not make the file another format; a file none of whose lines can
    run ends with an error file only (its prepared requests hold no row)."""
    first_bad = tmp_path / "first_bad.jsonl"
    first_bad.write_bytes(
        b"\xff\xfe not text\n[1, 2]\n{}\n" + json.dumps(chat_line("a", "x")).encode()
    )
    out = tmp_path / "out"
    summary = as_openai(first_bad, out)
    assert summary.generations_written == 1
    assert [x["custom_id"] for x in read_jsonl(out / "output.jsonl")] == ["a"]
    errors = read_jsonl(out / "errors.jsonl")
    assert [(x["error"]["line"], x["error"]["code"]) for x in errors] == [
        (1, "invalid_json_line"), (2, "invalid_json_line"), (3, "invalid_request")
    ]  # fmt: skip
    none_run = write_lines(tmp_path / "none.jsonl", ["{", {**chat_line("u", "x"), "url": "/v1/x"}])
    nothing = tmp_path / "nothing"
    summary = as_openai(none_run, nothing)
    assert (summary.rows_in, summary.generations_written) == (0, 0)
    assert (nothing / "output.jsonl").read_text() == ""
    assert [x["custom_id"] for x in read_jsonl(nothing / "errors.jsonl")] == [None, "u"]


@pytest.mark.usefixtures("local_ray")
def test_a_batch_file_whose_first_request_is_longer_than_a_mib(tmp_path: Path) -> None:
    """A request holding a long document first: the file is still read as a batch file."""
    book = "word " * (1 << 19)  # 2.5 MiB
    source = write_lines(tmp_path / "in.jsonl", [chat_line("long", book), chat_line("b", "x")])
    out = tmp_path / "out"
    summary = as_openai(source, out)
    assert summary.generations_written == 2
    outputs = read_jsonl(out / "output.jsonl")
    assert [line["custom_id"] for line in outputs] == ["long", "b"]
    reply = outputs[0]["response"]["body"]["choices"][0]["message"]["content"]
    assert reply.strip() == book.strip()


@pytest.mark.usefixtures("local_ray")
def test_a_plain_input_is_refused_for_openai_output(tmp_path: Path) -> None:
    source = write_lines(tmp_path / "in.jsonl", [{"prompt": "x"}])
    with pytest.raises(BatchInputError, match="OpenAI batch file"):
        run(
            str(source),
            str(tmp_path / "out"),
            generator=EchoGenerator(model="e"),
            output_format="openai",
            **FAST,
        )


def _cli(source: Path, out: Path, fast: Path, address: str) -> list[str]:
    return [
        sys.executable, "-m", "tests.batch.fake_cli", "batch", str(source), str(out),
        "--generator", f"slow!s,seconds=0.5,fast_when={fast}", "--output-format", "openai",
        "--batch-size", "2", "--num-cpus", "0.25", "--quiet", "--rows-per-part", "4",
        "--address", address,
    ]  # fmt: skip


@pytest.mark.slow
def test_cli_killed_and_resumed_gives_one_line_per_custom_id(
    tmp_path: Path, local_ray: t.Any
) -> None:
    lines = [chat_line(f"req-{i}", f"text {i}") for i in range(40)]
    source = write_lines(tmp_path / "in.jsonl", [*lines, "not json"])
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # Both runs join the session's Ray; the first is slow (0.5 s a batch) so that it is killed
    # halfway, the second runs at once (the file `fast` exists by then).
    fast = tmp_path / "fast"
    command = _cli(source, out, fast, local_ray.get_runtime_context().gcs_address)
    job = subprocess.Popen(command, env=env, cwd=REPO, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600  # a busy machine starts Ray slowly
        while len(OutputFolder(str(out)).parts()) < 2:
            assert job.poll() is None, "the job ended before it could be killed"
            assert time.monotonic() < deadline, "the job wrote no parts in time"
            time.sleep(0.2)
    finally:
        job.send_signal(signal.SIGKILL)
        job.wait()
    fast.write_text("")
    assert not (out / "output.jsonl").exists()  # a killed run writes nothing more
    export_openai(str(out), str(tmp_path / "partial.jsonl"), str(tmp_path / "partial-e.jsonl"))
    partial = read_jsonl(tmp_path / "partial.jsonl")
    assert 0 < len(partial) < 40
    done = subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    outputs = read_jsonl(out / "output.jsonl")
    assert [line["custom_id"] for line in outputs] == [f"req-{i}" for i in range(40)]
    assert [line["response"]["body"]["choices"][0]["message"]["content"] for line in outputs] == [
        f"text {i}" for i in range(40)
    ]
    # what the killed run made is kept as it was (batches finish out of input order, so the
    # partial file need not be a prefix of the final one)
    by_id = {line["custom_id"]: line for line in outputs}
    assert [by_id[line["custom_id"]] for line in partial] == partial
    errors = read_jsonl(out / "errors.jsonl")
    assert len(errors) == 1 and errors[0]["error"]["line"] == 41


@pytest.mark.usefixtures("local_ray")
def test_the_bundled_model_answers_as_the_generator_does(tmp_path: Path) -> None:
    import asyncio

    from rig_ray.generator.params import GenerateParams
    from rig_ray.generator.registry import get_generator
    from rig_ray.message import Message

    identifier = "transformers!smollm2-135m"
    questions = ["What is the capital of France?", "Name a colour."]
    lines = [chat_line(f"q{i}", q, temperature=0, max_tokens=8) for i, q in enumerate(questions)]
    source = write_lines(tmp_path / "in.jsonl", lines)
    out = tmp_path / "out"
    run(str(source), str(out), generator=identifier, output_format="openai", **FAST)
    outputs = read_jsonl(out / "output.jsonl")
    generator = get_generator(identifier)
    generator.load()
    params = GenerateParams(temperature=0, max_tokens=8)
    direct = asyncio.run(
        generator.generate_messages(
            [[Message(role="user", content=q)] for q in questions], [params] * len(questions)
        )
    )
    for line, expected in zip(outputs, direct, strict=True):
        body = line["response"]["body"]
        assert body["choices"][0]["message"]["content"] == expected.message.content
        assert body["choices"][0]["finish_reason"] == expected.stop_reason
        assert body["usage"]["completion_tokens"] == expected.usage.output_tokens
