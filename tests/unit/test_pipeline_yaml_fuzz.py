"""A search of what `rig-ray pipeline` makes of a YAML file's contents: any mapping, list or
scalar, with the known keys given values of any type, is either a pipeline or a
`PipelineError` (a `RigRayError`) naming the problem, never a raw Python error."""

from __future__ import annotations

import typing as t

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rig_ray.batch.pipeline_yaml import STAGE_KEYS, TOP_KEYS, pipeline_from
from rig_ray.errors import RigRayError

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(),
    st.text(max_size=10),
    st.sampled_from(["echo!x", "vllm!m", "$question", "skip", "keep", "auto", "swap", "a:B"]),
)
values = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(STAGE_KEYS) | st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
stages = st.fixed_dictionaries(
    {"name": leaves},
    optional={key: values for key in STAGE_KEYS if key != "name"},
)
pipelines = (
    st.fixed_dictionaries(
        {"input": leaves, "output": leaves, "stages": st.lists(stages, max_size=3) | values},
        optional={"gpu_sharing": leaves},
    )
    | values
)


@pytest.mark.parametrize("examples", [400, pytest.param(4000, marks=pytest.mark.slow)])
def test_any_contents_are_a_pipeline_or_a_pipeline_error(examples: int) -> None:
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(pipelines)
    def one(raw: t.Any) -> None:
        try:
            made = pipeline_from(raw)
        except RigRayError as error:
            assert str(error).startswith("the pipeline"), error
        else:
            assert set(raw) <= set(TOP_KEYS) and made.stages

    one()
