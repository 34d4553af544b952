"""`rig-ray batch`: the command line of `rig_ray.batch.run` (also `jobs/batch_generate.py`)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import typing as t

from rig_ray.batch.concurrency import DEFAULT_BATCH_SIZE, DEFAULT_MAX_CONCURRENT_BATCHES
from rig_ray.batch.parsed import add_structured_arguments, structured_options
from rig_ray.batch.run import DEFAULT_ROWS_PER_PART, DEFAULT_SECONDS_PER_PART
from rig_ray.errors import GenerationError
from rig_ray.generator.params import GenerateParams
from rig_ray.redaction import redact
from rig_ray.terminal import printable

EXAMPLE = (
    "example: rig-ray batch prompts.jsonl out/ --generator "
    "'transformers!smollm2-135m,max_tokens=64' --template 'Write a haiku about $topic.'"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of a batch run, shared by `rig-ray batch` and `jobs/batch_generate.py`."""
    parser.add_argument(
        "input", help="JSONL, Parquet, CSV or TSV prompts: a file, a folder, a glob or a URI"
    )
    parser.add_argument(
        "output",
        help="folder for the Parquet parts (local or URI); a rerun into it resumes",
    )
    parser.add_argument(
        "-g",
        "--generator",
        dest="generators",
        action="append",
        required=True,
        metavar="ID",
        help="generator identifier; give it again for several generators, which split each "
        "row's generations between them (an OpenAI batch file's lines go by body.model to "
        "the generator of that --name)",
    )
    parser.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="NAME",
        help="served name of each --generator, in order (default: the last part of its model "
        "path), as in rig-ray serve: with several generators, an OpenAI batch file's "
        "body.model chooses the one that runs each line",
    )
    parser.add_argument(
        "--template",
        help="user message with $column fields from each row (${any name} for a column whose "
        "name has spaces or dashes; $$ for a literal $)",
    )
    parser.add_argument("--system", help="system message put before each conversation")
    parser.add_argument(
        "--messages-column", help="column holding each row's OpenAI-shaped (or ShareGPT) messages"
    )
    parser.add_argument(
        "--params-column",
        help="column holding each row's own params, e.g. {\"max_tokens\": 64}, laid over the job's",
    )
    parser.add_argument(
        "--num-generations", type=int, default=1, metavar="N", help="generations per row (1)"
    )
    parser.add_argument(
        "--replicas", type=int, default=1, metavar="R", help="actors per generator (1)"
    )
    parser.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per actor (default: the engine's: its tensor x pipeline parallel size, or one "
        "GPU for an engine that runs on a GPU where the cluster has any; 0 keeps it off them)",
    )
    parser.add_argument(
        "--num-cpus",
        type=float,
        metavar="C",
        help="CPUs per actor (default: 1, less when the cluster is too small for that)",
    )
    parser.add_argument(
        "--data-cpus",
        type=float,
        metavar="C",
        help="CPUs each of Ray Data's read and split tasks asks for (default: 1; 0 on a "
        "cluster whose CPUs other work holds, e.g. model replicas)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        metavar="B",
        help=f"rows an actor takes at a time ({DEFAULT_BATCH_SIZE})",
    )
    parser.add_argument(
        "--id-column",
        default="id",
        metavar="C",
        help="column with each row's id (id); rows without one get an id from their content",
    )
    parser.add_argument(
        "--max-concurrent-batches",
        type=int,
        metavar="K",
        help=f"batches in flight per actor ({DEFAULT_MAX_CONCURRENT_BATCHES}; for vLLM, "
        "enough to fill the engine)",
    )
    parser.add_argument(
        "--batch-timeout-s",
        type=float,
        metavar="S",
        help="fail a batch's rows with a timeout error when its engine call runs longer "
        "(default: no limit)",
    )
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="make again the generations an earlier run wrote with an error (their failed "
        "rows are replaced)",
    )
    parser.add_argument("--seed", type=int, help="seed of the split across several generators")
    parser.add_argument("--max-tokens", type=int, help="most tokens per generation")
    parser.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    parser.add_argument(
        "--rows-per-part",
        type=int,
        default=DEFAULT_ROWS_PER_PART,
        metavar="N",
        help=f"write a Parquet part every N generations ({DEFAULT_ROWS_PER_PART:,})",
    )
    parser.add_argument(
        "--seconds-per-part",
        type=float,
        default=DEFAULT_SECONDS_PER_PART,
        metavar="S",
        help=f"and at least every S seconds ({DEFAULT_SECONDS_PER_PART:g}); what a killed run "
        "made since its last part is made again",
    )
    parser.add_argument(
        "--output-format",
        choices=("parquet", "openai"),
        default="parquet",
        help="openai: an OpenAI batch file in (custom_id, method, url, body), and "
        "output.jsonl + errors.jsonl written into OUTPUT beside the Parquet parts when the run "
        "ends (parquet: the parts only)",
    )
    add_structured_arguments(parser)
    parser.add_argument(
        "--address", help="Ray cluster to join (default: RAY_ADDRESS, else a local Ray)"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    parser.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray Data's logs and what the actors print (engine loading bars and "
        "warnings), redacted",
    )


