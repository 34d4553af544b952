"""`Route`: a served model as the batch runner reaches it, and `send_row`: one row of a batch
job through the model deployment's Serve handle, at `BATCH_PRIORITY`."""

from __future__ import annotations

import functools
import typing as t

from rig_ray.generator.params import GenerateParams
from rig_ray.generator.priority import BATCH_PRIORITY
from rig_ray.generator.serve_ import admitted
from rig_ray.message import Message


class Route(t.NamedTuple):
    """A served model, as the runner sends to it."""

    handle: t.Any
    vllm_fields: bool


async def send_row(
    route: Route, request_id: str, kind: str, prompt: t.Any, params: GenerateParams
) -> list[t.Any]:
    """The row's results from its deployment; a full deployment (backpressure) is waited
    for and asked again (`admitted`)."""
    if kind == "text":
        send = functools.partial(route.handle.complete.remote, request_id, [prompt])
    else:
        send = functools.partial(route.handle.chat.remote, request_id, list(map(_message, prompt)))
    return list(await admitted(functools.partial(send, params, 1, BATCH_PRIORITY)))


def _message(item: t.Any) -> Message:
    if isinstance(item, Message):
        return item
    if isinstance(item, t.Mapping):
        item = {key: value for key, value in item.items() if value is not None}
    return Message.fit(item)
