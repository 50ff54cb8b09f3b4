"""Model folders laid out the ways users hand them to the service, built from the demo model:
a Hugging Face hub cache entry, a folder that ships its own modeling code, and a folder whose
processor needs torchvision."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # a snapshot's commit hash (40 hex digits)


def lay_out_hub_cache(model_dir: Path, cache_dir: Path, repo_id: str, commit: str = COMMIT) -> Path:
    """Write `model_dir` into `cache_dir` as huggingface_hub stores a download.

    models--org--name/blobs/<sha256> hold the contents, snapshots/<commit>/<file> are relative
    links to them, refs/main names the commit. Returns the snapshot folder.
    """
    repo = cache_dir / ("models--" + repo_id.replace("/", "--"))
    blobs, snapshot = repo / "blobs", repo / "snapshots" / commit
    blobs.mkdir(parents=True, exist_ok=True)
    for source in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        relative = source.relative_to(model_dir)
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
        shutil.copyfile(source, blobs / digest)
        link = snapshot / relative
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blobs / digest, link.parent))
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return snapshot


CONFIGURATION_PY = """
from transformers import LlavaConfig


class OmegaLlavaConfig(LlavaConfig):
    model_type = "omega_llava"
"""

MODELING_PY = """
from transformers import LlavaForConditionalGeneration

from .configuration_omega import OmegaLlavaConfig


class OmegaLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    config_class = OmegaLlavaConfig
"""


def remote_code_model(demo_model_dir: Path, out: Path) -> Path:
    """The demo model as a model type transformers does not know, with its code in the folder.

    config.json's auto_map points at configuration_omega.py / modeling_omega.py, thin subclasses
    of the LLaVA classes (the way community models ship their code).
    """
    shutil.copytree(demo_model_dir, out)
    (out / "configuration_omega.py").write_text(CONFIGURATION_PY)
    (out / "modeling_omega.py").write_text(MODELING_PY)
    config = json.loads((out / "config.json").read_text())
    config.update(
        model_type="omega_llava",
        architectures=["OmegaLlavaForConditionalGeneration"],
        auto_map={
            "AutoConfig": "configuration_omega.OmegaLlavaConfig",
            "AutoModelForImageTextToText": "modeling_omega.OmegaLlavaForConditionalGeneration",
        },
    )
    (out / "config.json").write_text(json.dumps(config, indent=2))
    # transformers renames LLaVA's legacy checkpoint keys only for model_type "llava": store the
    # weights under the module names the subclass has.
    from safetensors.torch import save_model
    from transformers import LlavaForConditionalGeneration

    save_model(LlavaForConditionalGeneration.from_pretrained(demo_model_dir), str(out / "model.safetensors"))
    return out


def torchvision_processor_model(demo_model_dir: Path, out: Path) -> Path:
    """The demo model's weights with a Qwen2-VL processor, whose video processor needs torchvision."""
    from transformers import AutoTokenizer, Qwen2VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    from workers.demo_model import CHAT_TEMPLATE

    shutil.copytree(demo_model_dir, out)
    for stale in ("processor_config.json", "preprocessor_config.json"):
        (out / stale).unlink(missing_ok=True)
    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(),
        video_processor=Qwen2VLVideoProcessor(),
        tokenizer=AutoTokenizer.from_pretrained(demo_model_dir),
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(out)
    return out


# Put on PYTHONPATH, this folder's sitecustomize makes torchvision unimportable (find_spec -> None),
# as in an environment that never installed it.
NO_TORCHVISION_SITECUSTOMIZE = 'import sys\nsys.modules["torchvision"] = None\n'


def no_torchvision_dir(parent: Path) -> Path:
    folder = parent / "no-torchvision"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(NO_TORCHVISION_SITECUSTOMIZE)
    return folder
