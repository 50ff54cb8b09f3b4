"""The model-family matrix's fixtures: each family's tiny model built once per session, and an
engine on it loaded by the worker's own loader."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import torch

from shared.settings import Settings
from shared.settings_sources import load_settings
from workers.engine import Engine
from workers.loader import load_model
from workers.tiny_models.build import ensure_family_model
from workers.tiny_models.families import FAMILIES

MAX_INPUT_TOKENS = 512


@pytest.fixture(scope="session")
def families_root() -> Path:
    """Where this session's tiny family models are built (each on first use)."""
    return Path(tempfile.mkdtemp(prefix="omega-families-"))


def family_settings(root: Path, key: str, **env: str) -> Settings:
    path = ensure_family_model(FAMILIES[key], root)
    return load_settings(environ={"MODEL_PATH": str(path), "MAX_INPUT_TOKENS": str(MAX_INPUT_TOKENS), **env})


@pytest.fixture(scope="session")
def family_engines() -> dict[str, Engine]:
    return {}


@pytest.fixture
def family_engine(request: pytest.FixtureRequest, families_root: Path, family_engines: dict[str, Engine]) -> Engine:
    """The engine of the test's `family` parameter, loaded once per session."""
    key = request.node.callspec.params["family"]
    if key not in family_engines:
        torch.set_num_threads(1)
        settings = family_settings(families_root, key)
        family_engines[key] = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    return family_engines[key]
