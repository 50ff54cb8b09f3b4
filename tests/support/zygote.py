"""Service processes for tests, forked from an interpreter that has already imported the service.

Why: the suite starts a few dozen workers and APIs, and each one used to spend most of its start
importing (torch, transformers, torchvision and, through it, torch._dynamo: about 7 s of CPU for a
worker on a 2-core machine, 2.5 s for an API). A zygote, started once per test session (by the
xdist controller, before its workers start: tests/conftest.py; else by the first process that needs
one) and reached by every test process over a Unix socket, imports all of that once; a test's
process is then a fork of it running the same entry point as
`python -m omega_vlm.cli ...` (`omega_vlm.cli.main`), with its own environment, working folder
and log file. It is a real process of its own: tests signal it, kill it and read its exit code as
before (`ForkedProcess` has the part of `subprocess.Popen`'s interface the tests use).

What a fork cannot reproduce is an interpreter started with a different environment: torch, the
OpenMP runtime, huggingface_hub and transformers read some variables when they are imported. So a
request whose import-time variables differ from the zygote's is started the ordinary way
(`eligible`), and so is everything the service starts itself (`up`'s supervisor execs its children).

The zygote is single-threaded (forking a threaded process can leave a child holding a lock no
thread will release) and imports only: no torch op runs in it, so no OpenMP pool exists to be
inherited half-initialised.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import msgspec

from omega_vlm.worker_template import ForkedChild, reap

ROOT = Path(__file__).resolve().parents[2]

# What the service's processes import; a module missing here is imported by the child itself.
PRELOAD = (
    "omega_vlm.cli",
    "api.server",
    "workers.main",
    "transformers.models.auto.processing_auto",
    "transformers.models.auto.modeling_auto",
    "transformers.models.llava",
)

# Variables some library reads when it is imported (torch, libgomp, huggingface_hub, transformers,
# tokenizers, the interpreter itself), plus the settings that make the worker change them before
# its imports (workers/runtime_env.py). A request that differs in any of them is not forked.
IMPORT_TIME_PREFIXES = (
    "HF_",
    "HUGGINGFACE",
    "TRANSFORMERS",
    "TORCH",
    "PYTORCH",
    "OMP_",
    "KMP_",
    "MKL_",
    "CUDA",
    "TOKENIZERS",
    "PYTHON",
    "LD_",
    "MALLOC",
    "CACHE_DIR",
)


def _import_time_view(env: Mapping[str, str]) -> dict[str, str]:
    from workers.runtime_env import RUNTIME_DEFAULTS  # what a worker sets before it imports torch

    effective = {**RUNTIME_DEFAULTS, **env}
    return {k: v for k, v in effective.items() if k.startswith(IMPORT_TIME_PREFIXES)}


# --- what the test process and the zygote say to each other (one JSON line each way) -------------


class Spawn(msgspec.Struct, tag="spawn"):
    args: list[str]
    env: dict[str, str]
    log: str
    cwd: str


class Status(msgspec.Struct, tag="status"):
    pid: int


Request = Spawn | Status


class Hello(msgspec.Struct):
    """The zygote's first line to each client, once its imports are done."""

    import_time: dict[str, str]  # the import-time variables it imported with (_import_time_view)
    set_by_imports: dict[str, str]  # what the imports set in its environment


class Spawned(msgspec.Struct):
    pid: int


class Exited(msgspec.Struct):
    code: int | None  # None: still running (or not reaped yet)


# --- the zygote (python -m tests.support.zygote SOCKET) ------------------------------------------


