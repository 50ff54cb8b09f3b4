"""Idefics3 / SmolVLM: SigLIP tiles (image splitting + a global view), pixel-shuffled to few tokens."""

from __future__ import annotations

from workers.tiny_models import templates
from workers.tiny_models.common import IMAGE_SIDE, PATCH, text_config, vit_config
from workers.tiny_models.spec import Parts
from workers.tiny_models.tokenizer import train_tokenizer

SCALE_FACTOR = 2  # pixel shuffle: 4x4 patches -> 2x2 tokens per tile
ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
SPECIALS = [
    "<|im_start|>",
    "<|endoftext|>",
    "<end_of_utterance>",
    "<fake_token_around_image>",
    "<global-img>",
    *ROW_COL,
]


def idefics3() -> Parts:
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration, Idefics3Processor
    from transformers.models.idefics3.image_processing_idefics3 import Idefics3ImageProcessor

    tok = train_tokenizer(
        SPECIALS, bos="<|im_start|>", eos="<end_of_utterance>", pad="<|endoftext|>", named={"image_token": "<image>"}
    )
    config = Idefics3Config(
        text_config=text_config(tok, "<end_of_utterance>", "<|endoftext|>", "<|im_start|>", model_type="llama"),
        vision_config=vit_config(),
        image_token_id=tok.convert_tokens_to_ids("<image>"),
        scale_factor=SCALE_FACTOR,
    )
    image_processor = Idefics3ImageProcessor(
        size={"longest_edge": 2 * IMAGE_SIDE}, max_image_size={"longest_edge": IMAGE_SIDE}, do_image_splitting=True
    )
    seq = (IMAGE_SIDE // PATCH) ** 2 // SCALE_FACTOR**2
    processor = Idefics3Processor(image_processor, tok, image_seq_len=seq, chat_template=templates.IDEFICS3)
    return Parts(
        config, Idefics3ForConditionalGeneration, processor, tok, "<end_of_utterance>", "<|endoftext|>", "<|im_start|>"
    )
