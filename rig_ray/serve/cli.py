"""`rig-ray serve`: run the OpenAI-compatible endpoint until SIGTERM or Ctrl-C.

Also runnable as `python -m rig_ray.serve.cli --generator ID ...`.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import signal
import socket
import sys
import time
import typing as t

from pydantic import ValidationError

from rig_ray.batch.console import forward_redacted
from rig_ray.cluster.local_ray import quiet_ray_logs, start_local_ray
from rig_ray.cluster.placement import cluster_gpus, refuse_what_the_cluster_cannot_hold
from rig_ray.errors import PlacementError, RigRayError, ServeConfigError, validation_line
from rig_ray.redaction import scrub
from rig_ray.serve import direct
from rig_ray.serve.app import APP_NAME, build_app, served_models
from rig_ray.serve.auth import API_KEY_ENV, is_loopback
from rig_ray.serve.cli_options import LIMITS, add_parser
from rig_ray.serve.lifecycle import client_host, listening, wait_until_ready
from rig_ray.serve.limits import RequestLimits
from rig_ray.serve.served_model import ServedModel
from rig_ray.terminal import printable

STOP_WAIT_S = 5.0
"""Longest wait, on SIGTERM, for the running requests to be told the server is stopping."""


class _Stop(BaseException):
    """Raised in the main thread by SIGTERM / SIGINT."""


def run(args: argparse.Namespace) -> int:
    """Run `rig-ray serve` until SIGTERM / SIGINT: 0 after a clean stop, 2 for bad input, 1
    when the app fails to start."""
    try:  # everything that can be checked before Ray starts
        served = served_models(args.generators, name=args.names, **_options(args))
        limits = RequestLimits(**{field: getattr(args, field) for field, _ in LIMITS.values()})
        make_app = functools.partial(
            build_app,
            served,
            api_key=_api_key(args),
            limits=limits,
            request_timeout_s=args.request_timeout_s,
            batch_storage=args.batch_storage,
            batch_max_in_flight=args.batch_max_in_flight,
            one_deployment=args.one_deployment,
        )
        app = make_app()
        args.direct_ingress = direct.applies(
            args.direct_ingress,
            generators=len(served),
            replicas=args.replicas,
            address=args.address,
            one_deployment=args.one_deployment,
        )
        if args.address == "local":
            _check_port(args.host, args.port)
    except (RigRayError, ValidationError, OSError) as error:
        print(f"rig-ray: error: {printable(validation_line(error))}", file=sys.stderr)
        return 2
    previous = {sig: signal.signal(sig, _raise_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    owns_cluster = args.address == "local"
    status, deployed = 0, True
    try:
        forward_redacted([model.generator for model in served])  # learns the secrets
        host, port = _start(app, args, served, make_app)
        url = f"http://{client_host(host)}:{port}"
        wait_until_ready(url)
        names = ", ".join(model.served_name for model in served)
        print(f"rig-ray: serving {names} at {url}/v1", flush=True)
        print("rig-ray: SIGTERM or Ctrl-C stops it", flush=True)
        while True:
            time.sleep(3600)
    except _Stop:
        print("rig-ray: stopping", flush=True)
    except (ServeConfigError, PlacementError) as error:  # a Serve whose address needs a key,
        # or replicas whose GPUs this Ray cannot hold
        print(f"rig-ray: error: {printable(validation_line(error))}", file=sys.stderr)
        status, deployed = 2, False
    except Exception as error:  # the app did not start (a model that fails to load, ...)
        why = _deploy_failure(served) or scrub(
            validation_line(error), *[model.generator for model in served]
        )
        print(f"rig-ray: error: {printable(why)}", file=sys.stderr)
        status = 1
    finally:
        for sig in previous:  # a second signal must not cut the shutdown short
            signal.signal(sig, signal.SIG_IGN)
        _stop(owns_cluster, deployed)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return status


def _api_key(args: argparse.Namespace) -> str | None:
    """The key from $RIG_RAY_API_KEY; refuses an empty one, and no key off loopback unless
    --no-auth says so."""
    key = os.environ.get(API_KEY_ENV)
    if key is not None and not key.strip():
        raise ServeConfigError(f"{API_KEY_ENV} is set but empty; set a key or unset it")
    if key and args.no_auth:
        raise ServeConfigError(f"--no-auth given while {API_KEY_ENV} is set; drop one of them")
    if not key and not args.no_auth and not is_loopback(args.host):
        raise ServeConfigError(
            f"refusing to serve on {args.host} without an API key: set {API_KEY_ENV} to "
            "require one, or pass --no-auth to serve without"
        )
    return key


def _raise_stop(signum: int, frame: t.Any) -> None:
    raise _Stop


def _options(args: argparse.Namespace) -> dict[str, t.Any]:
    actor: dict[str, t.Any] = {"num_cpus": args.num_cpus}
    if args.num_gpus is not None:
        actor["num_gpus"] = args.num_gpus
    return {
        "num_replicas": args.replicas,
        "ray_actor_options": actor,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_timeout_s,
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "max_tokens_limit": args.max_tokens_limit,
    }


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            raise OSError(f"cannot listen on {host}:{port}: {error.strerror}") from None


def _start(
    app: t.Any,
    args: argparse.Namespace,
    served: t.Sequence[ServedModel] = (),
    rebuild: t.Callable[[], t.Any] | None = None,
) -> tuple[str, int]:
    """Start (or join) Ray and Serve, run the app (built again by `rebuild` once Ray is up
    where Ray has GPUs or is a joined cluster: its GPUs place the replicas and its GPU nodes
    size them, see `ServedModel.placement` and `ongoing_requests`), and return the host and
    port Serve really listens on.
    A Serve that already runs keeps its own, so auth is checked again against them before
    the app runs. What the replicas print reaches this console redacted, and scrubbed with
    the served generators' own secrets."""
    import ray
    from ray import serve

    proxy_port = args.port
    if args.direct_ingress:  # the replica takes --port; Serve's proxy gets another
        os.environ.update(direct.environment(args.port))
        proxy_port = direct.free_port(args.host)
        direct.quiet_proxy_address()
    if not ray.is_initialized():
        quiet_ray_logs()
        if args.address == "local":  # its workers (the replicas' engines) at its niceness
            start_local_ray(include_dashboard=False, logging_level=logging.WARNING)
        else:
            ray.init(address=args.address, include_dashboard=False, logging_level=logging.WARNING)
        signal.signal(signal.SIGTERM, _raise_stop)  # ray.init installs its own
    forward_redacted([model.generator for model in served])
    serve.start(http_options={"host": args.host, "port": proxy_port})
    host, port = (args.host, args.port) if args.direct_ingress else listening()
    if (host, port) != (args.host, args.port):
        print(
            f"rig-ray: Serve already runs on this cluster, on {host}:{port}; "
            "--host and --port do not apply",
            file=sys.stderr,
            flush=True,
        )
        _api_key(argparse.Namespace(**{**vars(args), "host": host}))
    if rebuild is not None and (args.address != "local" or cluster_gpus() > 0):
        app = rebuild()
    if "://" not in (args.batch_storage or "") and len([n for n in ray.nodes() if n["Alive"]]) > 1:
        print(
            "rig-ray: the batch storage is a folder on each node's own disk; with replicas "
            "on several nodes, /v1/files and /v1/batches are split between them: give "
            "--batch-storage a URI that every node reaches (s3://..., gs://...)",
            file=sys.stderr,
            flush=True,
        )
    refuse_what_the_cluster_cannot_hold(  # on a Ray of its own: rather than wait forever
        [(model.placement(), model.first_replicas()) for model in served],
        "the served models' first replicas",
    )
    serve.run(app, name=APP_NAME, route_prefix="/")
    return host, port


