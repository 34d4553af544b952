"""cluster.yaml: both variants pass the checks `ray up` runs, plus what Ray's schema cannot see."""

from __future__ import annotations

import copy
import typing as t
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER_YAML = REPO / "cluster.yaml"
ON_PREM_START = "# --- on-prem variant (provider: local) ---"
ON_PREM_END = "# --- end of on-prem variant ---"

Config = dict[str, t.Any]


def on_prem_text() -> str:
    """The commented-out on-prem block with the leading `# ` of each line removed."""
    lines = CLUSTER_YAML.read_text().splitlines()
    assert lines.count(ON_PREM_START) == 1 and lines.count(ON_PREM_END) == 1
    block = lines[lines.index(ON_PREM_START) + 1 : lines.index(ON_PREM_END)]
    uncommented = []
    for line in block:
        assert line == "#" or line.startswith("# "), f"not commented out: {line!r}"
        uncommented.append(line[2:])
    return "\n".join(uncommented) + "\n"


RAW_CONFIGS: dict[str, Config] = {
    "aws": yaml.safe_load(CLUSTER_YAML.read_text()),
    "on-prem": yaml.safe_load(on_prem_text()),
}


def ray_up_checks(raw: Config) -> Config:
    """What `ray up` does to a config before it touches a cloud: fill defaults, then validate."""
    config = prepare_config(copy.deepcopy(raw))
    validate_config(config)
    return config


@pytest.fixture(params=sorted(RAW_CONFIGS))
def raw(request: pytest.FixtureRequest) -> Config:
    return copy.deepcopy(RAW_CONFIGS[request.param])


@pytest.fixture
def prepared(raw: Config) -> Config:
    return ray_up_checks(raw)


def test_the_two_variants_use_aws_and_the_local_provider() -> None:
    assert RAW_CONFIGS["aws"]["provider"]["type"] == "aws"
    assert RAW_CONFIGS["on-prem"]["provider"]["type"] == "local"
    assert RAW_CONFIGS["on-prem"]["provider"]["head_ip"]
    assert RAW_CONFIGS["on-prem"]["provider"]["worker_ips"]
    assert RAW_CONFIGS["on-prem"]["auth"]["ssh_private_key"]


def test_config_passes_ray_up_schema_validation(prepared: Config) -> None:
    assert prepared["cluster_name"]


def test_validator_rejects_a_misspelled_top_level_key(raw: Config) -> None:
    raw["idle_timeout_minute"] = raw.pop("idle_timeout_minutes")
    with pytest.raises(jsonschema.ValidationError, match="idle_timeout_minute"):
        ray_up_checks(raw)


def test_validator_rejects_a_misspelled_node_type_key() -> None:
    raw = copy.deepcopy(RAW_CONFIGS["aws"])
    worker = raw["available_node_types"]["worker.gpu"]
    worker["min_worker"] = worker.pop("min_workers")
    with pytest.raises(jsonschema.ValidationError, match="min_worker"):
        ray_up_checks(raw)


def test_autoscaling_limits_are_set(raw: Config) -> None:
    assert raw["max_workers"] >= 1
    assert raw["idle_timeout_minutes"] > 0
    assert raw["upscaling_speed"] > 0


def test_head_node_type_is_one_of_the_node_types(prepared: Config) -> None:
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_max_workers_covers_every_node_types_min_workers(prepared: Config) -> None:
    node_types = prepared["available_node_types"].values()
    assert prepared["max_workers"] >= sum(n["min_workers"] for n in node_types)
    for node_type in node_types:
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"]


def test_aws_has_a_cpu_head_and_an_autoscaled_gpu_worker() -> None:
    config = ray_up_checks(RAW_CONFIGS["aws"])
    node_types = config["available_node_types"]
    head = node_types[config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0
    workers = [n for name, n in node_types.items() if name != config["head_node_type"]]
    gpu_workers = [n for n in workers if n["resources"].get("GPU", 0) >= 1]
    assert gpu_workers, "no worker type declares GPU resources"
    assert all(n["max_workers"] >= 1 for n in gpu_workers)


def test_project_is_mounted_at_rig_ray_from_the_repo_root(raw: Config) -> None:
    source = REPO / raw["file_mounts"]["~/rig_ray"]
    assert (source / "pyproject.toml").is_file()
    assert (source / "rig_ray" / "__init__.py").is_file()
    assert ".venv" in raw["rsync_exclude"] and ".git" in raw["rsync_exclude"]


def installs_rig_ray(commands: list[str], extra: str) -> bool:
    return any("pip install" in c and f'-e "$HOME/rig_ray[{extra}]"' in c for c in commands)


def test_setup_installs_rig_ray_on_every_node(prepared: Config) -> None:
    # prepare_config has put the shared setup_commands in front of both lists.
    assert installs_rig_ray(prepared["head_setup_commands"], "transformers")
    assert installs_rig_ray(prepared["worker_setup_commands"], "vllm")


def test_head_starts_ray_with_the_dashboard_open_and_the_autoscaler(prepared: Config) -> None:
    stop, start = prepared["head_start_ray_commands"]
    assert stop == "ray stop"
    assert "ray start --head" in start
    assert "--dashboard-host=0.0.0.0" in start
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in start


def test_workers_restart_ray_against_the_head(prepared: Config) -> None:
    stop, start = prepared["worker_start_ray_commands"]
    assert stop == "ray stop"
    assert "ray start --address=$RAY_HEAD_IP:6379" in start


def test_clusters_do_not_force_the_hub_offline(raw: Config) -> None:
    assert "HF_HUB_OFFLINE" not in yaml.safe_dump(raw)
