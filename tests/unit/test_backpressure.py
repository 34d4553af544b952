"""A batch row sent to a full Serve deployment waits and asks again (`admitted`), both on
its way into the app and on to the model, instead of failing."""

from __future__ import annotations

import asyncio
import typing as t

import pytest

from rig_ray.generator import serve_
from rig_ray.generator.serve_ import ServeGenerator, admitted
from rig_ray.message import Message

BackPressureError = pytest.importorskip("ray.serve.exceptions").BackPressureError


class FullThenFree:
    """A deployment handle method whose first `full` calls meet a full queue."""

    def __init__(self, full: int, result: t.Any) -> None:
        self.full, self.result, self.calls = full, result, 0

    def remote(self, *args: t.Any) -> t.Any:
        self.calls += 1
        refused = self.calls <= self.full

        async def answer() -> t.Any:
            if refused:
                raise BackPressureError(num_queued_requests=256, max_queued_requests=256)
            return self.result

        return _Call(answer())


class _Call:
    def __init__(self, coroutine: t.Any) -> None:
        self._coroutine = coroutine

    def __await__(self) -> t.Any:
        return self._coroutine.__await__()

    def cancel(self) -> None:
        self._coroutine.close()


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(serve_, "BACKPRESSURE_FIRST_WAIT_S", 0.0)


def test_a_full_deployment_is_asked_again_until_it_takes_the_call() -> None:
    method = FullThenFree(3, ["done"])
    assert asyncio.run(admitted(method.remote)) == ["done"]
    assert method.calls == 4


def test_a_batch_row_that_meets_a_full_app_is_not_written_as_failed() -> None:
    generator = ServeGenerator(model="m", batch="b")
    method = FullThenFree(2, ["the reply"])
    generator._handle = type("Handle", (), {"batch_request": method})()
    [result] = asyncio.run(
        generator.generate_messages([[Message(role="user", content="hi")]], [generator.params])
    )
    assert result == "the reply" and method.calls == 3
