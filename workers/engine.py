"""Generation as a function of a batch: prepare rows, run one `generate` per compatible group.

`prepare` turns one job (+ its decoded images) into a `PreparedRow`: the prompt rendered by the
shared template, processed, left-truncated to MAX_INPUT_TOKENS (never through an image), its
new-token budget clamped to MAX_MODEL_LENGTH. A job that cannot run raises a ServiceError from
here and fails alone. `generate` returns one `RowOutput` per row, in order.
"""

from __future__ import annotations

import copy
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from shared.contract import FinishReason, JobPayload, SamplingParams, TextPart
from shared.errors import InvalidRequest
from shared.prompt import refuse_long_prompt, render_prompt, text_chars
from shared.settings import Settings
from workers import progress
from workers.batch import MIN_FILL, PreparedRow, collate, plan_groups
from workers.loader import LoadedModel
from workers.sampling import RowPlan, RowSampler, RowStopper
from workers.streaming import DeltaPublisher, DeltaTracker

log = logging.getLogger("omega.worker.engine")


# Image inputs that hold one entry per batch row rather than per image (Mllama's pixel values are
# [row, image, tile, ...] and its cross-attention layers index them by row): rows with such inputs
# batch only with other rows that have images (as with Mllama's own processor).
PER_ROW_IMAGE_INPUTS = frozenset({"aspect_ratio_ids"})
PER_ROW_IMAGES = "per-row images"

# Families whose processors zero-pad pixel tensors to the largest image of a batch, and whose
# models then read each image's real extent (image_sizes: LLaVA-NeXT/OneVision keep an image's
# own tiles, Pixtral crops its patch grid), drop all-zero tiles (Idefics3), or mask padded images
# and tiles out of cross-attention (Mllama): rows with images of different sizes and counts share
# one generate call when padded the same way.
PADDED_PIXELS: dict[str, tuple[str, ...]] = {
    "llava_next": ("pixel_values",),
    "llava_onevision": ("pixel_values",),
    "idefics3": ("pixel_values", "pixel_attention_mask"),
    "smolvlm": ("pixel_values", "pixel_attention_mask"),
    "mistral3": ("pixel_values",),
    "mllama": ("pixel_values", "aspect_ratio_ids", "aspect_ratio_mask"),
}


@dataclass(frozen=True)
class RowOutput:
    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    truncated_prompt_tokens: int
    seed: int | None  # the seed a sampled row used (drawn when the job gave none); None if greedy
    first_token_seconds: float | None


@dataclass(frozen=True)
class Tools:
    processor: Any
    tokenizer: Any


