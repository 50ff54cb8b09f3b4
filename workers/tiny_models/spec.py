"""What a family is in the matrix: how to build its tiny model, and what it is declared to do."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# The checks of the matrix, in the README table's order.
CAPABILITIES = ("text", "image", "multi-image", "batched", "stream")

# Shared sizes: small enough for a 2-core CPU, large enough to keep every structure.
HIDDEN = 64
HEADS = 4
KV_HEADS = 2
HEAD_DIM = HIDDEN // HEADS
FFN = 128
VISION = {"hidden": 32, "ffn": 64, "heads": 2, "layers": 2}
# Larger than the usual 0.02 so that logits are peaked: greedy and seeded rows are stable and
# end at different lengths, as with a real model (the demo model does the same).
INIT_RANGE = 0.3


@dataclass(frozen=True)
class Parts:
    """The pieces of one model folder, before saving."""

    config: Any
    model_class: Any
    processor: Any  # a ProcessorMixin, or the tokenizer for a text-only family
    tokenizer: Any
    eos: str
    pad: str
    bos: str | None = None


@dataclass(frozen=True)
class Family:
    key: str  # the transformers model type, e.g. "qwen2_5_vl"
    name: str  # as users know it
    architecture: str  # the HF architecture class in config.json
    build: Callable[[], Parts]
    images: bool = True
    # capability -> why it is not supported (the matrix asserts the declared behaviour).
    limits: Mapping[str, str] = field(default_factory=dict)
    notes: str = ""
    # Generate calls the matrix's mixed micro-batch (rows with and without images, of several
    # sizes) takes: 1 when every row shares one call (the matrix asserts the number).
    generate_calls: int = 1

    @property
    def available(self) -> bool:
        """Whether the installed transformers has this model type."""
        import importlib.util

        return importlib.util.find_spec(f"transformers.models.{self.key}") is not None

    def supports(self, capability: str) -> bool:
        if capability in ("image", "multi-image") and not self.images:
            return False
        return capability not in self.limits
