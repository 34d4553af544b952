"""A stateful search of `/v1/files` and `/v1/batches` over HTTP on 127.0.0.1.

Steps in random order: uploads of every shape (hostile file names, random purposes and bytes,
bodies that are not a multipart form of one file), lookups, downloads and deletes of live,
deleted and invented ids (traversal included), batch creations from random bodies, lists with
random `after` / `limit`, and cancels. After every step: no 5xx; every refusal an OpenAI error
body; a live file reads back byte for byte and is listed; a deleted one is 404 everywhere; the
storage holds nothing but its `files/` and `batches/` folders, each entry named by a random id.
At the end every batch made reaches a final status, and no error it tells carries a traceback.
Runs on the package's test app (`endpoint`), whose `echo` model the batches run on."""

from __future__ import annotations

import json
import os
import re
import time
import typing as t
import urllib.parse

import httpx
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from tests.serve.support import TIMEOUT, Endpoint, openai_error

EXAMPLES, SLOW_EXAMPLES = 12, 80
STEPS = 12
BATCHES_THAT_RUN = 3
"""Batches the whole search may make on a real input file (each starts a job); past them a
creation names an invented file, so it is refused."""
FINAL = {"completed", "failed", "cancelled", "expired"}
URLS = ["/v1/chat/completions", "/v1/completions"]
_ID = re.compile(r"^(file-|batch_)[0-9a-f]{32}$")

texts = st.text(max_size=30)
hostile_names = st.sampled_from(
    ["../../../etc/passwd", "..", "/abs/x.jsonl", "a\\..\\b", "", " ", "x" * 300, "ü.jsonl"]
) | st.text(st.characters(blacklist_categories=["Cs"]), max_size=20)
hex32 = st.text("0123456789abcdef", min_size=32, max_size=32)
invented_ids = st.one_of(
    st.sampled_from(["%2e%2e", "..%2F..%2Fbatches", "file-", "batch_", "%2E", "%00"]),
    hex32.map(lambda h: f"file-{h}"),
    hex32.map(lambda h: f"batch_{h}"),
    st.text(min_size=1, max_size=30).map(
        lambda x: urllib.parse.quote(x, safe="").replace(".", "%2E")
    ),
)
"""Ids no upload made, as a path segment (quoted; dots too, which a client would otherwise
resolve as `.` and `..` segments before sending)."""


def not_there(reply: httpx.Response, invented: str) -> bool:
    """An id no upload made is not found: a 404, or a 405 where the path then names another
    route, or Starlette's redirect to the path without its trailing slash where an encoded
    `/` in the id ends it."""
    if reply.status_code == 307:
        return invented.upper().endswith("%2F")
    return reply.status_code in (404, 405)


def chat_line(custom_id: str) -> str:
    body = {"model": "echo", "messages": [{"role": "user", "content": custom_id}]}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": URLS[0], "body": body})


contents = st.one_of(
    st.binary(max_size=200),
    st.lists(st.sampled_from(["a", "b", "c"]), max_size=3, unique=True).map(
        lambda ids: "".join(chat_line(i) + "\n" for i in ids).encode()
    ),
    st.lists(texts, max_size=4).map(lambda lines: "\n".join(lines).encode()),
)


