"""The model-family matrix's fixtures: each family's tiny model built once per session, and an
engine on it loaded by the worker's own loader."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from shared.settings import Settings
from shared.settings_sources import load_settings
from tests.support.procs import RedisServer
from workers.engine import Engine
from workers.loader import load_model
from workers.streaming import DeltaPublisher
from workers.tiny_models.build import ensure_family_model
from workers.tiny_models.families import FAMILIES

MAX_INPUT_TOKENS = 512

_root = Path(tempfile.mkdtemp(prefix="omega-families-"))
_engines: dict[str, Engine] = {}


def family_settings(key: str, **env: str) -> Settings:
    path = ensure_family_model(FAMILIES[key], _root)
    return load_settings(environ={"MODEL_PATH": str(path), "MAX_INPUT_TOKENS": str(MAX_INPUT_TOKENS), **env})


@pytest.fixture(scope="session")
def publisher(redis_server: RedisServer) -> Iterator[DeltaPublisher]:
    conn = redis_server.client(db=11)
    conn.flushdb()
    pub = DeltaPublisher(conn)
    yield pub
    pub.close()


@pytest.fixture
def family_engine(request: pytest.FixtureRequest, publisher: DeltaPublisher) -> Engine:
    """The engine of the test's `family` parameter, loaded once per session."""
    key = request.node.callspec.params["family"]
    if key not in _engines:
        torch.set_num_threads(1)
        settings = family_settings(key)
        _engines[key] = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings, publisher)
    return _engines[key]
