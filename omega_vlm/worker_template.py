"""CPU workers forked from a template process that has imported the worker once.

A CPU worker's start is almost all imports: torch, torchvision (and through it torch._dynamo) and
transformers cost about 5 s of CPU, the demo model loads in under 0.1 s. So the supervisor
(`omega-vlm up`, `omega-vlm worker`) starts one template per fleet: a process with the workers'
own environment that imports what a worker imports, runs nothing, and forks a worker whenever
the supervisor asks. A CPU worker that crashed is back after a fork and a model load instead of a
fresh interpreter: about 1 s instead of 6 on two cores, and the fleet's interpreters share the
imported pages.

Only CPU workers are forked. The template never touches CUDA, and PyTorch documents fork as safe
until CUDA is initialised, but a GPU worker's start is dominated by its weights, not its imports,
and fork with GPUs was not verified here: GPU workers are exec'd as before. The template is
single-threaded and runs no torch op, so no OpenMP pool or lock is inherited half-made. If the
template cannot start (its imports fail), workers are exec'd, and report the failure themselves.

The supervisor talks to the template over two pipes, its stdin and a reply descriptor (one JSON
line each way; stdout and stderr are the supervisor's, as for any child, and the workers'). A worker
is the template's child; the template reaps it and keeps its exit code for the supervisor's
`poll`. The template ends when its stdin closes (the supervisor is gone), and its workers then get
SIGTERM (they drain). Should the template die first, its workers drain and exit the same way, and
the supervisor restarts them (their exit codes died with the template: each counts as a crash).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping

import msgspec
import setproctitle

from shared.exit_codes import EXIT_FAILED

PR_SET_PDEATHSIG = 1

# What a CPU worker imports before it serves: the worker, and the model and processor classes the
# loader reaches through transformers' lazy modules.
PRELOAD = (
    "omega_vlm.cli",
    "workers.main",
    "transformers.models.auto.processing_auto",
    "transformers.models.auto.modeling_auto",
)


class Start(msgspec.Struct, tag="start"):
    args: list[str]  # omega_vlm.cli's arguments
    template: int = 0  # set in the forked child: the template's pid


class Poll(msgspec.Struct, tag="poll"):
    pid: int


Request = Start | Poll


class Ready(msgspec.Struct):
    pass


class Started(msgspec.Struct):
    pid: int


class Exited(msgspec.Struct):
    code: int | None  # None: still running


def _prctl(option: int, value: int) -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(option, value)


# --- the template (python -m omega_vlm.worker_template) ------------------------------------------


_reply_fd = -1  # the template's end of the reply pipe (its first argument)


def _send(message: Ready | Started | Exited) -> None:
    os.write(_reply_fd, msgspec.json.encode(message) + b"\n")


def _requests() -> Iterator[Request | None]:
    """Requests from stdin, read with os.read so no buffered bytes are inherited by a child; None
    every 0.2 s without one (a tick to reap children on). Ends when stdin closes."""
    pending = b""
    while True:
        readable, _, _ = select.select([0], [], [], 0.2)
        if not readable:
            yield None
            continue
        chunk = os.read(0, 65536)
        if not chunk:
            return
        pending += chunk
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            yield msgspec.json.decode(line, type=Request)


def reap(ended: dict[int, int]) -> None:
    """Reap every child that has ended, and keep its exit code (as `Popen` reads it: -signum)."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        ended[pid] = os.waitstatus_to_exitcode(status)


def _serve() -> Start | None:
    """Fork a worker per Start and report exits; in a forked child, return its request."""
    ended: dict[int, int] = {}
    for request in _requests():
        reap(ended)
        if isinstance(request, Poll):
            _send(Exited(ended.get(request.pid)))
        elif isinstance(request, Start):
            template = os.getpid()
            pid = os.fork()
            if pid == 0:
                request.template = template
                return request
            _send(Started(pid))
    return None


