from __future__ import annotations

from pathlib import Path

import pytest
import torch

from shared.settings import Settings
from shared.settings_sources import load_settings
from workers.engine import Engine
from workers.loader import load_model


def engine_settings(demo_model_dir: Path, **env: str) -> Settings:
    return load_settings(environ={"MODEL_PATH": str(demo_model_dir), "MAX_INPUT_TOKENS": "64", **env})


@pytest.fixture(scope="session")
def engine(demo_model_dir: Path) -> Engine:
    torch.set_num_threads(1)
    settings = engine_settings(demo_model_dir)
    engine = Engine(load_model(settings, torch.device("cpu"), lambda _: None), settings)
    engine.warmup()
    return engine
