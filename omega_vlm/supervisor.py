"""Start, watch and stop the processes of `omega-vlm up` (and of a multi-device `worker`).

Children run in their own session (Ctrl-C reaches only the supervisor, which stops each child
once, cleanly) and get SIGTERM if the supervisor itself dies. A worker that exits is restarted
with backoff; one that failed to *start* (exit code EXIT_START_FAILED: the model did not load)
`max_restarts` times in a row is given up, and the API answers 503 with the reason its last
start recorded. Crashes of a running worker are restarted without limit. If the API exits,
everything stops.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from omega_vlm.worker_template import ForkedWorker, Template, TemplateGone
from shared.exit_codes import EXIT_FAILED, EXIT_OK, EXIT_START_FAILED

log = logging.getLogger("omega.up")

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child, before exec: receive SIGTERM when the supervisor dies (Linux)."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass
class Child:
    name: str
    argv: list[str]
    essential: bool = False  # when it exits, everything stops (the API, the private Redis)
    restart: bool = True
    stop_stage: int = 1  # stopped in ascending stages: 0 the API, 1 workers, 2 the private Redis
    process: subprocess.Popen[bytes] | ForkedWorker | None = None
    fork_args: list[str] | None = None  # a CPU worker: forked from the worker template with these
    pass_fds: tuple[int, ...] = ()  # inherited descriptors (the API's listening socket)
    failures: int = 0  # exits in a row, for the backoff
    failed_starts: int = 0  # EXIT_START_FAILED exits in a row, for giving up
    next_start: float = 0.0
    started_at: float = field(default=0.0)
    given_up: bool = False


class Supervisor:
    def __init__(
        self, children: list[Child], env: dict[str, str], grace_s: float = 30.0, max_restarts: int | None = None
    ) -> None:
        self.children = children
        self.env = env
        self.grace_s = grace_s
        self.max_restarts = max_restarts  # None: restart forever
        self.stopping = threading.Event()
        self.exit_code = EXIT_OK
        self.template: Template | None = None  # started with the first CPU worker (worker_template.py)
        self.template_failed = False

    def start(self, child: Child) -> None:
        child.process = self._fork(child) or subprocess.Popen(
            child.argv, env=self.env, start_new_session=True, preexec_fn=_die_with_parent, pass_fds=child.pass_fds
        )
        child.started_at = time.monotonic()
        how = "forked" if isinstance(child.process, ForkedWorker) else "started"
        log.info("%s %s (pid %d)", how, child.name, child.process.pid)

    def _fork(self, child: Child) -> ForkedWorker | None:
        """The child forked from the worker template where it is one to fork and the template runs
        (started here on first use, again if it died); None: exec it."""
        if child.fork_args is None or self.template_failed:
            return None
        if self.template is None or not self.template.alive():
            self.template = None
            try:
                self.template = Template(self.env)
            except (TemplateGone, OSError) as exc:
                # Its imports failed: the exec'd workers will fail the same way and say why.
                log.warning("the worker template did not start (%s): CPU workers are exec'd", exc)
                self.template_failed = True
                return None
        try:
            return self.template.start(child.fork_args)
        except TemplateGone as exc:  # it died just now: this worker is exec'd, the next forked again
            log.warning("the worker template has gone (%s): %s is exec'd", exc, child.name)
            self.template = None
            return None

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        self.stopping.set()

    def _check(self, child: Child) -> None:
        process = child.process
        if child.given_up:
            return
        if process is None:
            if time.monotonic() >= child.next_start:
                self.start(child)
            return
        code = process.poll()
        if code is None:
            if time.monotonic() - child.started_at > 60:
                child.failures = child.failed_starts = 0  # it has been healthy for a while
            return
        child.process = None
        if child.essential or not child.restart:
            log.error("%s exited with code %s; stopping everything", child.name, code)
            self.exit_code = code or EXIT_FAILED
            self.stopping.set()
            return
        child.failures += 1
        child.failed_starts = child.failed_starts + 1 if code == EXIT_START_FAILED else 0
        if self.max_restarts is not None and child.failed_starts > self.max_restarts:
            child.given_up = True
            log.error(
                "%s failed to start %d times in a row; not restarting it (WORKER_MAX_RESTARTS=%d)",
                child.name,
                child.failed_starts,
                self.max_restarts,
            )
            return
        delay = min(30.0, 0.5 * 2 ** (child.failures - 1))
        child.next_start = time.monotonic() + delay
        log.warning("%s exited with code %s; restarting in %.1f s", child.name, code, delay)

    def _forward(self, signum: int, _frame: FrameType | None) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.send_signal(signum)

    def run(self, on_tick: Callable[[], None] | None = None) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGUSR1, self._forward)  # drain request (preStop): for the workers
        # Exec'd children first: the worker template's imports (seconds, on this thread) then run
        # beside the API's instead of before them.
        for child in sorted(self.children, key=lambda c: c.fork_args is not None):
            if child.process is None:  # some may have been started already (the private Redis)
                self.start(child)
        try:
            while not self.stopping.wait(0.25):
                for child in self.children:
                    self._check(child)
                if all(c.given_up for c in self.children):  # a worker-only supervisor with nothing left
                    log.error("every process was given up; stopping")
                    self.exit_code = EXIT_FAILED
                    break
                if on_tick is not None:
                    on_tick()
        finally:
            self.stop_all()
        return self.exit_code

    def stop_all(self) -> None:
        """SIGTERM by stage, all of a stage at once (workers finish their batches in parallel)."""
        for stage in sorted({c.stop_stage for c in self.children}):
            members = [c for c in self.children if c.stop_stage == stage and c.process is not None]
            for child in members:
                if child.process is not None and child.process.poll() is None:
                    child.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + self.grace_s
            for child in members:
                assert child.process is not None
                try:
                    child.process.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    log.warning("%s did not stop within %.0f s; killing it", child.name, self.grace_s)
                    child.process.kill()
                    child.process.wait()
        if self.template is not None:  # after its workers: they are its children
            self.template.close()
            self.template = None


def python_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "omega_vlm.cli", *args]


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
