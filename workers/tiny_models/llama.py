"""Llama 3.2 Vision (Mllama: a tiled vision encoder read through cross-attention layers) and Llama 3."""

from __future__ import annotations

from typing import Any

from workers.tiny_models import templates
from workers.tiny_models.common import IMAGE_SIDE, PATCH, text_config
from workers.tiny_models.spec import VISION, Parts
from workers.tiny_models.tokenizer import train_tokenizer

LLAMA3_SPECIALS = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
    "<|finetune_right_pad_id|>",
    "<|python_tag|>",
]
MAX_TILES = 4


def _llama3_tokenizer(image: bool) -> Any:
    named = {"image_token": "<|image|>"} if image else {}
    return train_tokenizer(
        LLAMA3_SPECIALS, bos="<|begin_of_text|>", eos="<|eot_id|>", pad="<|finetune_right_pad_id|>", named=named
    )


def mllama() -> Parts:
    from transformers import MllamaConfig, MllamaForConditionalGeneration, MllamaProcessor
    from transformers.models.mllama.image_processing_mllama import MllamaImageProcessor

    tok = _llama3_tokenizer(image=True)
    vision = {
        "hidden_size": VISION["hidden"],
        "intermediate_size": VISION["ffn"],
        "num_hidden_layers": VISION["layers"],
        "num_global_layers": 1,
        "attention_heads": VISION["heads"],
        "image_size": IMAGE_SIDE,
        "patch_size": PATCH,
        "max_num_tiles": MAX_TILES,
        "intermediate_layers_indices": [0],
        "vision_output_dim": VISION["hidden"] * 2,  # last layer + one intermediate layer
    }
    # Layer 1 of 3 is a cross-attention layer: text attends to the image tiles only there.
    text = text_config(
        tok,
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        "<|begin_of_text|>",
        num_hidden_layers=3,
        cross_attention_layers=[1],
    )
    text.pop("head_dim")
    config = MllamaConfig(
        vision_config=vision, text_config=text, image_token_index=tok.convert_tokens_to_ids("<|image|>")
    )
    image_processor = MllamaImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}, max_image_tiles=MAX_TILES)
    processor = MllamaProcessor(image_processor, tok, chat_template=templates.LLAMA3)
    return Parts(
        config,
        MllamaForConditionalGeneration,
        processor,
        tok,
        "<|eot_id|>",
        "<|finetune_right_pad_id|>",
        "<|begin_of_text|>",
    )


def llama() -> Parts:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _llama3_tokenizer(image=False)
    tok.chat_template = templates.LLAMA3
    config = LlamaConfig(**text_config(tok, "<|eot_id|>", "<|finetune_right_pad_id|>", "<|begin_of_text|>"))
    return Parts(config, LlamaForCausalLM, tok, tok, "<|eot_id|>", "<|finetune_right_pad_id|>", "<|begin_of_text|>")
