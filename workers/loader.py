"""Load a processor and model once per worker: dtype, attention fallback, start-up steps.

Real models and the demo model take the same path (`AutoProcessor` +
`AutoModelForImageTextToText`, or `AutoModelForCausalLM` for a text-only model folder).
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from shared.fleet import ModelCard
from shared.settings import Settings
from workers.demo_model import is_demo_model
from workers.model_source import ModelLoadError as ModelLoadError  # re-exported: callers catch it here
from workers.model_source import explain_processor_error, refuse_untrusted_code, resolve_model_folder

log = logging.getLogger("omega.worker.loader")

# Used only when a model folder ships no chat template at all.
FALLBACK_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: "
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
)

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


@dataclass
class LoadedModel:
    processor: Any
    tokenizer: Any
    model: Any
    device: torch.device
    dtype: torch.dtype
    attn: str
    supports_images: bool
    image_token_id: int | None
    eos_ids: list[int]
    pad_id: int
    card: ModelCard


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on a GPU that has it (else fp16), fp32 on CPU, as the seeds describe."""
    if requested != "auto":
        return _DTYPES[requested]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def attention_candidates(requested: str, strict: bool, device: torch.device, dtype: torch.dtype) -> list[str]:
    """Attention implementations to try, in order: the request, then the seeds' fallbacks."""
    if strict:
        return [requested]
    order = {
        "flash_attention_2": ["flash_attention_2", "sdpa", "eager"],
        "sdpa": ["sdpa", "eager"],
        "eager": ["eager", "sdpa"],
    }[requested]
    fa2_usable = (
        device.type == "cuda"
        and dtype in (torch.float16, torch.bfloat16)
        and importlib.util.find_spec("flash_attn") is not None
    )
    return [a for a in order if a != "flash_attention_2" or fa2_usable]


def _hub_kwargs(settings: Settings) -> dict[str, Any]:
    return {
        "trust_remote_code": settings.trust_remote_code,
        "revision": settings.model_revision,
        "token": settings.hf_token,
        "cache_dir": settings.cache_dir,
    }


def _load_weights(
    path: str, settings: Settings, device: torch.device, dtype: torch.dtype, step: Callable[[str], None]
) -> tuple[Any, str, bool]:
    from transformers import AutoModelForImageTextToText

    last_error: Exception | None = None
    candidates = attention_candidates(settings.attn_impl, settings.attn_strict, device, dtype)
    if settings.attn_impl not in candidates and candidates:
        step(f"Falling back to {candidates[0]} attention ({settings.attn_impl} is not available here)")
    for attn in candidates:
        step(f"Loading model (attn={attn}, dtype={str(dtype).removeprefix('torch.')})")
        kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": attn, **_hub_kwargs(settings)}
        if device.type == "cuda":
            kwargs["device_map"] = {"": device.index or 0}
        try:
            try:
                model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
                supports_images = True
            except ValueError as exc:
                if "Unrecognized configuration class" not in str(exc):
                    raise
                model = _text_model(path, kwargs)
                supports_images = False
            return model.to(device).eval(), attn, supports_images
        except (ImportError, ValueError) as exc:  # attention kernel missing or unsupported
            last_error = exc
            if settings.attn_strict:
                break
            log.warning("attention %s failed: %s", attn, exc)
            if attn != candidates[-1]:
                step(f"Falling back to {candidates[candidates.index(attn) + 1]} attention")
    raise ModelLoadError(
        f"could not load the model with ATTN_IMPL={settings.attn_impl}"
        f"{' (ATTN_STRICT is on)' if settings.attn_strict else ''}: {last_error}"
    )


def _text_model(path: str, kwargs: dict[str, Any]) -> Any:
    """A text-only model; a model type neither auto class serves (an encoder-decoder, an audio
    model) is a start-up error naming it, not an attention fallback."""
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" not in str(exc):
            raise
        hub = {k: kwargs[k] for k in ("trust_remote_code", "revision", "token", "cache_dir") if k in kwargs}
        model_type = AutoConfig.from_pretrained(path, **hub).model_type
        raise ModelLoadError(
            f"model type {model_type!r} is not served: the worker runs image-text-to-text and causal "
            "language models (see the supported-models table in README.md)"
        ) from None


def _eos_ids(model: Any, tokenizer: Any) -> list[int]:
    eos = model.generation_config.eos_token_id
    if eos is None:
        eos = tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return [int(i) for i in ids if i is not None]


def load_model(settings: Settings, device: torch.device, step: Callable[[str], None]) -> LoadedModel:
    """Load processor and weights on `device`; `step` receives the seeds' start-up step lines."""
    import transformers
    from transformers import AutoProcessor

    folder = resolve_model_folder(settings, step)
    refuse_untrusted_code(folder, settings)
    path = str(folder)
    dtype = resolve_dtype(settings.dtype, device)
    step("Loading tokenizer…")
    try:
        processor = AutoProcessor.from_pretrained(path, **_hub_kwargs(settings))
    except (OSError, ValueError, ImportError) as exc:
        raise explain_processor_error(exc, settings) from exc
    tokenizer = getattr(processor, "tokenizer", processor)
    step("Tokenizer ready")
    model, attn, supports_images = _load_weights(path, settings, device, dtype, step)
    eos_ids = _eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_ids[0]
    image_token_id = getattr(processor, "image_token_id", None) if supports_images else None
    template = getattr(processor, "chat_template", None) or getattr(tokenizer, "chat_template", None)
    special = {k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)}
    card = ModelCard(
        path=None if settings.redact_source else settings.resolved_model_path,
        demo=is_demo_model(folder),
        dtype=str(dtype),
        attn=attn,
        chat_template=template or FALLBACK_TEMPLATE,
        template_kwargs=special,
        supports_images=supports_images,
        image_token=getattr(processor, "image_token", None) if supports_images else None,
        max_model_length=settings.max_model_length,
        transformers_version=transformers.__version__,
    )
    return LoadedModel(
        processor, tokenizer, model, device, dtype, attn, supports_images, image_token_id, eos_ids, int(pad_id), card
    )
