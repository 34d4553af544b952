"""`POST /v1/files` with a body that is not a multipart form: a 400 that says so, and no
line in the server's log (the form parser warns of each such body by default)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from rig_ray.serve.files import FileStore, add_file_routes


@pytest.mark.parametrize(
    ("content_type", "body"),
    [("multipart/form-data; boundary=xx", b"garbage"), ("multipart/form-data", b"x")],
)
def test_a_body_that_is_not_a_form_is_a_400_and_no_log_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, content_type: str, body: bytes
) -> None:
    app = FastAPI()
    add_file_routes(app, FileStore(str(tmp_path)))
    with caplog.at_level(logging.DEBUG), TestClient(app) as client:
        response = client.post("/v1/files", content=body, headers={"content-type": content_type})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "file"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