def add_parser(commands: t.Any) -> None:
    parser = commands.add_parser(
        "batch",
        help="generate for every row of a prompts file into Parquet, on Ray Data",
        description="Generate for every row of INPUT with one or more generators on Ray "
        "Data, writing one Parquet row per generation into the folder OUTPUT. Running "
        "again with the same OUTPUT resumes: generations already written are skipped.",
        epilog=EXAMPLE,
    )
    add_arguments(parser)


class Stopped(BaseException):
    """SIGTERM or SIGINT arrived while a batch job ran; `code` is the exit status to give."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def run(args: argparse.Namespace, *, shutdown: bool = True) -> int:
    """Run the batch job that `args` describe: 0 when every generation succeeded, 1 when some
    failed or the job stopped on a `GenerationError`, 130 / 143 when stopped by SIGINT /
    SIGTERM (what was made is written); wrong input or options raise (exit 2)."""
    import ray

    started_ray = not ray.is_initialized()
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        _on_signals(_stop)
        summary = _run_batch(args)
        _on_signals(signal.SIG_IGN)
        _show_some(args.output)
        print(summary.line())
        if summary.failed:
            print(f"rig-ray batch: {summary.failed:,} generations failed; see the error column")
        return 1 if summary.failed else 0
    except GenerationError as error:  # the job ran and stopped: what it made is written
        _on_signals(signal.SIG_IGN)
        print(f"rig-ray: error: {printable(redact(' '.join(str(error).split())))}", file=sys.stderr)
        return 1
    except (Stopped, KeyboardInterrupt) as stop:
        _on_signals(signal.SIG_IGN)  # a second signal must not cut the shutdown short
        code = stop.code if isinstance(stop, Stopped) else 128 + signal.SIGINT
        print(
            f"rig-ray batch: stopped; what was generated is written to {redact(args.output)}. "
            "Run the same command again to resume.",
            file=sys.stderr,
            flush=True,
        )
        return code
    finally:
        if started_ray and shutdown and ray.is_initialized():
            ray.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_batch(args: argparse.Namespace) -> t.Any:
    from rig_ray.batch.run import run as run_batch

    return run_batch(
        args.input,
        args.output,
        address=args.address,
        progress=not args.quiet,
        verbose=getattr(args, "verbose", False),
        retry_failed=args.retry_failed,
        generators=args.generators,
        **({"names": args.names} if getattr(args, "names", None) else {}),
        template=args.template,
        system=args.system,
        messages_column=args.messages_column,
        params_column=args.params_column,
        num_generations=args.num_generations,
        params=GenerateParams(max_tokens=args.max_tokens, temperature=args.temperature),
        replicas=args.replicas,
        num_gpus=args.num_gpus,
        num_cpus=args.num_cpus,
        data_cpus=args.data_cpus,
        batch_size=args.batch_size,
        max_concurrent_batches=args.max_concurrent_batches,
        batch_timeout_s=args.batch_timeout_s,
        id_column=args.id_column,
        seed=args.seed,
        rows_per_part=args.rows_per_part,
        seconds_per_part=args.seconds_per_part,
        output_format=args.output_format,
        **structured_options(args),
    )


def _stop(signum: int, frame: t.Any) -> None:
    raise Stopped(128 + signum)


def _on_signals(handler: t.Any) -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, handler)


def _show_some(output: str, count: int = 3) -> None:
    """Print the first few rows of the output's first part."""
    import pyarrow.parquet as pq

    from rig_ray.batch.output import OutputFolder

    folder = OutputFolder(output)
    parts = folder.parts()
    if not parts:
        return
    columns = ["id", "generator", "text", "error"]
    table = pq.read_table(parts[0], columns=columns, filesystem=folder.filesystem)
    for row in table.slice(0, count).to_pylist():
        shown = row["text"] if row["error"] is None else f"error: {row['error']}"
        line = f"[{row['id']}] {row['generator']}: {' '.join(str(shown).split())[:200]}"
        print(printable(redact(line)))
