"""Qwen families: Qwen2.5-VL and Qwen3-VL (M-RoPE, flattened patches with a (t, h, w) grid), Qwen3."""

from __future__ import annotations

from typing import Any

from workers.tiny_models import templates
from workers.tiny_models.spec import FFN, HEAD_DIM, HEADS, HIDDEN, INIT_RANGE, KV_HEADS, VISION, Parts
from workers.tiny_models.tokenizer import train_tokenizer

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>"]
QWEN_VISION_TOKENS = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
PATCH = 8  # vision patch side; a merged token covers 2x2 patches, so images snap to 16 px
# M-RoPE: the rotary half-dimension split into (temporal, height, width) sections.
MROPE_SECTION = [2, 3, 3]


def _qwen_tokenizer(vision: bool) -> Any:
    named = dict(QWEN_VISION_TOKENS) if vision else {}
    return train_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", named=named)


def _text(tokenizer: Any, **extra: object) -> dict[str, object]:
    tok = tokenizer  # a PreTrainedTokenizerFast
    return {
        "vocab_size": len(tok),
        "hidden_size": HIDDEN,
        "intermediate_size": FFN,
        "num_hidden_layers": 2,
        "num_attention_heads": HEADS,
        "num_key_value_heads": KV_HEADS,
        "max_position_embeddings": 8192,
        "initializer_range": INIT_RANGE,
        "eos_token_id": tok.convert_tokens_to_ids("<|im_end|>"),
        "pad_token_id": tok.convert_tokens_to_ids("<|endoftext|>"),
        **extra,
    }


def _vision_ids(tok: Any) -> dict[str, int]:
    ids = tok.convert_tokens_to_ids
    return {
        "image_token_id": ids("<|image_pad|>"),
        "video_token_id": ids("<|video_pad|>"),
        "vision_start_token_id": ids("<|vision_start|>"),
        "vision_end_token_id": ids("<|vision_end|>"),
    }


def _image_processor(cls: type) -> Any:
    side = PATCH * 2
    return cls(patch_size=PATCH, merge_size=2, temporal_patch_size=2, min_pixels=side * side, max_pixels=64 * 64)


def qwen2_5_vl() -> Parts:
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    tok = _qwen_tokenizer(vision=True)
    rope = {"rope_type": "default", "rope_theta": 1e6, "mrope_section": MROPE_SECTION}
    config = Qwen2_5_VLConfig(
        text_config=_text(tok, rope_parameters=rope),
        vision_config={
            "depth": VISION["layers"],
            "hidden_size": VISION["hidden"],
            "intermediate_size": VISION["ffn"],
            "num_heads": VISION["heads"],
            "out_hidden_size": HIDDEN,
            "patch_size": PATCH,
            "window_size": 4 * PATCH,  # windowed attention over 2x2 merged tokens
            "fullatt_block_indexes": [1],
        },
        **_vision_ids(tok),
    )
    processor = Qwen2_5_VLProcessor(
        image_processor=_image_processor(Qwen2VLImageProcessor),
        tokenizer=tok,
        video_processor=_image_processor(Qwen2VLVideoProcessor),
        chat_template=templates.QWEN2_VL,
    )
    return Parts(config, Qwen2_5_VLForConditionalGeneration, processor, tok, "<|im_end|>", "<|endoftext|>")


def qwen3_vl() -> Parts:
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = _qwen_tokenizer(vision=True)
    rope = {"rope_type": "default", "rope_theta": 5e6, "mrope_section": MROPE_SECTION, "mrope_interleaved": True}
    config = Qwen3VLConfig(
        text_config=_text(tok, head_dim=HEAD_DIM, rope_parameters=rope),
        vision_config={
            "depth": VISION["layers"],
            "hidden_size": VISION["hidden"],
            "intermediate_size": VISION["ffn"],
            "num_heads": VISION["heads"],
            "out_hidden_size": HIDDEN,
            "patch_size": PATCH,
            "num_position_embeddings": 64,  # an 8x8 grid of learned positions, interpolated
            "deepstack_visual_indexes": [0],  # features fed into the first text layers
        },
        **_vision_ids(tok),
    )
    processor = Qwen3VLProcessor(
        image_processor=_image_processor(Qwen2VLImageProcessor),
        tokenizer=tok,
        video_processor=_image_processor(Qwen3VLVideoProcessor),
        chat_template=templates.QWEN3_VL,
    )
    return Parts(config, Qwen3VLForConditionalGeneration, processor, tok, "<|im_end|>", "<|endoftext|>")


def qwen3() -> Parts:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tok = _qwen_tokenizer(vision=False)
    tok.chat_template = templates.QWEN3
    config = Qwen3Config(**_text(tok, head_dim=HEAD_DIM))
    return Parts(config, Qwen3ForCausalLM, tok, tok, "<|im_end|>", "<|endoftext|>")
