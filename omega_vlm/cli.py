"""`omega-vlm`: up | api | worker | caption | make-demo-model.

Every subcommand accepts every settings flag (see `omega-vlm up --help`); flags beat environment
variables, which beat the built-in defaults.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec

from omega_vlm.preflight import PreflightError, adopt_listener, bind_listener, check_model_path
from omega_vlm.supervisor import Child, Supervisor, child_env, python_argv
from shared.exit_codes import EXIT_USAGE
from shared.logs import configure_logging
from shared.settings import Settings
from shared.settings_sources import SettingsError, build_parser, load_settings, settings_to_env

log = logging.getLogger("omega.cli")


def _parser() -> argparse.ArgumentParser:
    settings_flags = build_parser()
    parser = argparse.ArgumentParser(
        prog="omega-vlm", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", parents=[settings_flags], help="Redis (if needed), the API and one worker per device")
    api = sub.add_parser("api", parents=[settings_flags], help="the HTTP API only")
    api.add_argument("--listen-fd", type=int, default=None, help=argparse.SUPPRESS)  # from `up`
    worker = sub.add_parser("worker", parents=[settings_flags], help="worker process(es) only")
    worker.add_argument(
        "--device", help="run one worker on this device (cpu, cuda:0, ...); default: one process per selected device"
    )
    worker.add_argument("--worker-index", type=int, default=0, help=argparse.SUPPRESS)
    worker.add_argument("--cpu-threads", type=int, default=None, help=argparse.SUPPRESS)
    from omega_vlm.caption.command import add_arguments

    caption = sub.add_parser("caption", help="caption images through a running service (resumable)")
    add_arguments(caption)
    demo = sub.add_parser("make-demo-model", parents=[settings_flags], help="generate the tiny demo model")
    demo.add_argument("--out", type=Path, default=None, help="folder (default: DATA_DIR/demo-model)")
    demo.add_argument("--force", action="store_true", help="rebuild even if it exists")
    return parser


def _demo_model(settings: Settings, out: Path | None, force: bool) -> int:
    from workers.demo_model import build_demo_model, ensure_demo_model

    target = out or settings.demo_model_dir
    path = build_demo_model(target) if force else ensure_demo_model(target)
    print(f"demo model ready at {path} (random weights: its output is meaningless)")
    return 0


def _worker_children(settings: Settings) -> list[Child]:
    from omega_vlm.devices import select_devices

    devices = select_devices(settings)
    cpu_count = sum(1 for d in devices if d == "cpu")
    threads = max(1, (os.cpu_count() or 1) // max(1, cpu_count))
    children = []
    for index, device in enumerate(devices):
        args = ["worker", "--device", device, "--worker-index", str(index)]
        if device == "cpu":
            args += ["--cpu-threads", str(threads)]
        fork_args = args if device == "cpu" else None  # GPU workers are exec'd (worker_template.py)
        name = f"worker {device}#{index}"
        children.append(Child(name=name, argv=python_argv(*args), stop_stage=1, fork_args=fork_args))
    return children


def _say(settings: Settings, line: str) -> None:
    """The seeds' bare "[server] …" lines on stdout; a JSON log record with LOG_FORMAT=json."""
    if settings.log_format == "json":
        log.info(line)
    else:
        print(line, flush=True)