class Engine:
    def __init__(self, loaded: LoadedModel, settings: Settings, publisher: DeltaPublisher | None = None) -> None:
        self.m = loaded
        self.settings = settings
        self.publisher = publisher  # where streaming rows' text goes as it is generated
        self.generate_calls = 0  # observable proof of micro-batching (tests, metrics)
        self.min_fill = MIN_FILL
        mode = settings.torch_compile
        self.compiled = mode == "on" or (mode == "auto" and loaded.device.type == "cuda")

    # --- preparing one row ---------------------------------------------------------------
    def prompt_text(self, job: JobPayload) -> str:
        if job.kind == "generate":
            return job.prompt or ""
        card = self.m.card
        return render_prompt(card.chat_template, card.template_kwargs, job.messages)

    def private_tools(self) -> Tools:
        """A processor and tokenizer of one's own, for preparing rows on another thread: the
        tokenizer keeps per-call state and the decoding loop uses the model's own."""
        processor = copy.deepcopy(self.m.processor)
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is None:  # a text-only model's "processor" may be its tokenizer
            tokenizer = copy.deepcopy(self.m.tokenizer)
        return Tools(processor, tokenizer)

    def _encode(
        self, job: JobPayload, images: Sequence[Image.Image], tools: Tools | None = None
    ) -> dict[str, torch.Tensor]:
        text = self.prompt_text(job)
        processor, tokenizer = (tools.processor, tools.tokenizer) if tools else (self.m.processor, self.m.tokenizer)
        # Chat templates write BOS themselves; a raw /generate prompt gets the tokenizer's usual
        # special tokens, as TGI does.
        add_special = job.kind == "generate"
        if not self.m.supports_images:
            return dict(tokenizer([text], return_tensors="pt", add_special_tokens=add_special))
        try:
            return dict(
                # One list of images per prompt: the unambiguous form (a flat list of two images
                # reads as one image per prompt to PaliGemma's processor).
                processor(
                    text=[text],
                    images=[list(images)] if images else None,
                    return_tensors="pt",
                    add_special_tokens=add_special,
                )
            )
        except ValueError as exc:
            log.info("processor rejected job %s: %s", job.id, exc)
            if not images and "expected" in str(exc):  # PaliGemma: every prompt needs an image
                raise InvalidRequest(
                    "this model needs at least one image in every request", param="messages", code="image_required"
                ) from None
            raise InvalidRequest(
                "the prompt's image placeholders do not match its images "
                "(the text may contain the model's image token)",
                param="messages",
            ) from None

    def prepare(self, job: JobPayload, images: Sequence[Image.Image], tools: Tools | None = None) -> PreparedRow:
        """`tools`: another thread's own processor and tokenizer (see private_tools)."""
        if images and not self.m.supports_images:
            raise InvalidRequest("this model does not accept images", param="messages", code="images_not_supported")
        # Before rendering: a huge prompt (an older API, a batch line) costs nothing but this sum.
        if job.kind == "generate":
            refuse_long_prompt(len(job.prompt or ""), self.settings.input_char_limit, "inputs")
        else:
            refuse_long_prompt(text_chars(job.messages), self.settings.input_char_limit, "messages")
        encoded = self._encode(job, images, tools)
        input_ids = encoded.pop("input_ids")[0]
        encoded.pop("attention_mask", None)
        length = int(input_ids.shape[0])
        # Per-token tensors: [1, tokens] (token types) or more dimensions (Mllama's cross-attention
        # mask: token x image x tile); kept as [tokens, ...].
        seq_extras = {k: v[0] for k, v in encoded.items() if v.dim() >= 2 and v.shape[:2] == (1, length)}
        image_extras = {k: v for k, v in encoded.items() if k not in seq_extras and isinstance(v, torch.Tensor)}
        cut = self._truncation(input_ids)
        if cut:
            input_ids = input_ids[cut:]
            seq_extras = {k: v[cut:] for k, v in seq_extras.items()}
        return PreparedRow(
            job,
            input_ids,
            self._plan(job, int(input_ids.shape[0])),
            seq_extras,
            image_extras,
            truncated_tokens=cut,
            pixels=sum(image.width * image.height for image in images),
            layout=PER_ROW_IMAGES if PER_ROW_IMAGE_INPUTS & image_extras.keys() else "",
            paddable=PADDED_PIXELS.get(self.m.model.config.model_type, ()),
        )

    def _truncation(self, input_ids: torch.Tensor) -> int:
        """Tokens to drop from the left so the prompt fits; a 400 if that would cut an image."""
        limit = self.settings.input_token_limit
        excess = int(input_ids.shape[0]) - limit
        if excess <= 0:
            return 0
        if self.m.image_token_id is not None:
            positions = (input_ids == self.m.image_token_id).nonzero()
            if positions.numel() and int(positions[0]) < excess:
                raise InvalidRequest(
                    f"the prompt's images need more than the {limit} input tokens allowed "
                    "(MAX_INPUT_TOKENS / MAX_MODEL_LENGTH); send fewer or smaller images",
                    param="messages",
                    code="context_length_exceeded",
                )
        return excess

    def _plan(self, job: JobPayload, prompt_tokens: int) -> RowPlan:
        params = job.params
        room = self.settings.max_model_length - prompt_tokens
        sampled = params.do_sample and params.temperature > 0
        seed = params.seed if params.seed is not None else (secrets.randbits(31) if sampled else 0)
        tracker = DeltaTracker(params.stop, self.m.eos_ids, self._decode_raw) if job.stream else None
        return RowPlan(
            params=params,
            max_new_tokens=max(1, min(params.max_new_tokens, room)),
            seed=seed,
            job_id=job.id,
            tracker=tracker,
        )

    # --- generating a batch --------------------------------------------------------------
    def generate(self, rows: Sequence[PreparedRow]) -> list[RowOutput]:
        results: dict[int, RowOutput] = {}
        s = self.settings
        progress.beat()  # the loop has work from here (each step beats: RowStopper) until it rests
        try:
            self.stall_if_asked(rows)
            for group in plan_groups(rows, s.max_batch_tokens, s.max_batch_pixels, self.min_fill):
                for row, output in zip(group, self._generate_group(group), strict=True):
                    results[id(row)] = output
        finally:
            progress.rest()
        return [results[id(r)] for r in rows]

    def stall_if_asked(self, rows: Sequence[PreparedRow]) -> None:
        """Testing only (FAULT_STALL_MARKER): a decoding loop that stops advancing, for a while."""
        marker = self.settings.fault_stall_marker
        texts = (p.text for r in rows for m in r.job.messages for p in m.content if isinstance(p, TextPart))
        if marker and any(marker in t for t in texts):
            log.error("FAULT_STALL_MARKER found in a job: stalling the decoding loop (fault-injection test)")
            time.sleep(2 * self.settings.worker_stall_s)

    @torch.inference_mode()
    def _generate_group(self, rows: Sequence[PreparedRow]) -> list[RowOutput]:
        from transformers import LogitsProcessorList, StoppingCriteriaList

        m = self.m
        batch = collate(rows, m.pad_id, m.device, m.dtype)
        plans = [r.plan for r in rows]
        sampler = RowSampler(plans, batch.prompt_width, batch.pad_lengths, m.eos_ids, m.device)
        on_delta = self.publisher.publish if self.publisher is not None else None
        stopper = RowStopper(plans, batch.prompt_width, self._decode_raw, m.device, on_delta)
        config = self._generation_config(plans)
        started = time.perf_counter()
        sequences = m.model.generate(
            **batch.inputs,
            generation_config=config,
            logits_processor=LogitsProcessorList([sampler]),
            stopping_criteria=StoppingCriteriaList([stopper]),
        )
        self.generate_calls += 1
        generated = sequences[:, batch.prompt_width :].tolist()
        return [self._finish(row, tokens, started) for row, tokens in zip(rows, generated, strict=True)]

    def _generation_config(self, plans: Sequence[RowPlan]) -> Any:
        from transformers import CompileConfig, GenerationConfig

        config = GenerationConfig(
            max_new_tokens=max(p.max_new_tokens for p in plans),
            do_sample=False,
            num_beams=1,
            eos_token_id=self.m.eos_ids,
            pad_token_id=self.m.pad_id,
        )
        if self.compiled:
            # A static cache makes the decode step's shapes fixed, so transformers compiles it
            # (CUDA graphs) once per batch shape and replays it.
            config.cache_implementation = "static"
            config.compile_config = CompileConfig(mode="reduce-overhead")
        return config

    def _decode_raw(self, tokens: list[int]) -> str:
        return str(self.m.tokenizer.decode(tokens, skip_special_tokens=True))

    def _finish(self, row: PreparedRow, tokens: list[int], started: float) -> RowOutput:
        plan = row.plan
        end = min(plan.max_new_tokens, plan.stop_step or plan.max_new_tokens, len(tokens))
        reason: FinishReason = "length"
        eos = set(self.m.eos_ids)
        for index, token in enumerate(tokens[:end]):
            if token in eos:
                end, reason = index + 1, "stop"
                break
        kept = tokens[:end]
        text = self._decode_raw([t for t in kept if t not in eos])
        if plan.params.stop:
            cuts = [i for i in (text.find(s) for s in plan.params.stop) if i >= 0]
            if cuts:
                text, reason = text[: min(cuts)], "stop"
        if plan.tracker is not None and self.publisher is not None and plan.cancel_step is None:
            self.publisher.publish(plan.job_id, plan.tracker.finish(text))
        first = plan.first_token_at - started if plan.first_token_at is not None else None
        seed = plan.seed if plan.params.seed is not None or plan.sampled else None
        return RowOutput(text, reason, row.prompt_tokens, len(kept), row.truncated_tokens, seed, first)

    # --- warm-up --------------------------------------------------------------------------
    def warmup(self) -> None:
        """One tiny generation so the first real request does not pay for lazy initialisation."""
        from shared.contract import ImagePart, Message

        parts: tuple[Any, ...] = (TextPart("warm-up"),)
        images: list[Image.Image] = []
        if self.m.supports_images:
            parts = (ImagePart("warmup"), TextPart("warm-up"))
            images = [Image.new("RGB", (64, 64), (127, 127, 127))]
        job = JobPayload(
            id="warmup",
            messages=(Message("user", parts),),
            params=SamplingParams(max_new_tokens=2),
            created_at=time.time(),
        )
        try:
            self.generate([self.prepare(job, images)])
        except Exception as exc:
            if not self.compiled:
                raise
            # The compiled path is an optimisation: fall back to the eager one, say so.
            log.warning("torch.compile / static cache failed at warm-up (%s): falling back", exc)
            self.compiled = False
            self.generate([self.prepare(job, images)])
        self.generate_calls = 0
