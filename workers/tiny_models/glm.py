"""GLM-4.1V: a Qwen2-VL-like vision tower (flattened patches, (t, h, w) grid) and M-RoPE text."""

from __future__ import annotations

from workers.tiny_models import templates
from workers.tiny_models.common import text_config
from workers.tiny_models.spec import HIDDEN, VISION, Parts
from workers.tiny_models.tokenizer import train_tokenizer

SPECIALS = [
    "<|endoftext|>",
    "[gMASK]",
    "<sop>",
    "<|system|>",
    "<|user|>",
    "<|assistant|>",
    "<|begin_of_image|>",
    "<|end_of_image|>",
    "<|begin_of_video|>",
    "<|end_of_video|>",
]
PATCH = 8


def glm4v() -> Parts:
    from transformers import Glm4vConfig, Glm4vForConditionalGeneration, Glm4vProcessor
    from transformers.models.glm4v.image_processing_glm4v import Glm4vImageProcessor
    from transformers.models.glm4v.video_processing_glm4v import Glm4vVideoProcessor

    named = {"image_token": "<|image|>", "video_token": "<|video|>"}
    tok = train_tokenizer(SPECIALS, bos=None, eos="<|user|>", pad="<|endoftext|>", named=named)
    ids = tok.convert_tokens_to_ids
    # Half the head is rotary (as in GLM-4.1V); its 4 frequency pairs split into (t, h, w).
    rope = {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5, "mrope_section": [1, 1, 2]}
    text = text_config(tok, "<|user|>", "<|endoftext|>", rope_parameters=rope)
    for key in ("head_dim", "bos_token_id", "eos_token_id"):
        text.pop(key)
    vision = {
        "depth": VISION["layers"],
        "hidden_size": VISION["hidden"],
        "intermediate_size": VISION["ffn"],
        "num_heads": VISION["heads"],
        "out_hidden_size": HIDDEN,
        "image_size": 32,
        "patch_size": PATCH,
    }
    config = Glm4vConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=ids("<|image|>"),
        video_token_id=ids("<|video|>"),
        image_start_token_id=ids("<|begin_of_image|>"),
        image_end_token_id=ids("<|end_of_image|>"),
        video_start_token_id=ids("<|begin_of_video|>"),
        video_end_token_id=ids("<|end_of_video|>"),
    )
    sizes = {"shortest_edge": 16 * 16, "longest_edge": 64 * 64}
    kwargs = {"patch_size": PATCH, "merge_size": 2, "temporal_patch_size": 2, "size": sizes}
    processor = Glm4vProcessor(
        image_processor=Glm4vImageProcessor(**kwargs),
        tokenizer=tok,
        video_processor=Glm4vVideoProcessor(**kwargs),
        chat_template=templates.GLM4V,
    )
    return Parts(config, Glm4vForConditionalGeneration, processor, tok, "<|user|>", "<|endoftext|>")
