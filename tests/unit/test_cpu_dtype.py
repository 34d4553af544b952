"""dtype auto on CPUs: float32 where 16-bit floats would be emulated, the checkpoint's else."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rig_ray.generator import cpu


@pytest.fixture
def flags(monkeypatch):
    def set_flags(*names: str) -> None:
        monkeypatch.setattr(cpu, "cpu_flags", lambda: frozenset(names))
        monkeypatch.setattr(cpu.platform, "system", lambda: "Linux")

    return set_flags


def folder_with(tmp_path: Path, config: dict) -> str:
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


@pytest.mark.parametrize(
    ("cpu_has", "checkpoint", "expected"),
    [
        (("avx2", "fma"), {"dtype": "bfloat16"}, "float32"),
        (("avx2", "avx512f"), {"torch_dtype": "bfloat16"}, "float32"),
        (("avx512f", "avx512_bf16"), {"dtype": "bfloat16"}, None),
        (("amx_bf16",), {"dtype": "bfloat16"}, None),
        (("avx2",), {"dtype": "float16"}, "float32"),
        (("avx512_fp16",), {"dtype": "float16"}, None),
        (("avx2",), {"dtype": "float32"}, None),
        (("avx2",), {}, None),
    ],
)
def test_auto_dtype_follows_the_cpu_and_the_checkpoint(
    tmp_path, flags, cpu_has, checkpoint, expected
):
    flags(*cpu_has)
    assert cpu.auto_cpu_dtype(folder_with(tmp_path, checkpoint)) == expected


def test_a_model_that_is_not_a_local_folder_keeps_auto(flags):
    flags("avx2")
    assert cpu.auto_cpu_dtype("org/some-hub-model") is None


def test_this_machine_reads_its_flags():
    flags = cpu.cpu_flags()
    assert isinstance(flags, frozenset)
    if Path("/proc/cpuinfo").exists():
        assert flags, "a Linux machine lists its CPU flags"