def _become_worker(request: Start) -> int:
    """In the forked child: a session of its own, SIGTERM when the template dies, no stdin."""
    os.setsid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != request.template:  # it died before the line above: no SIGTERM will come
        os._exit(EXIT_FAILED)
    os.close(_reply_fd)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    sys.argv = [sys.argv[0], *request.args]
    # ps, top and kubectl exec show the command an exec'd worker would have.
    setproctitle.setproctitle(" ".join([sys.executable, "-m", "omega_vlm.cli", *request.args]))
    from omega_vlm.cli import main as cli_main

    return cli_main(request.args)


def main() -> None:
    import importlib

    global _reply_fd
    _reply_fd = int(sys.argv[1])

    from shared.settings_sources import load_settings
    from workers.runtime_env import prepare_worker_env

    # What a worker sets before its imports (hub cache and token, runtime defaults) is set here,
    # before the template's: its children inherit exactly what an exec'd worker would import with.
    prepare_worker_env(load_settings())
    for name in PRELOAD:
        importlib.import_module(name)
    _send(Ready())
    request = _serve()
    if request is None:
        return
    # A forked worker ends as an exec'd one does: SystemExit, atexit, threads joined, streams flushed.
    sys.exit(_become_worker(request))


# --- the supervisor's side ----------------------------------------------------------------------


class TemplateGone(RuntimeError):
    """The template is not running (it failed to start, or died)."""


class Template:
    """The supervisor's handle on its template process."""

    def __init__(self, env: Mapping[str, str], start_timeout_s: float = 300.0) -> None:
        self._lock = threading.Lock()
        replies, reply_fd = os.pipe()
        self._replies = os.fdopen(replies, "rb")
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "omega_vlm.worker_template", str(reply_fd)],
                env=dict(env),
                stdin=subprocess.PIPE,
                pass_fds=(reply_fd,),
                start_new_session=True,
                preexec_fn=lambda: _prctl(PR_SET_PDEATHSIG, signal.SIGTERM),
            )
        except OSError:
            self._replies.close()
            raise
        finally:
            os.close(reply_fd)
        msgspec.json.decode(self._line(start_timeout_s), type=Ready)

    def _line(self, timeout_s: float = 30.0) -> bytes:
        ready, _, _ = select.select([self._replies], [], [], timeout_s)
        line = self._replies.readline() if ready else b""
        if not line:
            self.close()
            raise TemplateGone("the worker template is not answering")
        return line

    def _call(self, message: Request) -> bytes:
        stdin = self.process.stdin
        assert stdin is not None
        with self._lock:
            try:
                stdin.write(msgspec.json.encode(message) + b"\n")
                stdin.flush()
            except (BrokenPipeError, ValueError) as exc:
                raise TemplateGone("the worker template has exited") from exc
            return self._line()

    def alive(self) -> bool:
        return self.process.poll() is None

    def start(self, args: list[str]) -> ForkedWorker:
        started = msgspec.json.decode(self._call(Start(args)), type=Started)
        return ForkedWorker(self, started.pid, args)

    def exit_code(self, pid: int) -> int | None:
        return msgspec.json.decode(self._call(Poll(pid)), type=Exited).code

    def close(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._replies.close()


class ForkedChild:
    """A process forked by another (a template, the tests' zygote), handled like a
    `subprocess.Popen`: its parent reaps it and keeps its exit code, read through `exit_code`."""

    def __init__(self, pid: int, args: list[str], exit_code: Callable[[int], int | None]) -> None:
        self.pid = pid
        self.args = args
        self.returncode: int | None = None
        self._exit_code = exit_code

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self._exit_code(self.pid)
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
        # Not poll(): this runs in signal handlers (SIGUSR1 forwarding), which may interrupt a call
        # to the parent. An ended child stays a zombie until its parent's next reap (0.2 s), so a
        # pid not yet read as ended is not someone else's.
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ForkedWorker(ForkedChild):
    """A worker forked by the template."""

    def __init__(self, template: Template, pid: int, args: list[str]) -> None:
        super().__init__(pid, args, template.exit_code)

    def poll(self) -> int | None:
        try:
            return super().poll()
        except TemplateGone:
            # The template died: the worker was told to stop (SIGTERM) and drains; once it has
            # gone, its exit code is nobody's to read, so it counts as a crash.
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                self.returncode = EXIT_FAILED
            return self.returncode


if __name__ == "__main__":
    main()
