"""Generate the embedded demo model: a tiny, randomly initialised LLaVA-family VLM.

It exists so that the whole service runs on a laptop with no GPU, no network and no weights:
a CLIP vision tower, a Llama text model and a byte-level BPE tokenizer trained here on a small
built-in corpus, saved in the standard Hugging Face layout so it loads through exactly the same
`AutoProcessor` / `AutoModelForImageTextToText` path as a real model. Its output is meaningless.
Everything is seeded, so two builds produce the same weights and the same text for a seeded
request. It needs neither torchvision nor a download.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

DEMO_MARKER = "omega_demo_model.json"
IMAGE_TOKEN = "<image>"
IMAGE_SIDE = 32
PATCH = 8
EOS_SCALE = 1.5

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}SYSTEM: "
    "{% elif message['role'] == 'user' %}USER: "
    "{% else %}ASSISTANT: {% endif %}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{{ '\\n' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{% if message['role'] == 'assistant' %}{{ eos_token }}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

_WORDS = (
    "a an the this that of in on at with and or under over near beside behind front top "
    "photo picture image painting drawing scene view close up shot of "
    "dog cat bird horse cow sheep person man woman child people group car bus truck bicycle "
    "train boat plane street road city building house tree flower grass field mountain river "
    "lake sea beach sky cloud sun moon snow rain table chair bed window door wall floor room "
    "kitchen food plate cup bottle book phone computer screen sign light shadow water rock "
    "red green blue yellow orange purple pink brown black white gray dark bright small large "
    "big little old young tall short long round square wooden metal glass soft sharp blurry "
    "is are was were sitting standing walking running lying flying holding looking playing "
    "eating wearing riding parked covered filled surrounded shows contains appears there here "
    "describe detail details what where who how many color colors object objects background "
    "foreground left right center middle corner edge one two three several many some each "
    "very quite slightly mostly clearly probably likely visible "
)


def _corpus() -> list[str]:
    words = _WORDS.split()
    lines = []
    # Deterministic pseudo-sentences: enough structure for BPE merges of whole words.
    for i in range(4000):
        n = 6 + (i * 7) % 9
        lines.append(" ".join(words[(i * 31 + j * 17) % len(words)] for j in range(n)) + ".")
    lines.extend([_WORDS] * 20)
    return lines


def _build_tokenizer(vocab_size: int):  # type: ignore[no-untyped-def]
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
        model_max_length=8192,
    )


def build_demo_model(out_dir: Path, *, seed: int = 0, vocab_size: int = 2048) -> Path:
    """Write the demo model to `out_dir` (atomically: a half-built folder is never left there)."""
    import torch
    import transformers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    tokenizer = _build_tokenizer(vocab_size)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": IMAGE_SIDE}, crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=PATCH,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,  # CLIP's CLS token, dropped by the "default" strategy
        chat_template=CHAT_TEMPLATE,
    )
    ids = {name: tokenizer.convert_tokens_to_ids(name) for name in ("<s>", "</s>", "<pad>", IMAGE_TOKEN)}
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=IMAGE_SIDE,
        patch_size=PATCH,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=8192,
        bos_token_id=ids["<s>"],
        eos_token_id=ids["</s>"],
        pad_token_id=ids["<pad>"],
        # Larger than the usual 0.02 so that logits are peaked: seeded runs are stable and
        # greedy rows end at different lengths, like a real model's would.
        initializer_range=0.3,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids[IMAGE_TOKEN],
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config).eval()
    with torch.no_grad():
        head = model.get_output_embeddings().weight
        # Raw byte tokens decode to mojibake; make them rare so the (meaningless) output at
        # least reads as words.
        for index in range(len(tokenizer)):
            piece = tokenizer.decode([index]).strip()
            if not (piece.isascii() and piece.isprintable() and (len(piece) > 1 or piece.isalpha())):
                head[index] *= 0.2
        # Make end-of-sequence a real candidate so rows finish with "stop" at varied lengths.
        head[ids["</s>"]] *= EOS_SCALE
    generation = model.generation_config
    generation.bos_token_id, generation.eos_token_id, generation.pad_token_id = (
        ids["<s>"],
        ids["</s>"],
        ids["<pad>"],
    )

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".demo-model-", dir=out_dir.parent))
    staging.chmod(0o755)
    try:
        model.save_pretrained(staging)
        processor.save_pretrained(staging)
        (staging / DEMO_MARKER).write_text(
            json.dumps(
                {
                    "demo": True,
                    "seed": seed,
                    "transformers": transformers.__version__,
                    "note": "random weights: output is meaningless",
                },
                indent=2,
            )
        )
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def is_demo_model(path: Path) -> bool:
    return (Path(path) / DEMO_MARKER).is_file()


def _complete(out_dir: Path) -> bool:
    return is_demo_model(out_dir) and (out_dir / "config.json").is_file()


def ensure_demo_model(out_dir: Path, on_build: Callable[[], None] | None = None) -> Path:
    """Build the demo model unless a complete one is already there (one builder at a time);
    `on_build` is called when this call is the one that builds it."""
    import fcntl

    out_dir = Path(out_dir)
    if _complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{out_dir.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # several workers may start at once
        if _complete(out_dir):
            return out_dir
        if on_build is not None:
            on_build()
        return build_demo_model(out_dir)