class _Client:
    """One test process's connection: requests are JSON lines, each answered on the same socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""

    def requests(self) -> list[Request] | None:
        """The complete requests that have arrived; None once the client has gone."""
        chunk = self.sock.recv(65536)
        if not chunk:
            return None
        self.pending += chunk
        lines = self.pending.split(b"\n")
        self.pending = lines.pop()
        return [msgspec.json.decode(line, type=Request) for line in lines]  # type: ignore[arg-type]

    def reply(self, message: Hello | Spawned | Exited) -> None:
        self.sock.sendall(msgspec.json.encode(message) + b"\n")


def _serve(listener: socket.socket, hello: Hello) -> Spawn | None:
    """Answer spawn/status requests from every client until stdin (the owner's pipe) closes; in a
    forked child, return its request instead."""
    ended: dict[int, int] = {}
    clients: dict[socket.socket, _Client] = {}
    while True:
        readable, _, _ = select.select([0, listener, *clients], [], [], 0.2)  # a tick to reap on
        reap(ended)
        for ready in readable:
            if ready == 0:
                if not os.read(0, 4096):
                    return None  # the owner is gone: the session is over
            elif ready is listener:
                client = _Client(listener.accept()[0])
                client.reply(hello)
                clients[client.sock] = client
            else:
                client = clients[ready]
                try:
                    requests = client.requests()
                except ConnectionError:
                    requests = None
                if requests is None:
                    del clients[ready]
                    ready.close()
                    continue
                for request in requests:
                    if isinstance(request, Status):
                        client.reply(Exited(ended.get(request.pid)))
                        continue
                    pid = os.fork()
                    if pid == 0:  # the child keeps none of the zygote's connections
                        listener.close()
                        for sock in clients:
                            sock.close()
                        return request
                    client.reply(Spawned(pid))


def _become(request: Spawn) -> None:
    """In the child: the environment, folder and output of the process the test asked for."""
    log = os.open(request.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)
    os.close(devnull)
    os.environ.clear()
    os.environ.update(request.env)
    os.chdir(request.cwd)
    with open("/proc/self/comm", "w") as comm:  # ps and top tell the forked service processes apart
        comm.write(f"omega-{request.args[0]}"[:15])
    sys.argv = [str(ROOT / "omega_vlm" / "cli.py"), *request.args]


def main() -> None:
    import importlib

    # Listening before the imports: clients that connect meanwhile wait for the hello line.
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sys.argv[1])
    listener.listen(64)
    before = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    # What the imports set for themselves (torch: TORCHINDUCTOR_CACHE_DIR): a test process that has
    # imported them too passes these on, and they change nothing.
    set_by_imports = {k: v for k, v in os.environ.items() if before.get(k) != v}
    request = _serve(listener, Hello(_import_time_view(before), set_by_imports))
    if request is None:
        return
    _become(request)
    from omega_vlm.cli import main as cli_main

    # What `python -m omega_vlm.cli` runs; its SystemExit ends this interpreter the ordinary way
    # (atexit, non-daemon threads joined, streams flushed), so exit codes and shutdown are a normal
    # process's.
    sys.exit(cli_main())


# --- the test side ------------------------------------------------------------------------------


class ForkedProcess(ForkedChild):
    """A zygote's child, handled like a `subprocess.Popen` (the zygote reaps it and keeps its code)."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        super().__init__(pid, args, zygote.status)


class Zygote:
    """A connection to the session's zygote (one per test process; requests are serialised)."""

    def __init__(self, path: str) -> None:
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.connect(path)
        self._file = self._sock.makefile("rb")
        self._hello: Hello | None = None

    def eligible(self, env: Mapping[str, str]) -> bool:
        """A fresh interpreter with `env` would import with what the zygote imported with."""
        hello = self._wait_hello()
        mine, theirs, neutral = hello.import_time, _import_time_view(env), hello.set_by_imports
        return all(
            mine.get(k) == theirs.get(k) or (k not in mine and neutral.get(k) == theirs.get(k))
            for k in mine.keys() | theirs.keys()
        )

    def _line(self) -> bytes:
        line = self._file.readline()
        if not line:
            raise RuntimeError("the test zygote exited")
        return line

    def _wait_hello(self) -> Hello:
        """Wait for the zygote's imports (its first line)."""
        with self._lock:
            if self._hello is None:
                self._hello = msgspec.json.decode(self._line(), type=Hello)
            return self._hello

    def _call(self, message: Request) -> bytes:
        self._wait_hello()
        with self._lock:
            self._sock.sendall(msgspec.json.encode(message) + b"\n")
            return self._line()

    def spawn(self, args: list[str], env: Mapping[str, str], log_path: Path, cwd: Path = ROOT) -> ForkedProcess:
        spawned = msgspec.json.decode(self._call(Spawn(args, dict(env), str(log_path), str(cwd))), type=Spawned)
        return ForkedProcess(self, spawned.pid, args)

    def status(self, pid: int) -> int | None:
        return msgspec.json.decode(self._call(Status(pid)), type=Exited).code

    def close(self) -> None:
        self._file.close()
        self._sock.close()


class OwnedZygote:
    """The zygote process itself, for the process that owns the session's (it ends when its stdin,
    held here, closes: when this process stops it or exits)."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.path = str(Path(tempfile.mkdtemp(prefix="omega-zygote-")) / "sock")
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.zygote", self.path], env=dict(env), cwd=ROOT, stdin=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while not os.path.exists(self.path):  # bound at once, before the imports
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the test zygote did not start")
            time.sleep(0.01)

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(os.path.dirname(self.path))


SOCKET_VARIABLE = "TEST_ZYGOTE_SOCKET"  # where the session's zygote listens (set by its owner)
_owned: OwnedZygote | None = None
_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def start_session_zygote(env: Mapping[str, str]) -> None:
    """Start the session's zygote and tell every process started from now on where it is (the xdist
    controller calls this before it starts its workers, so its imports overlap their collection)."""
    global _owned
    with _zygote_lock:
        if _owned is None and SOCKET_VARIABLE not in os.environ:
            _owned = OwnedZygote(env)
            os.environ[SOCKET_VARIABLE] = _owned.path


def shared_zygote(env: Mapping[str, str]) -> Zygote | None:
    """This process's connection to the session's zygote where TEST_ZYGOTE=1 (the test session sets
    it: tests/conftest.py, so the quick benchmark run inside `make test` forks from it too; `make
    bench` itself execs every process, as a deployment does); a process that finds none starts it,
    with `env`. TEST_ZYGOTE=0 make test turns it off."""
    global _zygote
    if os.environ.get("TEST_ZYGOTE") != "1":
        return None
    start_session_zygote(env)
    with _zygote_lock:
        if _zygote is None:
            _zygote = Zygote(os.environ[SOCKET_VARIABLE])
        return _zygote


def stop_shared_zygote() -> None:
    """Close this process's connection, and stop the zygote where this process owns it."""
    global _owned, _zygote
    with _zygote_lock:
        if _zygote is not None:
            _zygote.close()
            _zygote = None
        if _owned is not None:
            _owned.close()
            _owned = None
            os.environ.pop(SOCKET_VARIABLE, None)


if __name__ == "__main__":
    main()
