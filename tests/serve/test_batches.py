"""`/v1/files` and `/v1/batches` with the official `openai` client over HTTP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
import typing as t

import openai
import pytest

from tests.serve.support import KEY, MAX_STOP, SMOL, TIMEOUT, Endpoint

SLOW_PREFIX = "/slowbatch"


def line(custom_id: str, text: str, model: str = "echo", **body: t.Any) -> dict[str, t.Any]:
    return {
        "custom_id": custom_id,
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": model, "messages": [{"role": "user", "content": text}], **body},
    }


def jsonl(lines: t.Sequence[dict[str, t.Any] | str]) -> bytes:
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def parse(content: bytes) -> list[dict[str, t.Any]]:
    return [json.loads(x) for x in content.decode().splitlines()]


async def submit(client: openai.AsyncOpenAI, data: bytes) -> t.Any:
    uploaded = await client.files.create(file=("requests.jsonl", data), purpose="batch")
    return await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )


async def wait_for(
    client: openai.AsyncOpenAI, batch_id: str, until: t.Callable[[t.Any], bool]
) -> t.Any:
    deadline = time.monotonic() + TIMEOUT
    while True:
        batch = await client.batches.retrieve(batch_id)
        if until(batch):
            return batch
        assert batch.status not in ("failed", "expired"), batch
        assert time.monotonic() < deadline, f"batch still {batch.status}"
        await asyncio.sleep(0.3)


def finished(batch: t.Any) -> bool:
    return batch.status in ("completed", "cancelled", "failed")


@pytest.mark.slow
async def test_a_batch_answers_as_the_endpoint_does(endpoint: Endpoint) -> None:
    client = endpoint.openai()
    questions = ["What is the capital of France?", "Say hello.", "Count to three.", "A story:"]
    sampling = [{"temperature": 0}] * 3 + [{"temperature": 1.0, "seed": 1234}]  # seeded
    lines = [
        line(f"q{i}", q, model=SMOL, max_tokens=12, **how)
        for i, (q, how) in enumerate(zip(questions, sampling, strict=True))
    ]
    batch = await submit(client, jsonl(lines))
    assert batch.status == "validating" and batch.id.startswith("batch_")
    batch = await wait_for(client, batch.id, finished)
    assert batch.status == "completed", batch
    assert batch.request_counts.total == 4 and batch.request_counts.completed == 4
    assert batch.completed_at and batch.in_progress_at and batch.error_file_id is None
    output = parse((await client.files.content(batch.output_file_id)).content)
    assert [x["custom_id"] for x in output] == ["q0", "q1", "q2", "q3"]
    for got, question, how in zip(output, questions, sampling, strict=True):
        online = await client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": question}],
            max_tokens=12,
            **how,
        )
        body = got["response"]["body"]
        expected = online.model_dump(mode="json", exclude_none=True)
        assert got["response"]["status_code"] == 200 and got["error"] is None
        for key in ("object", "model", "choices", "usage"):
            ours = (
                {k: v for k, v in body[key].items() if v is not None}
                if key == "usage"
                else body[key]
            )
            assert _without_nones(ours) == expected[key], key


def _without_nones(value: t.Any) -> t.Any:
    if isinstance(value, dict):
        return {k: _without_nones(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_without_nones(v) for v in value]
    return value


async def test_bad_lines_land_in_the_error_file(endpoint: Endpoint) -> None:
    client = endpoint.openai()
    lines = [
        line("good", "fine"),
        {**line("other-url", "x"), "url": "/v1/embeddings"},
        "{this is not json",
        line("refused", "x", logit_bias={"5": 1}),
        line("fails", "please FAIL"),
        line("good-2", "also fine", n=2),
        line("stops", "x", stop=["a", "b", "c"][: MAX_STOP + 1]),  # over the app's own cap
    ]
    batch = await wait_for(client, (await submit(client, jsonl(lines))).id, finished)
    assert batch.status == "completed"
    assert (batch.request_counts.total, batch.request_counts.completed) == (7, 2)
    assert batch.request_counts.failed == 5
    assert batch.errors is not None and [e.line for e in batch.errors.data] == [2, 3, 4, 7]
    output = parse((await client.files.content(batch.output_file_id)).content)
    assert [x["custom_id"] for x in output] == ["good", "good-2"]
    assert len(output[1]["response"]["body"]["choices"]) == 2
    from rig_ray.batch import read_output

    assert endpoint.batch_storage is not None
    made = read_output(f"{endpoint.batch_storage}/batches/{batch.id}/job").to_pylist()
    per_line = sorted((row["id"], row["generation_index"]) for row in made)
    assert per_line == [("fails", 0), ("good", 0), ("good-2", 0), ("good-2", 1)]  # its own n
    errors = parse((await client.files.content(batch.error_file_id)).content)
    assert [x["custom_id"] for x in errors] == ["other-url", None, "refused", "fails", "stops"]
    assert errors[1]["error"]["line"] == 3
    assert errors[2]["error"]["param"] == "logit_bias"
    assert errors[3]["response"]["status_code"] == 500
    assert errors[4]["error"]["param"] == "stop"


async def test_a_file_with_no_line_that_runs_and_an_empty_file(endpoint: Endpoint) -> None:
    """A file none of whose lines can run (its first line not even UTF-8) completes with an
    error file and no output file, as OpenAI's does; an empty one fails as `empty_file`. No
    error a client sees carries a traceback."""
    client = endpoint.openai()
    unrunnable = b"\xff\xfe not text\n[1, 2]\n{}\n" + jsonl([{**line("u", "x"), "url": "/v1/x"}])
    batch = await wait_for(client, (await submit(client, unrunnable)).id, finished)
    assert batch.status == "completed", batch.errors
    assert batch.output_file_id is None and batch.error_file_id is not None
    assert (batch.request_counts.total, batch.request_counts.failed) == (4, 4)
    errors = parse((await client.files.content(batch.error_file_id)).content)
    assert [(x["custom_id"], x["error"]["line"]) for x in errors] == [
        (None, 1), (None, 2), (None, 3), ("u", 4)
    ]  # fmt: skip
    empty = await wait_for(client, (await submit(client, b"")).id, finished)
    assert empty.status == "failed" and empty.errors is not None
    assert [e.code for e in empty.errors.data] == ["empty_file"]
    told = [*(batch.errors.data if batch.errors else []), *empty.errors.data]
    assert not [e for e in told if "Traceback" in e.message or "ray::" in e.message], told


async def test_uploads_that_are_not_one_file_and_metadata_past_openai_limits(
    endpoint: Endpoint,
) -> None:
    with endpoint.client() as http:
        for headers, body in [
            ({"Content-Type": "multipart/form-data; boundary=x"}, b"not a form"),
            ({"Content-Type": "multipart/form-data"}, b"no boundary"),
        ]:
            refused = http.post("/v1/files", content=body, headers=headers)
            assert refused.status_code == 400 and "multipart" in refused.text, refused.text
        two = [("file", ("a.jsonl", b"{}\n")), ("file", ("b.jsonl", b"{}\n"))]
        refused = http.post("/v1/files", files=two, data={"purpose": "batch"})
        assert refused.status_code == 400 and "one file" in refused.text, refused.text
        uploaded = http.post(
            "/v1/files", files={"file": ("a.jsonl", jsonl([line("a", "x")]))},
            data={"purpose": "batch"},
        ).json()  # fmt: skip
        ask = {
            "input_file_id": uploaded["id"],
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
        }
        for metadata, named in [
            ({"k" * 65: "v"}, "64 characters"),
            ({"k": "v" * 513}, "512 characters"),
            ({str(i): "v" for i in range(17)}, "16 keys"),
        ]:
            refused = http.post("/v1/batches", json={**ask, "metadata": metadata})
            assert refused.status_code == 400 and named in refused.text, refused.text
        assert http.delete(f"/v1/files/{uploaded['id']}").status_code == 200


@pytest.mark.usefixtures("every_cpu_held")
async def test_a_batch_runs_while_replicas_and_others_hold_every_cpu(endpoint: Endpoint) -> None:
    # Its reads and its cut into batches ask no CPU (`serve.batch_job.DATA_CPUS`).
    client = endpoint.openai()
    lines = [line(f"c{i}", f"held {i}") for i in range(5)]
    batch = await wait_for(client, (await submit(client, jsonl(lines))).id, finished)
    assert batch.status == "completed" and batch.request_counts.completed == 5, batch
    output = parse((await client.files.content(batch.output_file_id)).content)
    assert [x["custom_id"] for x in output] == [f"c{i}" for i in range(5)]


async def test_files_list_retrieve_delete_and_batches_list(endpoint: Endpoint) -> None:
    client = endpoint.openai()
    uploaded = await client.files.create(
        file=("mine.jsonl", jsonl([line("a", "x")])), purpose="batch"
    )
    assert uploaded.filename == "mine.jsonl" and uploaded.purpose == "batch"
    assert (await client.files.retrieve(uploaded.id)).bytes == uploaded.bytes
    assert uploaded.id in [f.id async for f in client.files.list()]
    first = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h",
        metadata={"run": "1"},
    )  # fmt: skip
    second = await client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    page = await client.batches.list(limit=1)
    assert [b.id for b in page.data] == [second.id] and page.has_more
    after = await client.batches.list(after=second.id, limit=1)
    assert [b.id for b in after.data] == [first.id]
    assert (await client.batches.retrieve(first.id)).metadata == {"run": "1"}
    await wait_for(client, second.id, finished)
    deleted = await client.files.delete(uploaded.id)
    assert deleted.deleted
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(uploaded.id)


async def test_limits_traversal_guessed_ids_and_auth(endpoint: Endpoint) -> None:
    client = endpoint.openai()
    too_many = b'{"custom_id": "x"}\n' * 50_001
    with pytest.raises(openai.BadRequestError, match="50,000 requests"):
        await client.files.create(file=("big.jsonl", too_many), purpose="batch")
    with pytest.raises(openai.BadRequestError, match="purpose"):
        await client.files.create(file=("a.jsonl", b"{}\n"), purpose="fine-tune")
    with endpoint.client() as http:
        for path in (
            "/v1/files/..%2F..%2Fbatches",
            "/v1/files/../../etc/passwd",
            f"/v1/files/file-{secrets.token_hex(16)}",
            f"/v1/files/file-{secrets.token_hex(16)}/content",
            "/v1/batches/batch_..%2Ffiles",
            f"/v1/batches/batch_{secrets.token_hex(16)}",
        ):
            assert http.get(path).status_code == 404, path
        missing = http.post(
            "/v1/batches",
            json={
                "input_file_id": f"file-{secrets.token_hex(16)}",
                "endpoint": "/v1/chat/completions",
                "completion_window": "24h",
            },
        )
        assert missing.status_code == 404
    with endpoint.client(api_key=None) as anonymous:
        assert anonymous.get("/v1/files").status_code == 401
        assert anonymous.get("/v1/batches").status_code == 401
        upload = anonymous.post(
            "/v1/files", files={"file": ("a.jsonl", b"{}")}, data={"purpose": "batch"}
        )
        assert upload.status_code == 401
    with endpoint.client(api_key="wrong") as wrong:
        assert wrong.get("/v1/files").status_code == 401


# -- cancel, restart and expiry, on an app of their own: a slow model, one batch request at a
# time. One generator: the default one-deployment app, so these are also its batch tests (the
# package's `endpoint` app, several generators, runs the batches of the split app above).

LONG_LINES = 200
"""Lines of a batch that is stopped part way: 60 s of the slow model's work at the least, so
that a busy machine, slow to report the first lines done, still stops it part way."""
LEASE_S = 3.0
"""The slow app's batch lease: a replica that went without letting go of a batch's lease
(killed before its shutdown hook ran) leaves it stale after this, not the default 30 s."""


def slow_app(storage: str) -> t.Any:
    from rig_ray.serve import ServedModel, build_app
    from tests.serve.generators import SlowGenerator

    model = ServedModel(
        generator=SlowGenerator(model="slow", delay=0.3), ray_actor_options={"num_cpus": 0.1}
    )
    return build_app(
        [model],
        api_key=KEY,
        batch_storage=storage,
        batch_max_in_flight=1,
        batch_lease_s=LEASE_S,
    )


@pytest.fixture(scope="module")
def slow_endpoint(
    local_serve: int, tmp_path_factory: pytest.TempPathFactory
) -> t.Iterator[tuple[Endpoint, str]]:
    """The slow app, deployed once for the module (the restart test deploys it again on the
    same storage); each test runs batches of its own."""
    from ray import serve

    storage = str(tmp_path_factory.mktemp("slowbatch") / "storage")
    serve.run(slow_app(storage), name="slowbatch", route_prefix=SLOW_PREFIX)
    try:
        yield Endpoint(local_serve, SLOW_PREFIX), storage
    finally:
        serve.delete("slowbatch")


@pytest.mark.slow
async def test_cancel_keeps_the_lines_that_finished(slow_endpoint: tuple[Endpoint, str]) -> None:
    from ray import serve

    endpoint, _ = slow_endpoint
    deployments = serve.status().applications["slowbatch"].deployments
    assert list(deployments) == ["slow"]  # the one-deployment app runs these batches
    client = endpoint.openai()
    lines = [line(f"r{i}", f"text {i}", "slow") for i in range(LONG_LINES)]
    batch = await submit(client, jsonl(lines))
    await wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2)
    cancelling = await client.batches.cancel(batch.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at
    batch = await wait_for(client, batch.id, finished)
    assert batch.status == "cancelled" and batch.cancelled_at
    output = parse((await client.files.content(batch.output_file_id)).content)
    ids = [x["custom_id"] for x in output]
    assert 2 <= len(ids) < LONG_LINES and ids == [f"r{i}" for i in range(len(ids))]
    assert batch.request_counts.completed == len(ids)
    assert batch.request_counts.failed == 0  # the lines it did not make are not failed ones


@pytest.mark.slow
async def test_a_restarted_app_completes_the_batch(slow_endpoint: tuple[Endpoint, str]) -> None:
    from ray import serve

    endpoint, storage = slow_endpoint
    client = endpoint.openai()
    count = 30
    batch = await submit(client, jsonl([line(f"r{i}", f"text {i}", "slow") for i in range(count)]))
    await wait_for(client, batch.id, lambda b: b.request_counts.completed >= 3)
    serve.delete("slowbatch")  # the ingress replica goes, with the batch's task
    serve.run(slow_app(storage), name="slowbatch", route_prefix=SLOW_PREFIX)
    batch = await wait_for(client, batch.id, finished)
    assert batch.status == "completed"
    output = parse((await client.files.content(batch.output_file_id)).content)
    assert [x["custom_id"] for x in output] == [f"r{i}" for i in range(count)]
    assert all(x["response"]["body"]["choices"][0]["message"]["content"] == "slow" for x in output)
    from rig_ray.batch import read_output

    made = read_output(f"{storage}/batches/{batch.id}/job", columns=["id"]).column("id").to_pylist()
    assert sorted(made) == sorted(f"r{i}" for i in range(count))  # nothing made twice


async def test_a_file_over_200_mb_is_refused_naming_the_limit() -> None:
    from rig_ray.errors import ServeRequestError
    from rig_ray.serve import files

    class Upload:  # 201 chunks of 1 MiB, without holding them all
        def __init__(self) -> None:
            self.left = 201

        async def read(self, size: int) -> bytes:
            if not self.left:
                return b""
            self.left -= 1
            return b"x" * size

    with pytest.raises(ServeRequestError, match="limit of 200 MB per file") as refused:
        await files._upload_chunks(Upload())
    assert refused.value.status_code == 400


@pytest.mark.slow
async def test_an_expired_batch_keeps_the_lines_that_finished(
    slow_endpoint: tuple[Endpoint, str],
) -> None:
    from rig_ray.serve.batches import BatchStore
    from rig_ray.serve.files import FileStore

    endpoint, storage = slow_endpoint
    client = endpoint.openai()
    lines = [line(f"r{i}", f"text {i}", "slow") for i in range(LONG_LINES)]
    batch = await submit(client, jsonl(lines))
    await wait_for(client, batch.id, lambda b: b.request_counts.completed >= 2)
    store = BatchStore(FileStore(storage))  # the window ends now, on the storage itself
    running = store.get(batch.id)
    store.save(running.model_copy(update={"expires_at": int(time.time()) - 1}))
    deadline = time.monotonic() + TIMEOUT
    while (batch := await client.batches.retrieve(batch.id)).status != "expired":
        assert batch.status in ("in_progress", "finalizing"), batch
        assert time.monotonic() < deadline
        await asyncio.sleep(0.3)
    assert batch.expired_at and batch.output_file_id
    output = parse((await client.files.content(batch.output_file_id)).content)
    ids = [x["custom_id"] for x in output]
    assert 2 <= len(ids) < LONG_LINES and batch.request_counts.completed == len(ids)


def test_a_job_on_this_nodes_disk_runs_on_this_node(local_ray: t.Any) -> None:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from rig_ray.serve.batch_job import job_placement

    strategy = job_placement("/var/cache/rig_ray/batch-storage/jobs/b1")["scheduling_strategy"]
    assert isinstance(strategy, NodeAffinitySchedulingStrategy) and not strategy.soft
    assert strategy.node_id == local_ray.get_runtime_context().get_node_id()
    assert job_placement("s3://bucket/batch-storage/jobs/b1") == {}  # any node reaches it
