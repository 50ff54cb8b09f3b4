"""Process environment a worker needs before torch and transformers are imported.

The seeds' "advanced runtime" defaults (each only if the operator has not set it), the hub cache
and token, and the optional transformers override (TRANSFORMERS_INSTALL_PATH).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

from shared.settings import Settings

RUNTIME_DEFAULTS = {
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True",
    "TOKENIZERS_PARALLELISM": "false",
    "CUDA_DEVICE_MAX_CONNECTIONS": "1",
}


def prepare_worker_env(settings: Settings) -> None:
    for key, value in RUNTIME_DEFAULTS.items():
        os.environ.setdefault(key, value)
    if importlib.util.find_spec("hf_transfer") is not None:
        os.environ.setdefault("HF_HUB_ENABLE_HF_TRANSFER", "1")
    if settings.cache_dir:
        os.environ["HF_HUB_CACHE"] = settings.cache_dir
    if settings.hf_token:
        os.environ.setdefault("HF_TOKEN", settings.hf_token)


class TransformersInstallError(RuntimeError):
    """TRANSFORMERS_INSTALL_PATH could not be installed (pip's own output says why)."""


def transformers_origin(python: str = sys.executable) -> str:
    """'transformers X.Y.Z from /path/__init__.py', read in a fresh interpreter (after an install)."""
    code = "import transformers; print(transformers.__version__, transformers.__file__)"
    out = subprocess.run([python, "-c", code], capture_output=True, text=True, check=False)
    version, _, path = out.stdout.strip().partition(" ")
    return f"transformers {version} from {path}" if out.returncode == 0 else "transformers is not importable"


def install_transformers(source: str, python: str = sys.executable) -> str:
    """The seeds' override: `pip install -U SOURCE` (path, git URL or wheel) into the running
    environment, then print what is installed and where it loads from. Returns that line."""
    print(f"[entrypoint] installing transformers from {source}", flush=True)
    done = subprocess.run([python, "-m", "pip", "install", "-U", source], check=False)
    if done.returncode != 0:
        raise TransformersInstallError(
            f"TRANSFORMERS_INSTALL_PATH (--transformers-path): pip could not install {source!r} "
            f"(exit {done.returncode}; pip's output above says why)"
        )
    origin = transformers_origin(python)
    print(f"[entrypoint] {origin}", flush=True)
    print(f"[entrypoint] Using {origin}", flush=True)
    return origin
