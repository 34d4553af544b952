"""Batch jobs on Ray Data: prompts from JSONL / Parquet / CSV, generations into Parquet.

`generate` builds a lazy, streaming Ray dataset of generations from a dataset of prompts;
`run` reads the prompts from files, writes the generations as Parquet parts and resumes what an
earlier run left; `run_pipeline` chains `run`s (generate, then judge, ...) as `Stage`s.
Nothing here imports Ray until it is called.
"""

from rig_ray.batch.concurrency import DEFAULT_BATCH_SIZE
from rig_ray.batch.openai_export import export_openai
from rig_ray.batch.output import OutputFolder, read_output
from rig_ray.batch.pipeline import generate
from rig_ray.batch.pipeline_data import read_pipeline
from rig_ray.batch.pipeline_run import run_pipeline
from rig_ray.batch.pipeline_stage import Stage
from rig_ray.batch.pipeline_summary import PipelineSummary, StageSummary
from rig_ray.batch.prompts import PromptSpec, content_id
from rig_ray.batch.run import run
from rig_ray.batch.run_writing import BatchSummary
from rig_ray.batch.schema import OUTPUT_COLUMNS, OUTPUT_SCHEMA

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "OUTPUT_COLUMNS",
    "OUTPUT_SCHEMA",
    "BatchSummary",
    "OutputFolder",
    "PipelineSummary",
    "PromptSpec",
    "Stage",
    "StageSummary",
    "content_id",
    "export_openai",
    "generate",
    "read_output",
    "read_pipeline",
    "run",
    "run_pipeline",
]
