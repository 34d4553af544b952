"""jobs/runtime_env.yaml: Ray accepts it, and its excludes keep heavy folders out of the upload."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
import yaml
from ray._private.runtime_env.packaging import (
    PACKAGE_SIZE_WARNING,
    _get_excludes,
    create_package,
)
from ray.dashboard.modules.dashboard_sdk import parse_runtime_env_args
from ray.runtime_env import RuntimeEnv

REPO = Path(__file__).resolve().parents[2]
RUNTIME_ENV_YAML = REPO / "jobs" / "runtime_env.yaml"

KEPT = (
    "pyproject.toml",
    "rig_ray/__init__.py",
    "rig_ray/generator/base.py",
    "jobs/batch_generate.py",
    "jobs/runtime_env.yaml",
    "tests/unit/test_x.py",
)
LEFT_OUT = (
    ".venv/pyvenv.cfg",
    ".venv/lib/python3.11/site-packages/torch/lib/libtorch.so",
    ".git/HEAD",
    ".git/objects/ab/cdef",
    "rig_ray/__pycache__/__init__.cpython-311.pyc",
    ".pytest_cache/v/cache/nodeids",
    ".mypy_cache/3.11/rig_ray/__init__.data.json",
    ".ruff_cache/0.15.0/123",
    ".cache/rig_ray/smollm2/model.safetensors",
    "rig_ray.egg-info/PKG-INFO",
    "results.parquet",
    "out/part-00000.parquet",
    "outputs/run-1/log.txt",
)


def excludes() -> list[str]:
    return yaml.safe_load(RUNTIME_ENV_YAML.read_text())["excludes"]


def uploaded_files(root: Path, tmp_path: Path) -> set[str]:
    """The files Ray's own working-dir packaging puts in the zip, by the excludes alone."""
    package = tmp_path / "package.zip"
    create_package(str(root), package, include_gitignore=False, excludes=excludes())
    with zipfile.ZipFile(package) as archive:
        return {name for name in archive.namelist() if not name.endswith("/")}


@pytest.fixture
def project_tree(tmp_path: Path) -> Path:
    root = tmp_path / "project"
    for relative in (*KEPT, *LEFT_OUT):
        (root / relative).parent.mkdir(parents=True, exist_ok=True)
        (root / relative).write_text("x")
    return root


def test_runtime_env_is_accepted_the_way_ray_job_submit_reads_it() -> None:
    env = parse_runtime_env_args(runtime_env=str(RUNTIME_ENV_YAML), working_dir=str(REPO))
    runtime_env = RuntimeEnv(**env)
    assert runtime_env.working_dir() == str(REPO)
    assert runtime_env.env_vars()["TOKENIZERS_PARALLELISM"] == "false"
    assert ".venv" in runtime_env["excludes"]


def test_runtime_env_has_only_fields_ray_knows() -> None:
    # RuntimeEnv accepts an unknown key (a typo such as `exclude`) as a plugin field, so a typo
    # would pass Ray's validation and silently upload everything.
    env = yaml.safe_load(RUNTIME_ENV_YAML.read_text())
    assert set(env) <= RuntimeEnv.known_fields


def test_ray_validation_rejects_a_malformed_excludes() -> None:
    with pytest.raises(TypeError, match="excludes"):
        RuntimeEnv(excludes=".venv")


def test_runtime_env_does_not_force_the_hub_offline() -> None:
    env = yaml.safe_load(RUNTIME_ENV_YAML.read_text())
    assert "HF_HUB_OFFLINE" not in env.get("env_vars", {})


def test_excludes_keep_the_project_and_leave_out_heavy_files(
    project_tree: Path, tmp_path: Path
) -> None:
    uploaded = uploaded_files(project_tree, tmp_path)
    assert set(KEPT) <= uploaded
    assert uploaded.isdisjoint(LEFT_OUT)


def test_excludes_prune_whole_folders_so_ray_never_walks_them(project_tree: Path) -> None:
    is_excluded = _get_excludes(project_tree, excludes())
    for folder in (".venv", ".git", "rig_ray/__pycache__", ".mypy_cache", ".cache"):
        assert is_excluded(project_tree / folder), folder
    for folder in ("rig_ray", "jobs", "tests"):
        assert not is_excluded(project_tree / folder), folder


def test_this_checkout_uploads_well_under_the_limit(tmp_path: Path) -> None:
    uploaded = uploaded_files(REPO, tmp_path)
    assert "rig_ray/__init__.py" in uploaded
    assert not any(name.startswith((".venv/", ".git/")) for name in uploaded)
    assert (tmp_path / "package.zip").stat().st_size < PACKAGE_SIZE_WARNING
