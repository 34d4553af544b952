"""When each process under a command is born, and when the command ends: where a job's start
goes (Ray's processes, the engine's actor, vLLM's EngineCore and Worker).

    .venv/bin/python benchmarks/process_births.py -- .venv/bin/rig-ray batch IN OUT/ --generator ...
    .venv/bin/python benchmarks/process_births.py -- .venv/bin/python -m \
        vllm.entrypoints.openai.run_batch -i IN -o OUT --model FOLDER ...

The command runs in its own session with its output discarded; its process tree is looked at
every 0.05 s, and each process is listed once, by the seconds from the command's start to its
birth, with its last command line seen (Ray and vLLM rename theirs: `ray::MapWorker(...)`,
`VLLM::EngineCore`).
"""

from __future__ import annotations

import subprocess
import sys
import time

import psutil


def main() -> None:
    command = sys.argv[1:]
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        raise SystemExit(__doc__)
    process = subprocess.Popen(
        command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    started = psutil.Process(process.pid).create_time()
    seen: dict[int, tuple[float, str]] = {}
    while process.poll() is None:
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for child in children:
            try:
                name = " ".join(child.cmdline())[:70] or seen.get(child.pid, (0.0, ""))[1]
                seen[child.pid] = (child.create_time() - started, name)
            except psutil.Error:
                continue
        time.sleep(0.05)
    ended = time.time() - started
    print("| born s | pid | process |")
    print("|---:|---:|---|")
    for pid, (born, name) in sorted(seen.items(), key=lambda item: item[1][0]):
        print(f"| {born:.1f} | {pid} | `{name}` |")
    print(f"ended after {ended:.1f} s, exit {process.returncode}")


if __name__ == "__main__":
    main()
