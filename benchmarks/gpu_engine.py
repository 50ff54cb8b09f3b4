"""The worker engine on a full-size VLM with random weights, against plain transformers `generate`.

A LLaVA-1.5-7B-shaped model (CLIP ViT-L/14-336 vision tower, 7B Llama text model) is built with
random weights directly on the device in bf16. Speed does not depend on weight values when the
output length is fixed, which min_tokens = max_tokens does. Reported, each next to plain
`model.generate` on the same inputs and to the memory-bandwidth floor (all weight bytes read once
per decoding step): single-stream tokens/s, time to first token with one 1024 px image, and output
tokens/s at batch 1, 8 and 32; the engine with TORCH_COMPILE on and off.

    python -m benchmarks.gpu_engine --device cuda:0 --out benchmarks/gpu_results.md
    python -m benchmarks.gpu_engine --tiny --device cpu          # same code, small model
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import torch
from PIL import Image

from shared.contract import ImagePart, JobPayload, Message, SamplingParams, TextPart
from shared.fleet import ModelCard
from shared.settings_sources import load_settings
from workers.demo_model import CHAT_TEMPLATE, IMAGE_TOKEN, ensure_demo_model
from workers.engine import Engine
from workers.loader import LoadedModel

ROOT = Path(__file__).resolve().parents[1]
# HBM bandwidth in TB/s by device name, for the floor; --bandwidth-tbs overrides.
BANDWIDTH = {"H100": 3.35, "H200": 4.8, "A100": 2.0, "L40S": 0.864}


def configs(tiny: bool, vocab: int, image_token: int) -> Any:
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if tiny:
        vision = CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=336,
            patch_size=14,
        )
        text = LlamaConfig(
            vocab_size=vocab,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=4096,
        )
    else:
        vision = CLIPVisionConfig(
            hidden_size=1024,
            intermediate_size=4096,
            num_hidden_layers=24,
            num_attention_heads=16,
            image_size=336,
            patch_size=14,
            projection_dim=768,
        )
        text = LlamaConfig(
            vocab_size=max(vocab, 32064),
            hidden_size=4096,
            intermediate_size=11008,
            num_hidden_layers=32,
            num_attention_heads=32,
            num_key_value_heads=32,
            max_position_embeddings=4096,
            rms_norm_eps=1e-5,
        )
    return LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )


def build(device: torch.device, tiny: bool, attn: str) -> LoadedModel:
    from transformers import AutoTokenizer, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    demo = ensure_demo_model(ROOT / ".omega" / "bench" / "demo-model")
    tokenizer = AutoTokenizer.from_pretrained(demo)
    image_token = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessorPil(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}),
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    config = configs(tiny, len(tokenizer), image_token)
    config._attn_implementation = attn
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlavaForConditionalGeneration(config).eval()
    finally:
        torch.set_default_dtype(previous)
    eos = [int(tokenizer.eos_token_id)]
    card = ModelCard(
        path=None,
        demo=True,
        dtype=str(dtype),
        attn=attn,
        chat_template=CHAT_TEMPLATE,
        template_kwargs={k: v for k, v in tokenizer.special_tokens_map.items() if isinstance(v, str)},
    )
    return LoadedModel(
        processor, tokenizer, model, device, dtype, attn, True, image_token, eos, int(tokenizer.pad_token_id), card
    )


def job(i: int, tokens: int, image: bool) -> tuple[JobPayload, list[Image.Image]]:
    parts: tuple[Any, ...] = (TextPart(f"Describe picture {i} in detail."),)
    images = []
    if image:
        parts = (ImagePart("bench"), *parts)
        images = [Image.new("RGB", (1024, 768), (i % 255, 90, 160))]
    payload = JobPayload(
        id=f"gpu-{i}",
        messages=(Message("user", parts),),
        params=SamplingParams(max_new_tokens=tokens, min_new_tokens=tokens),
        created_at=time.time(),
    )
    return payload, images


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_of(runs: int, fn: Callable[[], Any], device: torch.device) -> float:
    times = []
    for _ in range(runs):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def plain_generate(
    loaded: LoadedModel, engine: Engine, jobs: list[tuple[JobPayload, list[Image.Image]]], tokens: int
) -> Callable[[], Any]:
    texts = [engine.prompt_text(j) for j, _ in jobs]
    images = [img for _, imgs in jobs for img in imgs] or None
    loaded.processor.tokenizer.padding_side = "left"
    inputs = loaded.processor(text=texts, images=images, return_tensors="pt", padding=True, add_special_tokens=False)
    inputs = {
        k: v.to(loaded.device, dtype=loaded.dtype if v.is_floating_point() else v.dtype) for k, v in inputs.items()
    }

    @torch.inference_mode()
    def call() -> Any:
        return loaded.model.generate(
            **inputs,
            max_new_tokens=tokens,
            min_new_tokens=tokens,
            do_sample=False,
            pad_token_id=loaded.pad_id,
            eos_token_id=loaded.eos_ids,
        )

    return call


def measure(
    loaded: LoadedModel, compiled: bool, tokens: int, batches: list[int], runs: int, max_model_length: int = 4096
) -> dict[str, float]:
    settings = load_settings(
        environ={
            "TORCH_COMPILE": "on" if compiled else "off",
            "MAX_MODEL_LENGTH": str(max_model_length),
            "MAX_INPUT_TOKENS": str(max_model_length - 96),
        }
    )
    engine = Engine(loaded, settings)
    engine.min_fill = 0.0
    engine.warmup()
    device = loaded.device
    out: dict[str, float] = {}
    single = [engine.prepare(*job(0, tokens, image=False))]
    engine.generate(single)  # compile / warm this shape
    out["single_tokens_s"] = tokens / best_of(runs, lambda: engine.generate(single), device)
    with_image = [engine.prepare(*job(1, 1, image=True))]
    engine.generate(with_image)
    out["ttft_image_s"] = best_of(runs, lambda: engine.generate(with_image), device)
    for batch in batches:
        rows = [engine.prepare(*job(i, tokens, image=False)) for i in range(batch)]
        engine.generate(rows)
        out[f"batch{batch}_tokens_s"] = batch * tokens / best_of(runs, lambda rows=rows: engine.generate(rows), device)
    return out


def measure_plain(loaded: LoadedModel, tokens: int, batches: list[int], runs: int) -> dict[str, float]:
    engine = Engine(loaded, load_settings(environ={"TORCH_COMPILE": "off"}))
    device = loaded.device
    out: dict[str, float] = {}
    single = plain_generate(loaded, engine, [job(0, tokens, False)], tokens)
    single()
    out["single_tokens_s"] = tokens / best_of(runs, single, device)
    first = plain_generate(loaded, engine, [job(1, 1, True)], 1)
    first()
    out["ttft_image_s"] = best_of(runs, first, device)
    for batch in batches:
        call = plain_generate(loaded, engine, [job(i, tokens, False) for i in range(batch)], tokens)
        call()
        out[f"batch{batch}_tokens_s"] = batch * tokens / best_of(runs, call, device)
    return out


def report(
    device_name: str,
    loaded: LoadedModel,
    results: dict[str, dict[str, float]],
    floor_ms: float | None,
    tokens: int,
    batches: list[int],
) -> str:
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    lines = [
        f"Measured on **{device_name}** with `python -m benchmarks.gpu_engine` "
        f"({weights / 1e9:.1f} GB of {str(loaded.dtype).removeprefix('torch.')} weights, {tokens} new tokens per row, sdpa attention).",
        "",
        "| | " + " | ".join(results) + " |",
        "|---" * (len(results) + 1) + "|",
    ]
    keys = ["single_tokens_s", "ttft_image_s", *[f"batch{b}_tokens_s" for b in batches]]
    names = {"single_tokens_s": "single stream, tokens/s", "ttft_image_s": "first token with a 1024 px image, ms"}
    for key in keys:
        label = names.get(key, f"batch {key[5:].split('_')[0]}, output tokens/s")
        values = [v[key] * 1000 if key == "ttft_image_s" else v[key] for v in results.values()]
        lines.append(f"| {label} | " + " | ".join(f"{x:.1f}" for x in values) + " |")
    if floor_ms:
        best = max(v["single_tokens_s"] for v in results.values())
        lines += [
            "",
            f"Memory-bandwidth floor: {floor_ms:.2f} ms/token = {1000 / floor_ms:.0f} tokens/s single stream; "
            f"the best single-stream figure is {best / (1000 / floor_ms):.0%} of it.",
        ]
    first = next(iter(results.values()))
    if "batch32_tokens_s" in first:
        lines.append(
            f"Batch 32 vs single stream (engine): {first['batch32_tokens_s'] / first['single_tokens_s']:.1f}x."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda:0")
    parser.add_argument("--tiny", action="store_true", help="a small configuration (smoke test)")
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--batches", default="1,8,32")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--bandwidth-tbs", type=float, default=None, help="HBM bandwidth for the floor")
    parser.add_argument("--out", type=Path, default=None, help="write the markdown section here")
    # The static cache (TORCH_COMPILE=on) is sized to it: a smoke run on the CPU needs only room
    # for the image prompt (577 tokens at 336 px) and the new tokens.
    parser.add_argument("--max-model-length", type=int, default=4096)
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = [int(b) for b in args.batches.split(",")]
    attn = "sdpa"
    loaded = build(device, args.tiny, attn)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    results = {
        "engine, TORCH_COMPILE=on": measure(loaded, True, args.tokens, batches, args.runs, args.max_model_length),
        "engine, TORCH_COMPILE=off": measure(loaded, False, args.tokens, batches, args.runs, args.max_model_length),
        "plain transformers generate": measure_plain(loaded, args.tokens, batches, args.runs),
    }
    bandwidth = args.bandwidth_tbs or next((bw for key, bw in BANDWIDTH.items() if key in name), None)
    weights = sum(p.numel() * p.element_size() for p in loaded.model.parameters())
    floor_ms = weights / (bandwidth * 1e12) * 1000 if bandwidth else None
    text = report(name, loaded, results, floor_ms, args.tokens, batches)
    print(text)
    print(msgspec.json.encode(results).decode())
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
