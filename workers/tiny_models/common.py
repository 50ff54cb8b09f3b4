"""Config pieces several families share: a Llama-style text model and a ViT-style vision tower."""

from __future__ import annotations

from typing import Any

from workers.tiny_models.spec import FFN, HEAD_DIM, HEADS, HIDDEN, INIT_RANGE, KV_HEADS, VISION

IMAGE_SIDE = 32  # a vision tile's side: 4 x 4 patches of 8 px
PATCH = 8


def text_config(tok: Any, eos: str, pad: str, bos: str | None = None, **extra: Any) -> dict[str, Any]:
    """A 2-layer decoder sized by spec; token ids from the family's tokenizer."""
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM,
        "max_position_embeddings": 8192,
        "initializer_range": INIT_RANGE,
        "bos_token_id": tok.convert_tokens_to_ids(bos) if bos else None,
        "eos_token_id": tok.convert_tokens_to_ids(eos),
        "pad_token_id": tok.convert_tokens_to_ids(pad),
        **extra,
    }


def vit_config(**extra: Any) -> dict[str, Any]:
    """A 2-layer ViT (CLIP / SigLIP field names) over 32 px tiles of 8 px patches."""
    return {
        "hidden_size": VISION["hidden"],
        "intermediate_size": VISION["ffn"],
        "num_hidden_layers": VISION["layers"],
        "num_attention_heads": VISION["heads"],
        "image_size": IMAGE_SIDE,
        "patch_size": PATCH,
        **extra,
    }
