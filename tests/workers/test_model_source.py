"""Loading the way users load: a hub id from the cache, remote code, missing folders and
libraries. Each case runs the real loader on the demo model laid out the way users hand it over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import huggingface_hub
import pytest
import torch

from shared.settings_sources import load_settings
from tests.support.fake_hub import FakeHub, start_fake_hub
from tests.support.model_folders import (
    COMMIT,
    lay_out_hub_cache,
    no_torchvision_dir,
    remote_code_model,
    torchvision_processor_model,
)
from tests.workers.test_engine import job
from workers.engine import Engine
from workers.loader import load_model
from workers.model_source import ModelLoadError

REPO = "omega-test/tiny-vlm"
ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")


def greedy_text(engine: Engine) -> str:
    return engine.generate([engine.prepare(job("describe the picture", max_new_tokens=12), [])])[0].text


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """HF_HUB_OFFLINE=1 as huggingface_hub reads it (once, at import): no request leaves."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def test_a_hub_id_loads_from_the_cache_offline(
    offline: None, demo_model_dir: Path, engine: Engine, tmp_path: Path
) -> None:
    cache = tmp_path / "hub"
    lay_out_hub_cache(demo_model_dir, cache, REPO)
    # huggingface_hub itself reads the layout back as one cached repo at that commit.
    info = huggingface_hub.scan_cache_dir(cache)
    assert [(r.repo_id, [rev.commit_hash for rev in r.revisions]) for r in info.repos] == [(REPO, [COMMIT])]
    env = {"MODEL_ID": REPO, "CACHE_DIR": str(cache), "HF_TOKEN": "hf_unused", "REDACT_SOURCE": "0"}
    for extra in ({}, {"MODEL_REVISION": COMMIT}):
        settings = load_settings(environ={**env, **extra, "MAX_INPUT_TOKENS": "64"})
        steps: list[str] = []
        loaded = load_model(settings, CPU, steps.append)
        assert steps[0].startswith("Fetching the model from the hub cache")
        assert loaded.card.path == REPO and loaded.card.demo
        hub_engine = Engine(loaded, settings)
        assert greedy_text(hub_engine) == greedy_text(engine)  # the same weights as the folder


def test_a_hub_id_missing_offline_is_a_plain_error(offline: None, tmp_path: Path) -> None:
    settings = load_settings(
        environ={"MODEL_ID": "omega-test/absent", "CACHE_DIR": str(tmp_path), "REDACT_SOURCE": "0"}
    )
    with pytest.raises(ModelLoadError) as err:
        load_model(settings, CPU, lambda _: None)
    message = str(err.value)
    assert "MODEL_ID" in message and "'omega-test/absent'" in message and "HF_HUB_OFFLINE is on" in message
    assert str(tmp_path) in message


@pytest.mark.parametrize("where", ["/nowhere/model", "./models/absent", "~/absent-model"])
def test_a_missing_model_folder_names_model_path(where: str) -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model(load_settings(environ={"MODEL_PATH": where, "REDACT_SOURCE": "0"}), CPU, lambda _: None)
    assert str(err.value).startswith(f"MODEL_PATH (or MODEL_ID) {where!r} is not a model folder")
    assert "Repo id" not in str(err.value)


def test_a_folder_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="MODEL_PATH.*without config.json"):
        load_model(load_settings(environ={"MODEL_PATH": str(tmp_path)}), CPU, lambda _: None)


def test_the_redacted_error_hides_the_path() -> None:
    with pytest.raises(ModelLoadError) as err:
        load_model(load_settings(environ={"MODEL_PATH": "/secret/place"}), CPU, lambda _: None)
    assert "/secret/place" not in str(err.value) and "REDACT_SOURCE" in str(err.value)


def test_remote_code_needs_trust_remote_code(demo_model_dir: Path, engine: Engine, tmp_path: Path) -> None:
    folder = remote_code_model(demo_model_dir, tmp_path / "remote")
    refused = load_settings(environ={"MODEL_PATH": str(folder), "TRUST_REMOTE_CODE": "0"})
    with pytest.raises(ModelLoadError, match="TRUST_REMOTE_CODE is off: set TRUST_REMOTE_CODE=1"):
        load_model(refused, CPU, lambda _: None)
    trusted = load_settings(environ={"MODEL_PATH": str(folder), "TRUST_REMOTE_CODE": "1", "MAX_INPUT_TOKENS": "64"})
    loaded = load_model(trusted, CPU, lambda _: None)
    # The class came from the folder's own modeling_omega.py, not from transformers.
    assert type(loaded.model).__name__ == "OmegaLlavaForConditionalGeneration"
    assert type(loaded.model).__module__.startswith("transformers_modules.")
    remote_engine = Engine(loaded, trusted)
    assert greedy_text(remote_engine) == greedy_text(engine)