def _deploy_failure(served: t.Sequence[ServedModel] = ()) -> str | None:
    """Why a model's deployment failed: the last line of its replicas' error, which names
    the exception (e.g. a model that cannot be loaded), scrubbed with the served generators'
    own secrets."""
    try:
        from ray import serve

        app = serve.status().applications.get(APP_NAME)
        for name, deployment in app.deployments.items() if app else []:
            lines = [line.strip() for line in str(deployment.message).splitlines() if line.strip()]
            if getattr(deployment.status, "value", deployment.status) == "DEPLOY_FAILED" and lines:
                why = scrub(lines[-1], *[model.generator for model in served])
                return f"deployment {name!r} failed to start: {why}"
    except Exception:  # only an explanation: the original error is printed instead
        return None
    return None


def _stop(owns_cluster: bool, deployed: bool = True) -> None:
    """Take the app down: first the requests still running are answered that the server is
    stopping, then all of Serve and Ray go when this process started them, else only the app
    (other apps on a shared cluster keep running)."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        return
    try:
        if deployed:
            _stop_requests()
        if owns_cluster:
            serve.shutdown()
        elif deployed:
            serve.delete(APP_NAME)
    finally:
        ray.shutdown()


def _stop_requests() -> None:
    """Have the ingress answer its running requests 503 `server_shutting_down`, so Serve's
    shutdown does not wait for them (nor cut them off without a reply)."""
    from ray import serve

    try:
        handle = serve.get_app_handle(APP_NAME)
        handle.stop_requests.remote(STOP_WAIT_S).result(timeout_s=STOP_WAIT_S + 10)
    except Exception as error:  # the app is gone already: nothing left to answer
        print(f"rig-ray: could not stop the running requests: {type(error).__name__}", flush=True)


def main(argv: t.Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rig-ray")
    add_parser(parser.add_subparsers(dest="command", required=True))
    return run(parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)]))


if __name__ == "__main__":
    sys.exit(main())
