"""InternVL 3: InternViT tiles (dynamic crops + a thumbnail), pixel-shuffled, a Qwen2 decoder."""

from __future__ import annotations

from workers.tiny_models import templates
from workers.tiny_models.common import IMAGE_SIDE, PATCH, text_config
from workers.tiny_models.qwen import QWEN_SPECIALS
from workers.tiny_models.spec import VISION, Parts
from workers.tiny_models.tokenizer import train_tokenizer

NAMED = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}


def internvl() -> Parts:
    from transformers import InternVLConfig, InternVLForConditionalGeneration, InternVLProcessor
    from transformers.models.got_ocr2.image_processing_got_ocr2 import GotOcr2ImageProcessor
    from transformers.models.internvl.video_processing_internvl import InternVLVideoProcessor

    tok = train_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", named=NAMED)
    vision = {
        "hidden_size": VISION["hidden"],
        "intermediate_size": VISION["ffn"],
        "num_hidden_layers": VISION["layers"],
        "num_attention_heads": VISION["heads"],
        "image_size": [IMAGE_SIDE, IMAGE_SIDE],
        "patch_size": [PATCH, PATCH],
    }
    config = InternVLConfig(
        text_config=text_config(tok, "<|im_end|>", "<|endoftext|>", model_type="qwen2"),
        vision_config=vision,
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"),
        image_seq_length=(IMAGE_SIDE // PATCH) ** 2 // 4,
        downsample_ratio=0.5,
    )
    side = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    processor = InternVLProcessor(
        image_processor=GotOcr2ImageProcessor(size=side, crop_to_patches=True, min_patches=1, max_patches=4),
        tokenizer=tok,
        video_processor=InternVLVideoProcessor(size=side),
        image_seq_length=config.image_seq_length,
        chat_template=templates.INTERNVL,
    )
    return Parts(config, InternVLForConditionalGeneration, processor, tok, "<|im_end|>", "<|endoftext|>")
