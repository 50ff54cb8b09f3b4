"""Where a worker's model comes from: a local model folder, or a hub repo id resolved into the
Hugging Face cache the way users load models (HF_TOKEN, CACHE_DIR / HF_HUB_CACHE, MODEL_REVISION,
HF_HUB_OFFLINE). Either way the loader then reads one local folder.

Every failure is a `ModelLoadError` whose message names the setting to change, never a
transformers message about repo-id syntax for what was meant as a path.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from shared.settings import Settings

# What the hub accepts as a repo id: "name" or "org/name" (huggingface_hub's own rule, shortened).
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")

# Files no transformers load needs: other frameworks' weights and original-format duplicates.
# Skipping them keeps a first download from fetching a repo's size several times over.
_SKIP_PATTERNS = [
    "*.pth",
    "*.pt",
    "*.h5",
    "*.msgpack",
    "*.onnx",
    "*.onnx_data",
    "*.ot",
    "*.gguf",
    "*.tflite",
    "original/*",
    "onnx/*",
    "openvino/*",
    "consolidated*.safetensors",
]

MODEL_SETTING = "MODEL_PATH (or MODEL_ID)"


class ModelLoadError(RuntimeError):
    """The model cannot be loaded as configured (the message says which setting to change)."""


def _shown(value: str, settings: Settings) -> str:
    """The configured value in quotes, or a note that REDACT_SOURCE hides it."""
    return "(hidden: REDACT_SOURCE is on)" if settings.redact_source else repr(value)


def looks_like_path(value: str) -> bool:
    """A value no hub repo id can be: absolute, relative with ./ or ~, or nested deeper."""
    return value.startswith(("/", ".", "~")) or "\\" in value or not _REPO_ID.match(value)


def resolve_model_folder(settings: Settings, step: Callable[[str], None] = lambda _: None) -> Path:
    """The local folder holding the configured model, downloading a hub repo into the cache."""
    value = settings.resolved_model_path
    folder = Path(value).expanduser()
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise ModelLoadError(
                f"{MODEL_SETTING} {_shown(value, settings)} is a folder without config.json: not a model folder"
            )
        return folder
    if folder.exists() or looks_like_path(value):
        raise ModelLoadError(
            f"{MODEL_SETTING} {_shown(value, settings)} is not a model folder: "
            f"{'a file' if folder.exists() else 'nothing'} is there "
            "(give a folder holding config.json, or a hub repo id such as org/name)"
        )
    step("Fetching the model from the hub cache (downloading what is missing)…")
    return _from_hub(value, settings)


def _from_hub(repo_id: str, settings: Settings) -> Path:
    import huggingface_hub
    from huggingface_hub import errors

    if settings.redact_source:  # the seeds: no download progress bars that would show the source
        huggingface_hub.utils.disable_progress_bars()

    shown = _shown(repo_id, settings)
    offline = huggingface_hub.constants.HF_HUB_OFFLINE
    kwargs: dict[str, Any] = {
        "revision": settings.model_revision,
        "token": settings.hf_token,
        "cache_dir": settings.cache_dir,
        "local_files_only": offline,
        "ignore_patterns": _SKIP_PATTERNS,
    }
    cache = settings.cache_dir or huggingface_hub.constants.HF_HUB_CACHE
    try:
        folder = Path(huggingface_hub.snapshot_download(repo_id, **kwargs))
    except errors.GatedRepoError:
        raise ModelLoadError(
            f"{MODEL_SETTING} {shown} is a gated repo: accept its terms on the hub and set HF_TOKEN"
        ) from None
    except errors.RepositoryNotFoundError:
        raise ModelLoadError(
            f"{MODEL_SETTING} {shown}: no such model on the hub and no such local folder "
            "(a private repo needs HF_TOKEN)"
        ) from None
    except errors.RevisionNotFoundError:
        revision = _shown(str(settings.model_revision), settings)
        raise ModelLoadError(f"MODEL_REVISION {revision} does not exist for {MODEL_SETTING} {shown}") from None
    except errors.LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is on" if offline else "the hub cannot be reached"
        raise ModelLoadError(
            f"{MODEL_SETTING} {shown} is neither a local folder nor in the hub cache "
            f"({'hidden' if settings.redact_source else cache}), and {why}: download it into the cache "
            "(CACHE_DIR / HF_HUB_CACHE) first, or point MODEL_PATH at a model folder"
        ) from None
    except errors.HfHubHTTPError as exc:
        raise ModelLoadError(f"{MODEL_SETTING} {shown}: the hub refused the download ({exc})") from None
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"{MODEL_SETTING} {shown} resolved to a hub snapshot without config.json")
    return folder


def refuse_untrusted_code(folder: Path, settings: Settings) -> None:
    """Stop early, naming TRUST_REMOTE_CODE, when the model needs its own code and it is off.

    A model whose config has an `auto_map` but a model_type transformers knows loads with the
    library's classes without running anything, so only unknown model types are refused.
    """
    if settings.trust_remote_code:
        return
    config = json.loads((folder / "config.json").read_text())
    auto_map = config.get("auto_map")
    if not auto_map:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if config.get("model_type") in CONFIG_MAPPING:
        return
    raise ModelLoadError(
        f"this model ships its own modeling code (config.json auto_map: {', '.join(sorted(auto_map))}; "
        f"model_type {config.get('model_type')!r} is not in transformers) and TRUST_REMOTE_CODE is off: "
        "set TRUST_REMOTE_CODE=1 to run the model's code"
    )


def explain_processor_error(exc: Exception, settings: Settings) -> ModelLoadError:
    """A processor that cannot load, said in terms of what the operator can change."""
    text = str(exc).strip()
    if isinstance(exc, ImportError) and "torchvision" in text.lower():
        return ModelLoadError(
            "the processor of this model needs torchvision, which is not installed in the worker's "
            "environment: install the torchvision release that matches torch (`make` and "
            f"Dockerfile.worker install it) ({text.splitlines()[0].strip() if text else type(exc).__name__})"
        )
    if isinstance(exc, ImportError):
        return ModelLoadError(f"the processor of this model needs a library that is not installed: {text}")
    if "trust_remote_code" in text:
        return ModelLoadError(
            "the processor of this model ships its own code and TRUST_REMOTE_CODE is off: "
            "set TRUST_REMOTE_CODE=1 to run it"
        )
    if settings.redact_source:  # transformers' own message may hold the path
        why = f"{type(exc).__name__}; REDACT_SOURCE hides the details"
        return ModelLoadError(f"could not load the processor of the model ({why})")
    return ModelLoadError(f"could not load the processor of {settings.resolved_model_path}: {text}")
