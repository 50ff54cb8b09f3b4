"""How the service's processes exit, in one table: the supervisor, Kubernetes and scripts read them.

| code | meaning |
|---|---|
| 0 | stopped as asked (SIGTERM drained, Ctrl-C), or a command that finished its work |
| 1 | a crash, or work that ended with failures (`caption`: an image failed) |
| 2 | refused before starting: bad settings or flags, a taken port, no model folder, an unreachable server |
| 3 | a worker could not load its model: the supervisor gives up after WORKER_MAX_RESTARTS of these in a row |
| 4 | a stopping worker still had rows running WORKER_STOP_GRACE_S + 10 s after SIGTERM (the janitor requeues them) |
| 130 | `caption` stopped by Ctrl-C (what was written is kept; the same command resumes) |

Signals show as 128 + the signal number in a shell (a negative code in Python's `subprocess`).
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_START_FAILED = 3
EXIT_DRAIN_OVERDUE = 4
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports Ctrl-C