def _announce_when_ready(settings: Settings, stop: threading.Event, listener: socket.socket) -> None:
    """The seeds' readiness line, once the API answers /readyz (or a worker failed to start).

    The port is our own listener (bound before anything started), so the answer is our API's.
    Once it answers, this process closes its copy of the socket: after the API stops, new
    connections are refused rather than left waiting while the workers finish.
    """
    import httpx

    host = "localhost" if settings.host in ("0.0.0.0", "::") else settings.host
    probe = {"0.0.0.0": "127.0.0.1", "::": "[::1]"}.get(settings.host, host)
    health = f"http://{host}:{settings.port}/health"
    while not stop.wait(0.5):
        try:
            report = httpx.get(f"http://{probe}:{settings.port}/health", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            continue
        listener.close()
        if report.get("ready"):
            _say(settings, f"[server] Ready. Health: {health}")
            if report.get("demo_model"):
                _say(
                    settings,
                    "[server] Serving the generated demo model: its output is meaningless. "
                    "Set MODEL_PATH to a model folder for real answers.",
                )
            return
        if report.get("startup_error"):
            _say(settings, f"[server] Not ready (degraded). Health: {health} Error: {report['startup_error']}")
            return


def _up(settings: Settings) -> int:
    check_model_path(settings)
    listener = bind_listener(settings.host, settings.port)  # before anything starts: a taken port ends here
    try:
        return _up_listening(settings, listener)
    finally:
        listener.close()


def _up_listening(settings: Settings, listener: socket.socket) -> int:
    from omega_vlm import redis_server
    from shared.redis_connect import RedisTarget

    settings = _apply_transformers_override(settings)
    children: list[Child] = []
    target = RedisTarget.from_settings(settings)
    if target.uses_sentinel and not redis_server.reachable(target):
        log.warning("no Redis primary answers through REDIS_SENTINELS yet; starting anyway")
    if redis_server.needs_private_redis(target):
        argv, url = redis_server.private_redis_plan(settings.redis_url, settings.data_path, settings.redis_maxmemory)
        if settings.log_format == "json":  # redis-server has one log format of its own: keep it apart
            argv += ["--logfile", str((settings.data_path / "redis" / "redis-server.log").resolve())]
        children.append(Child(name="redis-server", argv=argv, essential=True, stop_stage=2))
        settings = msgspec.structs.replace(settings, redis_url=url)
        log.info("REDIS_URL does not answer: starting a private redis-server at %s", url)
    # The demo model is built by the first worker that needs it (under a file lock, inside its
    # "[startup]" progress), not here: a supervisor that imported torch to build it would hold
    # hundreds of MB for nothing for its whole life.
    children += _worker_children(settings)
    fd = listener.fileno()
    api_argv = python_argv("api", "--listen-fd", str(fd))
    children.append(Child(name="api", argv=api_argv, essential=True, stop_stage=0, pass_fds=(fd,)))
    supervisor = _supervisor(children, settings)
    if children[0].name == "redis-server":
        supervisor.start(children[0])  # workers and API need it answering first
        redis_server.wait_until_reachable(settings.redis_url)
    announced = threading.Event()
    threading.Thread(target=_announce_when_ready, args=(settings, announced, listener), daemon=True).start()
    try:
        return supervisor.run()
    finally:
        announced.set()


def _apply_transformers_override(settings: Settings) -> Settings:
    """Install TRANSFORMERS_INSTALL_PATH once, here; the processes started below inherit it."""
    if not settings.transformers_path:
        return settings
    from workers.runtime_env import install_transformers

    install_transformers(settings.transformers_path)
    return msgspec.structs.replace(settings, transformers_path=None)


def _worker(settings: Settings, args: argparse.Namespace) -> int:
    from workers.runtime_env import prepare_worker_env

    check_model_path(settings)
    settings = _apply_transformers_override(settings)
    prepare_worker_env(settings)
    if args.device:
        import torch

        from workers.main import run_worker

        return run_worker(settings, torch.device(args.device), args.worker_index, args.cpu_threads)
    return _supervisor(_worker_children(settings), settings).run()


def _supervisor(children: list[Child], settings: Settings) -> Supervisor:
    env = child_env(settings_to_env(settings))
    return Supervisor(children, env, grace_s=settings.worker_stop_grace_s, max_restarts=settings.worker_max_restarts)


def _api(settings: Settings, listen_fd: int | None) -> int:
    listener = adopt_listener(listen_fd) if listen_fd is not None else bind_listener(settings.host, settings.port)
    from api.server import run_api  # after the bind: a taken port is reported before the slow imports

    try:
        return run_api(settings, listener)
    finally:
        listener.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "caption":  # a client: the server's settings do not apply
        from omega_vlm.caption.command import run

        return run(args)
    try:
        settings = load_settings(args)
    except SettingsError as exc:
        print(f"omega-vlm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from workers.runtime_env import TransformersInstallError

    try:
        if args.command == "api":
            return _api(settings, args.listen_fd)
        if args.command == "worker":
            return _worker(settings, args)
    except (PreflightError, TransformersInstallError) as exc:  # a plain line, not a traceback
        print(f"omega-vlm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings, args.command, hub=args.command != "up")
    try:
        if args.command == "make-demo-model":
            return _demo_model(settings, args.out, args.force)
        if args.command == "up":
            started = time.monotonic()
            code = _up(settings)
            log.info("stopped after %.0f s", time.monotonic() - started)
            return code
    except (SettingsError, RuntimeError) as exc:
        print(f"omega-vlm: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
