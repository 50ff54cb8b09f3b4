"""Gemma 3 (sliding-window and global layers, bidirectional image attention) and PaliGemma."""

from __future__ import annotations

from workers.tiny_models import templates
from workers.tiny_models.common import IMAGE_SIDE, PATCH, text_config, vit_config
from workers.tiny_models.spec import HEAD_DIM, Parts
from workers.tiny_models.tokenizer import train_tokenizer

GEMMA_SPECIALS = ["<bos>", "<eos>", "<pad>", "<start_of_turn>", "<end_of_turn>"]
GEMMA3_NAMED = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
TOKENS_PER_IMAGE = 16  # one soft token per patch of the 4x4 grid (the real model pools 64x64 to 16x16)
SLIDING_WINDOW = 12  # shorter than the matrix's prompts, so the local layers really slide


def gemma3() -> Parts:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_gemma3 import Gemma3ImageProcessor

    tok = train_tokenizer(GEMMA_SPECIALS, bos="<bos>", eos="<end_of_turn>", pad="<pad>", named=GEMMA3_NAMED)
    ids = tok.convert_tokens_to_ids
    text = text_config(
        tok,
        "<end_of_turn>",
        "<pad>",
        "<bos>",
        num_hidden_layers=3,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        sliding_window=SLIDING_WINDOW,
        query_pre_attn_scalar=HEAD_DIM,
    )
    config = Gemma3Config(
        text_config=text,
        vision_config=vit_config(),
        mm_tokens_per_image=TOKENS_PER_IMAGE,
        boi_token_index=ids("<start_of_image>"),
        eoi_token_index=ids("<end_of_image>"),
        image_token_index=ids("<image_soft_token>"),
        # Untied (unlike the real checkpoints): with tied random embeddings the largest logit is
        # always the current token, and the tiny model would only ever repeat itself.
        tie_word_embeddings=False,
    )
    image_processor = Gemma3ImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    processor = Gemma3Processor(image_processor, tok, chat_template=templates.GEMMA3, image_seq_length=TOKENS_PER_IMAGE)
    return Parts(config, Gemma3ForConditionalGeneration, processor, tok, "<end_of_turn>", "<pad>", "<bos>")


def paligemma() -> Parts:
    from transformers import PaliGemmaConfig, PaliGemmaForConditionalGeneration, PaliGemmaProcessor
    from transformers.models.siglip.image_processing_siglip import SiglipImageProcessor

    tok = train_tokenizer(GEMMA_SPECIALS, bos="<bos>", eos="<eos>", pad="<pad>", named={"image_token": "<image>"})
    image_processor = SiglipImageProcessor(size={"height": IMAGE_SIDE, "width": IMAGE_SIDE})
    image_processor.image_seq_length = (IMAGE_SIDE // PATCH) ** 2
    # PaliGemma checkpoints ship no chat template: prompts are task prefixes ("caption en").
    processor = PaliGemmaProcessor(image_processor, tok)
    config = PaliGemmaConfig(
        text_config=text_config(tok, "<eos>", "<pad>", "<bos>", model_type="gemma"),
        vision_config=vit_config(projection_dim=64),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        projection_dim=64,
        hidden_size=64,
        tie_word_embeddings=False,  # as for Gemma 3: tied random embeddings only repeat
    )
    return Parts(config, PaliGemmaForConditionalGeneration, processor, tok, "<eos>", "<pad>", "<bos>")
