"""Running the stateful searches: how many examples and steps, and what they explored."""

from __future__ import annotations

import os
import typing as t

from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test


def explore(
    machine: type[RuleBasedStateMachine], examples: int, steps: int, explored: t.Callable[[], str]
) -> None:
    """Run `machine` for `examples` examples of up to `steps` steps
    (`RIG_RAY_STATEFUL_EXAMPLES` / `RIG_RAY_STATEFUL_STEPS` override them), then print what
    `explored` says of the run, whether it passed or not."""
    options = settings(
        max_examples=int(os.environ.get("RIG_RAY_STATEFUL_EXAMPLES", examples)),
        stateful_step_count=int(os.environ.get("RIG_RAY_STATEFUL_STEPS", steps)),
        deadline=None,
        suppress_health_check=list(HealthCheck),
        database=None,
    )
    try:
        run_state_machine_as_test(machine, settings=options)
    finally:
        print(explored())
