"""The fake generator of the stateful batch test, and its driver for runs that get killed.

`python tests/batch/stateful_members.py SPEC.json` runs `rig_ray.batch.run` as SPEC says (in
a process of its own, so the test can SIGKILL it).
"""

from __future__ import annotations

import json
import sys
import time
import typing as t
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rig_ray.generator.params import GenerateParams
from tests.fakes import FixedGenerator

FAIL = "FAIL"


class Flaky(FixedGenerator):
    """Replies `reply_for(model, prompt, params)`; fails prompts holding FAIL while the file
    `healthy` does not exist; sleeps `seconds` per batch (to be killed halfway)."""

    healthy: str
    seconds: float = 0.0

    async def generate_messages(self, messages: t.Any, params: t.Any) -> t.Any:
        if self.seconds:
            time.sleep(self.seconds)
        return await super().generate_messages(messages, params)

    def _reply(self, item: t.Any, params: GenerateParams) -> t.Any:
        prompt = item[-1].content
        if FAIL in prompt and not Path(self.healthy).exists():
            return RuntimeError(f"refused {prompt!r}")
        return reply_for(self.model, prompt, params)


def reply_for(model: str, prompt: str, params: GenerateParams) -> str:
    """What a healthy generator answers: a function of the row (prompt and its own params),
    the generator and the seed."""
    return f"{model}|{prompt}|t={params.temperature}|seed={params.seed}"


def members(healthy: str, seconds: float = 0.0) -> list[Flaky]:
    return [Flaky(model=f"m{k}", healthy=healthy, seconds=seconds) for k in range(2)]


if __name__ == "__main__":
    from rig_ray.batch import run

    spec = json.loads(Path(sys.argv[1]).read_text())
    options = spec.pop("options")
    run(
        spec["source"],
        spec["output"],
        generators=members(spec["healthy"], spec["seconds"]),
        params=GenerateParams(**spec["params"]),
        **options,
    )
