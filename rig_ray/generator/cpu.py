"""What local engines on a CPU need to know about it: whether 16-bit floats run natively.

Without native bf16/fp16 instructions (most AVX2 machines), torch emulates 16-bit arithmetic
and a small model runs 3-6x slower than in float32, so `dtype="auto"` on such a CPU means
float32 rather than the checkpoint's 16-bit dtype.
"""

from __future__ import annotations

import functools
import json
import platform
from pathlib import Path

_NATIVE_FLAGS = {
    "bfloat16": ("avx512_bf16", "amx_bf16", "bf16"),
    "float16": ("avx512_fp16", "amx_fp16", "fphp", "asimdhp"),
}
_ALIASES = {"bf16": "bfloat16", "fp16": "float16", "half": "float16"}


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of this machine's CPU (empty where they cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags.update(value.split())
    return frozenset(flags)


def runs_natively(dtype: str) -> bool:
    """Whether this CPU computes in `dtype` without emulation (float32 always does)."""
    dtype = _ALIASES.get(dtype, dtype)
    if dtype not in _NATIVE_FLAGS:
        return True
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return True  # Apple silicon has native 16-bit arithmetic
    return any(flag in cpu_flags() for flag in _NATIVE_FLAGS[dtype])


def checkpoint_dtype(model_path: str) -> str | None:
    """The dtype a local model folder's config.json declares, if it is a folder that has one."""
    config = Path(model_path) / "config.json"
    try:
        values = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    declared = values.get("dtype") or values.get("torch_dtype")
    return _ALIASES.get(declared, declared) if isinstance(declared, str) else None


def auto_cpu_dtype(model_path: str) -> str | None:
    """The dtype to run a checkpoint in on this CPU when the user left it at auto: float32
    when its 16-bit dtype would be emulated, else None (keep the checkpoint's)."""
    declared = checkpoint_dtype(model_path)
    if declared is None or runs_natively(declared):
        return None
    return "float32"
