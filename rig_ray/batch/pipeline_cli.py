"""`rig-ray pipeline PIPELINE.yaml`: the command line of `rig_ray.batch.run_pipeline`."""

from __future__ import annotations

import argparse
import signal
import sys
import typing as t

from rig_ray.batch.cli import Stopped, _on_signals, _stop
from rig_ray.batch.console import quiet_stderr
from rig_ray.redaction import redact
from rig_ray.terminal import printable

EXAMPLE = "example: rig-ray pipeline examples/pipeline.yaml --show"


def add_parser(commands: t.Any) -> None:
    parser = commands.add_parser(
        "pipeline",
        help="run stages of batch jobs (generate, then judge, ...) from a YAML file",
        description="Run the stages of a YAML pipeline (input, output, stages; each stage "
        "takes the options of `rig-ray batch`), each into OUTPUT/<stage>/. Running again "
        "resumes every stage on its own.",
        epilog=EXAMPLE,
    )
    parser.add_argument("config", help="the pipeline's YAML file")
    parser.add_argument(
        "--gpu-sharing",
        choices=("auto", "stream", "swap"),
        help="how stages share the cluster (default: the file's, else auto)",
    )
    parser.add_argument(
        "--show",
        nargs="?",
        const=3,
        type=_rows_to_show,
        metavar="N",
        help="print N rows (3) of the final table at the end",
    )
    parser.add_argument(
        "--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")


def run(args: argparse.Namespace) -> int:
    """Run the pipeline of `args.config`: 0 when every generation succeeded, 1 when some
    failed, 130 / 143 when stopped by SIGINT / SIGTERM."""
    import ray

    from rig_ray.batch.pipeline_run import run_pipeline
    from rig_ray.batch.pipeline_yaml import load_pipeline

    config = load_pipeline(args.config)  # a bad key fails here, before Ray starts
    started_ray = not ray.is_initialized()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _on_signals(_stop)
        with quiet_stderr():
            summary = run_pipeline(
                config.input,
                config.output,
                stages=config.stages,
                gpu_sharing=args.gpu_sharing or config.gpu_sharing,
                progress=not args.quiet,
                address=args.address,
            )
        _on_signals(signal.SIG_IGN)
        if args.show:
            show(config.output, args.show)
        for line in summary.lines():
            print(line)
        return 1 if summary.failed else 0
    except (Stopped, KeyboardInterrupt) as stop:
        _on_signals(signal.SIG_IGN)
        code = stop.code if isinstance(stop, Stopped) else 128 + signal.SIGINT
        print(
            f"rig-ray pipeline: stopped; what was generated is written under "
            f"{redact(config.output)}. Run the same command again to resume.",
            file=sys.stderr,
            flush=True,
        )
        return code
    finally:
        if started_ray and ray.is_initialized():
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def show(output: str, count: int = 3) -> None:
    """Print the first `count` rows of the final table: each earlier stage's text, then the
    last stage's reply and its parsed columns."""
    from rig_ray.batch.pipeline_data import Layout, read_pipeline
    from rig_ray.batch.schema import OUTPUT_COLUMNS

    table = read_pipeline(output)
    names = (Layout(output).read_record() or {}).get("stages", [])
    earlier = [name for name in names[:-1] if f"{name}_text" in table.column_names]
    end = table.column_names.index("parent_id") if "parent_id" in table.column_names else None
    parsed = [c for c in table.column_names[:end] if c not in OUTPUT_COLUMNS]
    for row in table.slice(0, count).to_pylist():
        parts = [f"[{row['id']}]"]
        for name in earlier:
            parts.append(f"{name}: {_short(row[f'{name}_text'])} |")
        reply = row["text"] if row["error"] is None else f"error: {row['error']}"
        parts.append(f"{names[-1] if names else 'reply'}: {_short(reply)}")
        if parsed:
            parts.append("(" + ", ".join(f"{c}={row[c]!r}" for c in parsed) + ")")
        print(printable(redact(" ".join(parts))))


def _short(value: t.Any, limit: int = 120) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _rows_to_show(text: str) -> int:
    try:
        rows = int(text)
    except ValueError:
        rows = -1
    if rows < 0:
        raise argparse.ArgumentTypeError(f"a number of rows of at least 0, not {text!r}")
    return rows