class FilesAndBatches(RuleBasedStateMachine):
    endpoint: t.ClassVar[Endpoint]
    every_batch: t.ClassVar[list[str]] = []
    """The batches the whole search made (checked once it ends)."""

    def __init__(self) -> None:
        super().__init__()
        self.http = self.endpoint.client()
        self.live: dict[str, bytes] = {}
        self.deleted: set[str] = set()
        self.made: list[str] = []

    def teardown(self) -> None:
        for file_id in self.live:
            self.http.delete(f"/v1/files/{file_id}")
        self.http.close()

    def reply(self, method: str, path: str, **how: t.Any) -> httpx.Response:
        reply = self.http.request(method, path, **how)
        assert reply.status_code < 500, (method, path, reply.status_code, reply.text[:300])
        if reply.status_code >= 400:
            openai_error(reply)
        return reply

    def within_budget(self, file_id: str) -> str:
        """`file_id` while the search may still make batches that run, else an invented one
        (refused): the same draws either way, as replays need."""
        return file_id if len(self.every_batch) < BATCHES_THAT_RUN else f"file-{'0' * 32}"

    def record(self, batch_id: str) -> None:
        self.made.append(batch_id)
        self.every_batch.append(batch_id)

    def known(self) -> list[str]:
        return [*self.live, *self.deleted]

    @initialize()
    def start(self) -> None:
        assert self.endpoint.batch_storage is not None

    # -- files ---------------------------------------------------------------------------

    @rule(name=hostile_names, content=contents, purpose=st.sampled_from(["batch"]) | texts)
    def upload(self, name: str, content: bytes, purpose: str) -> None:
        reply = self.reply(
            "POST", "/v1/files", files={"file": (name, content)}, data={"purpose": purpose}
        )
        if purpose != "batch" or not name:  # no file name: a form field, as a browser sends
            param = "purpose" if purpose != "batch" else "file"  # for no file chosen
            assert reply.status_code == 400 and openai_error(reply)["param"] == param
            return
        assert reply.status_code == 200, reply.text
        made = reply.json()
        assert _ID.match(made["id"]) and made["bytes"] == len(content)
        assert "/" not in made["filename"] and "\\" not in made["filename"]
        self.live[made["id"]] = content

    @rule(
        body=st.binary(max_size=300),
        kind=st.sampled_from(
            ["multipart/form-data", "multipart/form-data; boundary=b", "application/json", ""]
        ),
    )
    def upload_not_a_form(self, body: bytes, kind: str) -> None:
        headers = {"Content-Type": kind} if kind else {}
        reply = self.reply("POST", "/v1/files", content=body, headers=headers)
        assert reply.status_code == 400, reply.text

    @rule(
        data=st.data(),
        what=st.sampled_from(["", "/content"]),
        method=st.sampled_from(["GET", "DELETE"]),
    )
    def look_up(self, data: st.DataObject, what: str, method: str) -> None:
        file_id = data.draw(
            st.sampled_from(self.known()) | invented_ids if self.known() else invented_ids
        )
        if method == "DELETE" and what:
            method = "GET"
        reply = self.reply(method, f"/v1/files/{file_id}{what}")
        if file_id not in self.live:
            assert not_there(reply, file_id), (file_id, reply.text)
            return
        assert reply.status_code == 200, reply.text
        if method == "DELETE":
            assert reply.json()["deleted"] is True
            self.deleted.add(file_id)
            del self.live[file_id]
        elif what:
            assert reply.content == self.live[file_id]
        else:
            assert reply.json()["bytes"] == len(self.live[file_id])

    @rule(purpose=st.none() | st.sampled_from(["batch"]) | texts)
    def list_files(self, purpose: str | None) -> None:
        reply = self.reply(
            "GET", "/v1/files", params={} if purpose is None else {"purpose": purpose}
        )
        assert reply.status_code == 200, reply.text
        listed = {item["id"] for item in reply.json()["data"]}
        if purpose in (None, "batch"):
            assert set(self.live) <= listed
        assert not listed & self.deleted

    # -- batches -------------------------------------------------------------------------

    @rule(
        data=st.data(),
        endpoint=st.sampled_from(URLS) | texts,
        window=st.sampled_from(["24h"]) | texts,
        metadata=st.none() | st.dictionaries(texts, texts | st.integers(), max_size=3),
        extra=st.dictionaries(st.sampled_from(["model", "x", "input_file"]), texts, max_size=1),
    )
    def create_batch(
        self,
        data: st.DataObject,
        endpoint: str,
        window: str,
        metadata: dict[str, t.Any] | None,
        extra: dict[str, str],
    ) -> None:
        ids = st.sampled_from(sorted(self.live)) | invented_ids if self.live else invented_ids
        body: dict[str, t.Any] = {
            "input_file_id": self.within_budget(data.draw(ids)),
            "endpoint": endpoint,
            "completion_window": window,
            **extra,
        }
        if metadata is not None:
            body["metadata"] = metadata
        reply = self.reply("POST", "/v1/batches", json=body)
        if reply.status_code == 200:
            made = reply.json()
            assert body["input_file_id"] in self.live and not extra, body
            assert _ID.match(made["id"]) and made["status"] == "validating"
            self.record(made["id"])

    @precondition(lambda self: bool(self.live))
    @rule(
        data=st.data(),
        endpoint=st.sampled_from(URLS),
        metadata=st.none() | st.dictionaries(texts, texts, max_size=3),
    )
    def run_batch(
        self, data: st.DataObject, endpoint: str, metadata: dict[str, str] | None
    ) -> None:
        may_run = len(self.every_batch) < BATCHES_THAT_RUN
        body = {
            "input_file_id": self.within_budget(data.draw(st.sampled_from(sorted(self.live)))),
            "endpoint": endpoint,
            "completion_window": "24h",
            "metadata": metadata,
        }
        reply = self.reply("POST", "/v1/batches", json=body)
        assert reply.status_code == (200 if may_run else 404), reply.text
        if may_run:
            self.record(reply.json()["id"])

    @rule(
        after=st.none() | st.sampled_from(["batch_x"]) | texts,
        limit=st.none() | st.integers(-5, 120) | texts,
    )
    def list_batches(self, after: str | None, limit: int | str | None) -> None:
        params = {k: v for k, v in {"after": after, "limit": limit}.items() if v is not None}
        reply = self.reply("GET", "/v1/batches", params=params)
        if reply.status_code == 200:
            page = reply.json()
            assert len(page["data"]) <= (limit if isinstance(limit, int) else 20)

    @rule(data=st.data(), cancel=st.booleans())
    def batch(self, data: st.DataObject, cancel: bool) -> None:
        ids = st.sampled_from(self.made) | invented_ids if self.made else invented_ids
        batch_id = data.draw(ids)
        path = f"/v1/batches/{batch_id}" + ("/cancel" if cancel else "")
        reply = self.reply("POST" if cancel else "GET", path)
        if batch_id in self.made:
            assert reply.status_code == 200, reply.text
        else:
            assert not_there(reply, batch_id), (batch_id, reply.text)

    # -- after every step ----------------------------------------------------------------

    @invariant()
    def storage_holds_only_its_own(self) -> None:
        storage = self.endpoint.batch_storage
        assert storage is not None
        assert set(os.listdir(storage)) <= {"files", "batches"}
        for folder in ("files", "batches"):
            for name in os.listdir(f"{storage}/{folder}"):
                assert _ID.match(name) or name.startswith("."), (folder, name)


def search(endpoint: Endpoint, examples: int) -> None:
    FilesAndBatches.endpoint = endpoint
    FilesAndBatches.every_batch = []
    run = FilesAndBatches.TestCase()
    run.settings = settings(
        max_examples=examples,
        stateful_step_count=STEPS,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    run.runTest()
    with endpoint.client() as http:
        deadline = time.monotonic() + TIMEOUT
        for batch_id in FilesAndBatches.every_batch:
            while (batch := http.get(f"/v1/batches/{batch_id}").json())["status"] not in FINAL:
                assert time.monotonic() < deadline, batch
                time.sleep(0.3)
            told = [e["message"] for e in (batch["errors"] or {}).get("data", [])]
            assert not [m for m in told if "Traceback" in m or "ray::" in m], told
    print(f"\nfiles and batches search: {len(FilesAndBatches.every_batch)} batches made")


def test_files_and_batches_never_5xx_and_keep_their_storage(endpoint: Endpoint) -> None:
    search(endpoint, EXAMPLES)


@pytest.mark.slow
def test_files_and_batches_searched_longer(endpoint: Endpoint) -> None:
    search(endpoint, SLOW_EXAMPLES)
