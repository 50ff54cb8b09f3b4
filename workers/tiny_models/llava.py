"""LLaVA-OneVision (SigLIP + Qwen2, anyres tiles) and LLaVA-NeXT (CLIP + Mistral, anyres tiles)."""

from __future__ import annotations

from workers.tiny_models import templates
from workers.tiny_models.common import IMAGE_SIDE, PATCH, text_config, vit_config
from workers.tiny_models.qwen import QWEN_SPECIALS
from workers.tiny_models.spec import Parts
from workers.tiny_models.tokenizer import train_tokenizer

# anyres: an image is resized to the best of these (h, w) canvases and cut into 32 px tiles.
GRID_PINPOINTS = [[32, 32], [32, 64], [64, 32], [64, 64]]
TILE_TOKENS = (IMAGE_SIDE // PATCH) ** 2


def llava_onevision() -> Parts:
    from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, LlavaOnevisionProcessor
    from transformers.models.llava_onevision.image_processing_llava_onevision import LlavaOnevisionImageProcessor
    from transformers.models.llava_onevision.video_processing_llava_onevision import LlavaOnevisionVideoProcessor

    named = {"image_token": "<image>", "video_token": "<video>"}
    tok = train_tokenizer(QWEN_SPECIALS, bos=None, eos="<|im_end|>", pad="<|endoftext|>", named=named)
    ids = tok.convert_tokens_to_ids
    config = LlavaOnevisionConfig(
        text_config=text_config(tok, "<|im_end|>", "<|endoftext|>", model_type="qwen2"),
        vision_config=vit_config(model_type="siglip_vision_model"),
        image_token_index=ids("<image>"),
        video_token_index=ids("<video>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_select_strategy="full",
    )
    side = {"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    processor = LlavaOnevisionProcessor(
        image_processor=LlavaOnevisionImageProcessor(size=side, image_grid_pinpoints=GRID_PINPOINTS),
        tokenizer=tok,
        video_processor=LlavaOnevisionVideoProcessor(size=side),
        num_image_tokens=TILE_TOKENS,
        vision_feature_select_strategy="full",
        chat_template=templates.LLAVA_ONEVISION,
    )
    return Parts(config, LlavaOnevisionForConditionalGeneration, processor, tok, "<|im_end|>", "<|endoftext|>")


def llava_next() -> Parts:
    from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextProcessor
    from transformers.models.llava_next.image_processing_llava_next import LlavaNextImageProcessor

    tok = train_tokenizer(
        ["<unk>", "<s>", "</s>"], bos="<s>", eos="</s>", pad="<unk>", named={"image_token": "<image>"}
    )
    config = LlavaNextConfig(
        text_config=text_config(tok, "</s>", "<unk>", "<s>", model_type="mistral", sliding_window=None),
        vision_config=vit_config(model_type="clip_vision_model"),
        image_token_index=tok.convert_tokens_to_ids("<image>"),
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_select_strategy="default",
    )
    image_processor = LlavaNextImageProcessor(
        size={"shortest_edge": IMAGE_SIDE},
        crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=templates.LLAVA_NEXT,
    )
    return Parts(config, LlavaNextForConditionalGeneration, processor, tok, "</s>", "<unk>", "<s>")
