"""`/v1/batches` on a one-deployment app: the batch job's rows come back to the app's one
deployment. Runs next to tests/serve/test_batches.py, while the package's Ray still has a CPU
free for the job's Ray Data tasks (see the README on `/v1/batches`)."""

from __future__ import annotations

from tests.serve import test_one_deployment
from tests.serve.support import Endpoint

one_app = test_one_deployment.one
"""The one-deployment app of tests/serve/test_one_deployment.py, as fixture `one_app`."""


async def test_a_batch_runs_on_the_one_deployment(one_app: Endpoint) -> None:
    from tests.serve.test_batches import finished, jsonl, line, parse, submit, wait_for

    async with one_app.openai() as client:
        batch = await submit(client, jsonl([line("a", "x", "ticker"), line("b", "y", "ticker")]))
        batch = await wait_for(client, batch.id, finished)
        assert batch.status == "completed", batch
        output = parse((await client.files.content(batch.output_file_id)).content)
    assert [row["custom_id"] for row in output] == ["a", "b"]
    for row in output:
        reply = row["response"]["body"]["choices"][0]["message"]["content"]
        assert reply.startswith("tick0 ")
