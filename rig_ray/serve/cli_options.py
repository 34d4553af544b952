"""The options of `rig-ray serve` (its argument parser)."""

from __future__ import annotations

import argparse
import os
import typing as t

from rig_ray.serve.app import DEFAULT_REQUEST_TIMEOUT_S
from rig_ray.serve.auth import API_KEY_ENV
from rig_ray.serve.limits import RequestLimits
from rig_ray.serve.served_model import ServedModel

DESCRIPTION = """\
Serve generators over HTTP in the OpenAI wire format, on Ray Serve: one generator's routes
and engine in one deployment, several generators in one deployment each behind an ingress;
concurrent requests batched into one generate call.

Routes: POST /v1/chat/completions, POST /v1/completions, GET /v1/models, GET /health,
and OpenAI's Batch API: /v1/files (upload, list, get, content, delete) and /v1/batches
(create, list, get, cancel).
Set RIG_RAY_API_KEY to require 'Authorization: Bearer <key>' on every route but /health;
bound to an address other than loopback, it refuses to start without a key unless --no-auth
is given.
Runs until SIGTERM or Ctrl-C, then shuts Serve (and the Ray it started) down.
"""

EXAMPLES = """\
examples:
  rig-ray serve --generator 'transformers!smollm2-135m,max_tokens=256'
  rig-ray serve -g 'vllm!/models/llama-3-8b' --name llama-3-8b --num-gpus 1 --replicas 2
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "smollm2-135m", "messages": [{"role": "user", "content": "Hi"}]}'
"""


def _default(field: str) -> t.Any:
    return ServedModel.model_fields[field].default


def _limit(field: str) -> t.Any:
    return RequestLimits.model_fields[field].default


LIMITS = {
    "--max-body-bytes": ("max_body_bytes", "largest request body in bytes; past it, 413"),
    "--max-messages": ("max_messages", "most messages in one chat request"),
    "--max-stop": ("max_stop", "most stop strings in one request"),
    "--max-stop-length": ("max_stop_length", "longest stop string, in characters"),
    "--max-n": ("max_n", "most choices (n) one request may ask for"),
}


def add_parser(commands: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the `serve` subcommand to the `rig-ray` parser."""
    parser = commands.add_parser(
        "serve",
        help="serve generators as an OpenAI-compatible HTTP endpoint on Ray Serve",
        description=DESCRIPTION,
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "-g",
        "--generator",
        dest="generators",
        action="append",
        required=True,
        metavar="ID",
        help="generator identifier to serve; repeat for several models",
    )
    parser.add_argument(
        "--name",
        dest="names",
        action="append",
        metavar="NAME",
        help="model name clients send, one per --generator in order "
        "(default: the last part of the model path)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port", type=_port, default=8000, metavar="P", help="HTTP port (default: %(default)s)"
    )
    parser.add_argument(
        "--replicas",
        type=int,
        default=1,
        metavar="R",
        help="replicas per model (default: %(default)s)",
    )
    parser.add_argument(
        "--num-cpus",
        type=float,
        default=1,
        metavar="C",
        help="CPUs per replica (default: %(default)s)",
    )
    parser.add_argument(
        "--num-gpus",
        type=float,
        default=None,
        metavar="G",
        help="GPUs per replica (default: the engine's: its tensor x pipeline parallel size, or "
        "one GPU for an engine that runs on a GPU where the cluster has any; 0 keeps it off them)",
    )
    parser.add_argument(
        "--max-batch-size",
        type=int,
        default=_default("max_batch_size"),
        metavar="N",
        help="most requests (x n) in one generate call; 1: no batching (default: %(default)s)",
    )
    parser.add_argument(
        "--batch-wait-timeout-s",
        type=float,
        default=_default("batch_wait_timeout_s"),
        metavar="S",
        help="longest wait for a batch to fill, in seconds (default: %(default)s)",
    )
    parser.add_argument(
        "--max-ongoing-requests",
        type=int,
        default=_default("max_ongoing_requests"),
        metavar="N",
        help="requests a replica takes at once (default: 64, or about 1.1 x max_num_seqs for vLLM)",
    )
    parser.add_argument(
        "--max-queued-requests",
        type=int,
        default=_default("max_queued_requests"),
        metavar="N",
        help="requests waiting before new ones get 503 with Retry-After; "
        "-1: no limit (default: %(default)s)",
    )
    parser.add_argument(
        "--max-tokens-limit",
        type=int,
        default=_default("max_tokens_limit"),
        metavar="N",
        help="most tokens a request may ask for (default: %(default)s)",
    )
    for flag, (field, text) in LIMITS.items():
        parser.add_argument(
            flag,
            type=int,
            default=_limit(field),
            metavar="N",
            help=f"{text} (default: %(default)s)",
        )
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=DEFAULT_REQUEST_TIMEOUT_S,
        metavar="S",
        help="seconds a request may take; past it, 504 and its generation is stopped "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--batch-storage",
        metavar="URI",
        help="folder or pyarrow filesystem URI (s3://, gs://, ...) for /v1/files and "
        "/v1/batches; an app restarted on it finds its files again and resumes its batches "
        "(default: a folder under $RIG_RAY_CACHE)",
    )
    parser.add_argument(
        "--batch-max-in-flight",
        type=int,
        default=4,
        metavar="K",
        help="batch requests in the model deployments at once, all batches together; online "
        "requests wait behind at most these (default: %(default)s)",
    )
    apps = parser.add_mutually_exclusive_group()
    apps.add_argument(
        "--split-deployments",
        dest="one_deployment",
        action="store_const",
        const=False,
        help="serve even a single generator behind an ingress deployment of its own (by "
        "default one generator's routes and engine share its replicas: one deployment, one "
        "Ray hop per streamed token instead of two)",
    )
    apps.add_argument(
        "--one-deployment",
        dest="one_deployment",
        action="store_const",
        const=True,
        help="serve the routes from the model's own replicas (the default with one "
        "generator; an error with several)",
    )
    parser.add_argument(
        "--direct-ingress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="the model's replica answers HTTP on --port itself, with no Serve proxy in "
        "between (Ray Serve's direct ingress): the default where it applies, with one "
        "generator, one replica and a Ray of this command's own; --no-direct-ingress sends "
        "every request through Serve's proxy",
    )
    parser.add_argument(
        "--no-auth",
        action="store_true",
        help=f"serve without an API key on an address other than loopback (without "
        f"{API_KEY_ENV}, such a --host is refused)",
    )
    parser.add_argument(
        "--address",
        default=os.environ.get("RAY_ADDRESS") or "local",
        help="Ray cluster to run on: 'local' starts a Ray of its own, 'auto' joins the running "
        "one (default: $RAY_ADDRESS, else local)",
    )


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is a whole number from 1 to 65535, not {text!r}")
    return port


__all__: t.Sequence[str] = ["LIMITS", "add_parser"]
