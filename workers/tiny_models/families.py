"""The families of the matrix and the README's supported-models table, in the table's order."""

from __future__ import annotations

from workers.tiny_models import gemma, glm, idefics, internvl, llama, llava, mistral, qwen
from workers.tiny_models.spec import Family

_ALL = [
    Family("qwen2_5_vl", "Qwen2.5-VL", "Qwen2_5_VLForConditionalGeneration", qwen.qwen2_5_vl),
    Family("qwen3_vl", "Qwen3-VL", "Qwen3VLForConditionalGeneration", qwen.qwen3_vl),
    Family("gemma3", "Gemma 3", "Gemma3ForConditionalGeneration", gemma.gemma3),
    Family(
        "idefics3",
        "Idefics3 / SmolVLM",
        "Idefics3ForConditionalGeneration",
        idefics.idefics3,
        notes="SmolVLM2 checkpoints (model type `smolvlm`) share this architecture; their processor needs "
        "`num2words` (installed with the worker extra) and is not in the matrix itself",
    ),
    Family("llava_onevision", "LLaVA-OneVision", "LlavaOnevisionForConditionalGeneration", llava.llava_onevision),
    Family("llava_next", "LLaVA-NeXT", "LlavaNextForConditionalGeneration", llava.llava_next),
    Family(
        "mllama",
        "Llama 3.2 Vision (Mllama)",
        "MllamaForConditionalGeneration",
        llama.mllama,
        notes="rows with images and rows without run as two generate calls (cross-attention inputs are per "
        "batch row, as with Mllama's own processor)",
        generate_calls=2,
    ),
    Family("mistral3", "Mistral 3 / Pixtral", "Mistral3ForConditionalGeneration", mistral.mistral3),
    Family("internvl", "InternVL 3", "InternVLForConditionalGeneration", internvl.internvl),
    Family("glm4v", "GLM-4.1V", "Glm4vForConditionalGeneration", glm.glm4v),
    Family(
        "paligemma",
        "PaliGemma",
        "PaliGemmaForConditionalGeneration",
        gemma.paligemma,
        limits={"text": "every request needs an image (400 image_required)"},
        notes="no chat template: the prompt is the text of the turns (task prefixes such as `caption en`); "
        "the processor puts the images before it",
    ),
    Family("llama", "Llama 3 (text)", "LlamaForCausalLM", llama.llama, images=False),
    Family("qwen3", "Qwen3 (text)", "Qwen3ForCausalLM", qwen.qwen3, images=False),
]
FAMILIES = {f.key: f for f in _ALL}
