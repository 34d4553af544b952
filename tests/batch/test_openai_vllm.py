"""The same OpenAI batch file through vLLM's own batch runner and through `rig-ray batch` on
vLLM, both float32: the output lines have the same keys (but vLLM's own extensions) and
types, nested keys included, and greedy text is equal.

Two engine starts (one per runner): slow. Run it under `flock /tmp/vllm.lock`.
"""

from __future__ import annotations

import json
import subprocess
import sys
import typing as t
from pathlib import Path

import pytest

from rig_ray.batch import run

pytest.importorskip("vllm")
pytestmark = [pytest.mark.engine, pytest.mark.slow, pytest.mark.usefixtures("local_ray")]

NAME = "smollm2"
TOPICS = ["the sea", "a cat", "rain", "bread", "a train", "snow", "music", "a tree", "fire", "salt"]


def batch_lines() -> list[dict[str, t.Any]]:
    """20 greedy chat lines of a few lengths (vLLM 0.32's runner refuses /v1/completions
    lines: its body union holds no completion request)."""
    return [
        {
            "custom_id": f"chat-{number}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": NAME,
                "messages": [
                    {"role": "user", "content": f"Write one sentence about {TOPICS[number % 10]}."}
                ],
                "temperature": 0,
                "max_tokens": 8 + number,
            },
        }
        for number in range(20)
    ]


VLLM_ONLY = frozenset(
    {
        "prompt_logprobs",
        "prompt_token_ids",
        "prompt_text",
        "kv_transfer_params",
        "ec_transfer_params",
        "metrics",
        "stop_reason",
        "token_ids",
        "routed_experts",
        "reasoning",
    }
)
"""Keys of vLLM's own extensions to OpenAI's objects, which rig_ray's lines need not carry."""


def shape_differences(ours: t.Any, theirs: t.Any, where: str = "") -> list[str]:
    """Where our value has a key vLLM's lacks, lacks one of OpenAI's keys that vLLM's has, or
    has another type than vLLM's (None on either side is a missing value, not a type)."""
    if ours is None or theirs is None:
        return []
    if isinstance(ours, dict) and isinstance(theirs, dict):
        found = [f"{where}.{key}: not in vLLM's line" for key in ours if key not in theirs]
        found += [
            f"{where}.{key}: only in vLLM's line"
            for key in theirs
            if key not in ours and key not in VLLM_ONLY
        ]
        for key in ours.keys() & theirs.keys():
            found += shape_differences(ours[key], theirs[key], f"{where}.{key}")
        return found
    if isinstance(ours, list) and isinstance(theirs, list):
        return [
            difference
            for index, (a, b) in enumerate(zip(ours, theirs, strict=False))
            for difference in shape_differences(a, b, f"{where}[{index}]")
        ]
    kinds = (type(ours), type(theirs))
    if kinds[0] is not kinds[1] and not {int, float} >= set(kinds):
        return [f"{where}: {kinds[0].__name__}, vLLM has {kinds[1].__name__}"]
    return []


def test_vllm_run_batch_and_rig_ray_agree(tmp_path: Path, smollm2_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in batch_lines()))
    theirs_path = tmp_path / "vllm.jsonl"
    command = [
        sys.executable, "-m", "vllm.entrypoints.openai.run_batch",
        "-i", str(source), "-o", str(theirs_path),
        "--model", str(smollm2_path), "--served-model-name", NAME,
        "--dtype", "float32", "--enforce-eager", "--max-model-len", "1024",
        "--gpu-memory-utilization", "0.3",  # on CPU: the share of memory it reserves
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    causes = [x for x in done.stderr.splitlines() if "Error" in x or "error" in x]
    assert done.returncode == 0, "\n".join(causes[-20:])
    theirs = {line["custom_id"]: line for line in map(json.loads, theirs_path.open())}

    out = tmp_path / "out"
    run(
        str(source),
        str(out),
        generator=f"vllm!{smollm2_path},dtype=float32,enforce_eager=True,max_model_len=1024",
        output_format="openai",
        num_cpus=1,
        progress=False,
    )
    ours = [json.loads(line) for line in (out / "output.jsonl").open()]
    assert [line["custom_id"] for line in ours] == [line["custom_id"] for line in batch_lines()]
    assert (out / "errors.jsonl").read_text() == ""
    for line in ours:
        vllm_line = theirs[line["custom_id"]]
        assert vllm_line["error"] is None and vllm_line["response"]["status_code"] == 200
        assert shape_differences(line, vllm_line) == [], line["custom_id"]
        body, vllm_body = line["response"]["body"], vllm_line["response"]["body"]
        assert body["object"] == vllm_body["object"] and body["model"] == NAME
        choice, vllm_choice = body["choices"][0], vllm_body["choices"][0]
        if body["object"] == "chat.completion":
            assert choice["message"]["content"] == vllm_choice["message"]["content"]
        else:
            assert choice["text"] == vllm_choice["text"]
        assert choice["finish_reason"] == vllm_choice["finish_reason"]
        assert body["usage"] == vllm_body["usage"]
