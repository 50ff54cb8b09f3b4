"""The worker's engine at two commits, side by side, in-process on the demo model.

    python -m benchmarks.engine_ab BEFORE_COMMIT [AFTER_COMMIT]   (AFTER defaults to the work tree)

Each commit's `workers` and `shared` packages are loaded from a temporary `git worktree` in a
child process of their own, so both run the same requests on the same model and machine, one
after the other, several rounds alternating. Reported per commit: output tokens/s of sampled rows
(the API's defaults: temperature 0.8, top-p 0.9, top-k 50, a seed per row) and greedy rows, alone and in batches of 8. This is how the
engine changes in BENCHMARKS.md were measured before and after.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from shared.contract import JobPayload, Message, SamplingParams, TextPart
from shared.settings_sources import load_settings
from workers.engine import Engine
from workers.loader import load_model

model, tokens, rounds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
settings = load_settings(environ={"MODEL_PATH": model})
engine = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
engine.warmup()

def job(i, sampled):
    # What a request that sets no sampling parameters gets from the API (the settings defaults).
    extra = dict(do_sample=True, temperature=0.8, top_p=0.9, top_k=50, seed=i) if sampled else {}
    return JobPayload(id=f"ab{i}", messages=(Message("user", (TextPart(f"request number {i}"),)),),
                      params=SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens, **extra), created_at=time.time())

out = {}
for sampled in (True, False):
    for batch in (1, 8):
        rows = [engine.prepare(job(i, sampled), []) for i in range(batch)]
        engine.generate(rows)
        times = []
        for _ in range(rounds):
            t0 = time.perf_counter(); engine.generate(rows); times.append(time.perf_counter() - t0)
        out[f"{'sampled' if sampled else 'greedy'}, batch {batch}"] = batch * tokens / min(times)
print(json.dumps(out))
"""


def measure(tree: Path, model: Path, tokens: int, rounds: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(model), str(tokens), str(rounds)],
        cwd=tree,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("before")
    parser.add_argument("after", nargs="?", default=None)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--alternations", type=int, default=3)
    args = parser.parse_args()
    from workers.demo_model import ensure_demo_model

    model = ensure_demo_model(ROOT / ".omega" / "bench" / "demo-model")
    with tempfile.TemporaryDirectory() as tmp:
        trees = {}
        for label, commit in (("before", args.before), ("after", args.after)):
            if commit is None:
                trees[f"{label} (work tree)"] = ROOT
                continue
            path = Path(tmp) / label
            subprocess.run(["git", "worktree", "add", "--detach", str(path), commit], cwd=ROOT, check=True, capture_output=True)
            trees[f"{label} ({commit[:7]})"] = path
        best: dict[str, dict[str, float]] = {name: {} for name in trees}
        try:
            for _ in range(args.alternations):
                for name, tree in trees.items():
                    for key, value in measure(tree, model, args.tokens, args.rounds).items():
                        best[name][key] = max(best[name].get(key, 0.0), value)
        finally:
            for tree in trees.values():
                if tree != ROOT:
                    subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=False)
    names = list(best)
    keys = list(best[names[0]])
    print("| output tokens/s | " + " | ".join(names) + " | after / before |")
    print("|---" * (len(names) + 2) + "|")
    for key in keys:
        values = [best[n][key] for n in names]
        print(f"| {key} | " + " | ".join(f"{v:.0f}" for v in values) + f" | {values[-1] / values[0]:.2f}x |")


if __name__ == "__main__":
    main()
