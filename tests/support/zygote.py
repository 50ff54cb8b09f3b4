"""Service processes for tests, forked from an interpreter that has already imported the service.

Why: the suite starts a few dozen workers and APIs, and each one used to spend most of its start
importing (torch, transformers, torchvision and, through it, torch._dynamo: about 7 s of CPU for a
worker on a 2-core machine, 2.5 s for an API). A zygote, started once per pytest process, imports
all of that once; a test's process is then a fork of it running the same entry point as
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

import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import msgspec

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
    """The zygote's first line, once its imports are done."""

    set_by_imports: dict[str, str]  # what the imports set in its environment


class Spawned(msgspec.Struct):
    pid: int


class Exited(msgspec.Struct):
    code: int | None  # None: still running (or not reaped yet)


# --- the zygote (python -m tests.support.zygote) -----------------------------------------------


def _reply(message: Hello | Spawned | Exited) -> None:
    os.write(1, msgspec.json.encode(message) + b"\n")


def _requests() -> Iterator[Request | None]:
    """Requests from stdin, read with os.read so no buffered bytes are inherited by a child; None
    every 0.2 s without one (a tick to reap children on)."""
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.2)
        if not readable:
            yield None
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return  # the test process is gone
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield msgspec.json.decode(line, type=Request)  # type: ignore[arg-type]


def _serve() -> Spawn | None:
    """Answer spawn/status requests; in a forked child, return its request instead."""
    ended: dict[int, int] = {}
    for request in _requests():
        while True:  # reap every child that has ended, and keep its exit code
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ended[pid] = os.waitstatus_to_exitcode(status)
        if request is None:
            continue
        if isinstance(request, Status):
            _reply(Exited(ended.get(request.pid)))
            continue
        pid = os.fork()
        if pid == 0:
            return request
        _reply(Spawned(pid))
    return None


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

    before = dict(os.environ)
    for name in PRELOAD:
        importlib.import_module(name)
    # What the imports set for themselves (torch: TORCHINDUCTOR_CACHE_DIR): a test process that has
    # imported them too passes these on, and they change nothing.
    _reply(Hello({k: v for k, v in os.environ.items() if before.get(k) != v}))
    request = _serve()
    if request is None:
        return
    _become(request)
    from omega_vlm.cli import main as cli_main

    # What `python -m omega_vlm.cli` runs; its SystemExit ends this interpreter the ordinary way
    # (atexit, non-daemon threads joined, streams flushed), so exit codes and shutdown are a normal
    # process's.
    sys.exit(cli_main())


# --- the test side ------------------------------------------------------------------------------


class ForkedProcess:
    """A zygote's child, handled like a `subprocess.Popen` (the zygote reaps it and keeps its code)."""

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        self._zygote = zygote
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._zygote.status(self.pid)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() >= deadline:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            time.sleep(0.05)
        assert self.returncode is not None
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a reaped pid: it may be someone else's by now
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Zygote:
    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = dict(env)
        self._lock = threading.Lock()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.zygote"],
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        self._set_by_imports: dict[str, str] | None = None

    def eligible(self, env: Mapping[str, str]) -> bool:
        """A fresh interpreter with `env` would import with what the zygote imported with."""
        mine, theirs = _import_time_view(self.env), _import_time_view(env)
        neutral = self._hello()
        return all(
            mine.get(k) == theirs.get(k) or (k not in mine and neutral.get(k) == theirs.get(k))
            for k in mine.keys() | theirs.keys()
        )

    def _hello(self) -> dict[str, str]:
        """Wait for the zygote's imports; what they set in its environment."""
        with self._lock:
            if self._set_by_imports is None:
                assert self._process.stdout is not None
                hello = self._process.stdout.readline()
                if not hello:
                    raise RuntimeError("the test zygote exited before it was ready")
                self._set_by_imports = msgspec.json.decode(hello, type=Hello).set_by_imports
            return self._set_by_imports

    def _call(self, message: Request) -> bytes:
        assert self._process.stdin is not None and self._process.stdout is not None
        self._hello()
        with self._lock:
            self._process.stdin.write(msgspec.json.encode(message) + b"\n")
            self._process.stdin.flush()
            line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the test zygote exited")
        return line

    def spawn(self, args: list[str], env: Mapping[str, str], log_path: Path, cwd: Path = ROOT) -> ForkedProcess:
        spawned = msgspec.json.decode(self._call(Spawn(args, dict(env), str(log_path), str(cwd))), type=Spawned)
        return ForkedProcess(self, spawned.pid, args)

    def status(self, pid: int) -> int | None:
        return msgspec.json.decode(self._call(Status(pid)), type=Exited).code

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


_zygote: Zygote | None = None
_zygote_lock = threading.Lock()


def shared_zygote(env: Mapping[str, str]) -> Zygote | None:
    """This process's zygote (started on first use) where TEST_ZYGOTE=1: the test session sets it
    (tests/conftest.py), so the quick benchmark run inside `make test` forks too; `make bench`
    itself execs every process, as a deployment does. TEST_ZYGOTE=0 make test turns it off."""
    global _zygote
    if os.environ.get("TEST_ZYGOTE") != "1":
        return None
    with _zygote_lock:
        if _zygote is None:
            _zygote = Zygote(env)
        return _zygote


def stop_shared_zygote() -> None:
    global _zygote
    with _zygote_lock:
        if _zygote is not None:
            _zygote.close()
            _zygote = None


if __name__ == "__main__":
    main()
