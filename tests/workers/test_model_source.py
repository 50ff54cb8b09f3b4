"""Loading the way users load: a hub id from the cache, remote code, missing folders and
libraries. Each case runs the real loader on the demo model laid out the way users hand it over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch

from shared.settings_sources import load_settings
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
from workers.loader import load_model
from workers.model_source import ModelLoadError
try:
    load_model(load_settings(), torch.device("cpu"), lambda _: None)
except ModelLoadError as exc:
    print("ModelLoadError:", exc)
    sys.exit(3)
print("loaded")
"""


def test_a_processor_that_needs_torchvision_says_so(demo_model_dir: Path, tmp_path: Path) -> None:
    folder = torchvision_processor_model(demo_model_dir, tmp_path / "qwen-processor")
    from transformers import AutoProcessor

    assert AutoProcessor.from_pretrained(folder).video_processor is not None  # loads where torchvision is
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "OMEGA_"))}
    env.update(
        PYTHONPATH=f"{no_torchvision_dir(tmp_path)}{os.pathsep}{ROOT}",
        MODEL_PATH=str(folder),
        OMP_NUM_THREADS="1",
    )
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 3, out.stdout + out.stderr
    assert "needs torchvision, which is not installed" in out.stdout
    assert "Qwen2VLVideoProcessor requires the Torchvision library" in out.stdout