def test_a_known_model_type_with_auto_map_loads_without_trust(demo_model_dir: Path, tmp_path: Path) -> None:
    """transformers uses its own class for a model type it knows: nothing of the folder's runs."""
    folder = remote_code_model(demo_model_dir, tmp_path / "known")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "llava"
    (folder / "config.json").write_text(json.dumps(config))
    settings = load_settings(environ={"MODEL_PATH": str(folder), "TRUST_REMOTE_CODE": "0"})
    assert type(load_model(settings, CPU, lambda _: None).model).__module__.startswith("transformers.models.llava")


LOAD_SCRIPT = """
import sys, torch
from shared.settings_sources import load_settings
from tests.support.fake_hub import FakeHub, start_fake_hub
from workers.loader import load_model
from workers.model_source import ModelLoadError
try:
    load_model(load_settings(), torch.device("cpu"), lambda _: None)
except ModelLoadError as exc:
    print("ModelLoadError:", exc)
    sys.exit(3)
print("loaded")
"""


def run_loader(settings_env: dict[str, str], pythonpath: str = str(ROOT)) -> subprocess.CompletedProcess[str]:
    """The real loader in a fresh interpreter, which reads HF_* variables at import as a worker does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "OMEGA_", "HF_", "HUGGING_FACE_"))}
    env.update(PYTHONPATH=pythonpath, OMP_NUM_THREADS="1", REDACT_SOURCE="0", **settings_env)
    return subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_a_processor_that_needs_torchvision_says_so(demo_model_dir: Path, tmp_path: Path) -> None:
    folder = torchvision_processor_model(demo_model_dir, tmp_path / "qwen-processor")
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(folder).video_processor is not None  # loads where torchvision is
    out = run_loader({"MODEL_PATH": str(folder)}, f"{no_torchvision_dir(tmp_path)}{os.pathsep}{ROOT}")
    assert out.returncode == 3, out.stdout + out.stderr
    assert "needs torchvision, which is not installed" in out.stdout
    assert "Qwen2VLVideoProcessor requires the Torchvision library" in out.stdout


@pytest.fixture
def fake_hub(demo_model_dir: Path) -> Iterator[FakeHub]:
    hub = start_fake_hub(demo_model_dir, REPO, COMMIT, token="hf_right")
    # Files of other formats a repo may carry beside the transformers weights.
    hub.files.update({"original/consolidated.pth": b"0" * 64, "onnx/model.onnx": b"1" * 64})
    yield hub
    hub.stop()


def test_a_hub_id_downloads_with_hf_token_then_loads_offline(fake_hub: FakeHub, tmp_path: Path) -> None:
    cache = str(tmp_path / "hub")
    env = {"MODEL_ID": REPO, "HF_TOKEN": "hf_right", "HF_HUB_CACHE": cache, "HF_HUB_DISABLE_XET": "1"}
    out = run_loader({**env, "HF_ENDPOINT": fake_hub.url})
    assert out.returncode == 0 and out.stdout.strip().endswith("loaded"), out.stdout + out.stderr
    assert fake_hub.requests and {auth for _, _, auth in fake_hub.requests} == {"Bearer hf_right"}
    downloads = [path for method, path, _ in fake_hub.requests if method == "GET" and "/resolve/" in path]
    fetched = {path.rsplit("/resolve/", 1)[1].partition("/")[2] for path in downloads}
    assert "model.safetensors" in fetched and not fetched & {"original/consolidated.pth", "onnx/model.onnx"}
    cached = huggingface_hub.scan_cache_dir(cache).repos
    assert [(r.repo_id, [rev.commit_hash for rev in r.revisions]) for r in cached] == [(REPO, [COMMIT])]
    # What was downloaded is enough later on without the hub.
    fake_hub.stop()
    offline = run_loader({**env, "HF_HUB_OFFLINE": "1", "HF_ENDPOINT": fake_hub.url})
    assert offline.returncode == 0, offline.stdout + offline.stderr


def test_a_private_hub_id_without_the_right_token_names_hf_token(fake_hub: FakeHub, tmp_path: Path) -> None:
    env = {"MODEL_ID": REPO, "HUGGING_FACE_HUB_TOKEN": "hf_wrong", "HF_HUB_CACHE": str(tmp_path)}
    out = run_loader({**env, "HF_ENDPOINT": fake_hub.url, "HF_HUB_DISABLE_XET": "1"})
    assert out.returncode == 3, out.stdout + out.stderr
    assert fake_hub.requests[0][2] == "Bearer hf_wrong"
    assert f"{REPO!r}: no such model on the hub and no such local folder (a private repo needs HF_TOKEN)" in out.stdout
