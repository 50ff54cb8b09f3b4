"""Mistral 3 (Mistral Small 3.1): a Pixtral vision tower at native resolution, 2x2 patch merging."""

from __future__ import annotations

from workers.tiny_models import templates
from workers.tiny_models.common import PATCH, text_config
from workers.tiny_models.spec import VISION, Parts
from workers.tiny_models.tokenizer import train_tokenizer

SPECIALS = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[IMG_BREAK]",
    "[IMG_END]",
]
MERGE = 2


def mistral3() -> Parts:
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration, PixtralProcessor
    from transformers.models.pixtral.image_processing_pixtral import PixtralImageProcessor

    tok = train_tokenizer(SPECIALS, bos="<s>", eos="</s>", pad="<unk>", named={"image_token": "[IMG]"})
    vision = {
        "model_type": "pixtral",
        "hidden_size": VISION["hidden"],
        "intermediate_size": VISION["ffn"],
        "num_hidden_layers": VISION["layers"],
        "num_attention_heads": VISION["heads"],
        "image_size": 64,
        "patch_size": PATCH,
        "head_dim": VISION["hidden"] // VISION["heads"],
    }
    config = Mistral3Config(
        text_config=text_config(tok, "</s>", "<unk>", "<s>", model_type="mistral", sliding_window=None),
        vision_config=vision,
        image_token_index=tok.convert_tokens_to_ids("[IMG]"),
        spatial_merge_size=MERGE,
        vision_feature_layer=-1,
    )
    image_processor = PixtralImageProcessor(size={"longest_edge": 64}, patch_size={"height": PATCH, "width": PATCH})
    processor = PixtralProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=PATCH,
        spatial_merge_size=MERGE,
        chat_template=templates.MISTRAL3,
    )
    return Parts(config, Mistral3ForConditionalGeneration, processor, tok, "</s>", "<unk>", "<s>")
