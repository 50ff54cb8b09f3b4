"""Workers load models the way users hand them over: a hub id served from a pre-populated hub
cache with HF_HUB_OFFLINE=1 (as after `hf download`), and a plain start-up error, shown by
/health, when the model is not there."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from shared.exit_codes import EXIT_START_FAILED
from tests.support.model_folders import lay_out_hub_cache
from tests.support.procs import ServiceProcess, service_env, wait_for
from tests.support.stack import Stack, StackFactory

REPO = "omega-test/tiny-vlm"
ASK = {"model": "model", "messages": [{"role": "user", "content": "describe a red car"}], "max_tokens": 10}


@pytest.fixture(scope="module")
def hub_stack(stacks: StackFactory, demo_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Stack:
    cache = tmp_path_factory.mktemp("hub-cache")
    lay_out_hub_cache(demo_model_dir, cache, REPO)
    # The standard huggingface_hub variables, as a user sets them; MODEL_PATH holds the repo id.
    return stacks.get("hub", workers=1, MODEL_PATH=REPO, HF_HUB_OFFLINE="1", HF_HUB_CACHE=str(cache), REDACT_SOURCE="0")


def test_a_hub_id_is_served_from_the_offline_cache(hub_stack: Stack, stack: Stack) -> None:
    with hub_stack.client() as client:
        health = client.get("/health").json()
        assert health["ready"] and health["model_path"] == REPO and health["demo_model"]
        reply = client.post("/v1/chat/completions", json={**ASK, "temperature": 0}).json()
    with stack.client() as client:  # the same weights straight from the folder
        reference = client.post("/v1/chat/completions", json={**ASK, "temperature": 0}).json()
    assert reply["choices"][0]["message"] == reference["choices"][0]["message"]


def test_a_hub_id_missing_offline_stops_the_worker_plainly(hub_stack: Stack) -> None:
    env = service_env({**hub_stack.env, "MODEL_PATH": "omega-test/not-downloaded", "REDACT_SOURCE": "1"})
    worker = ServiceProcess(
        ["worker", "--device", "cpu", "--worker-index", "7", "--cpu-threads", "1"],
        env,
        hub_stack.workdir / "worker-missing.log",
    ).start()
    expected = (
        "MODEL_PATH (or MODEL_ID) (hidden: REDACT_SOURCE is on) is neither a local folder nor in the hub "
        "cache (hidden), and HF_HUB_OFFLINE is on"
    )
    seen: list[dict[str, object]] = []

    def failure_reported() -> bool:
        # /health shows a failed worker's line until its record expires (WORKER_TTL_S).
        seen.append(httpx.get(f"{hub_stack.url}/health", timeout=10).json())
        return seen[-1]["startup_error"] is not None

    wait_for(failure_reported, 120, "/health to report the failed start")
    assert str(seen[-1]["startup_error"]).startswith(expected)  # the setting, never the source
    assert seen[-1]["ready"]  # the healthy worker keeps serving
    wait_for(lambda: not worker.alive(), 60, "the worker to give up")
    assert worker.stop() == EXIT_START_FAILED  # a failed start, not a crash: the supervisor stops retrying
    assert expected in worker.log() and "Traceback" not in worker.log()
