"""A small byte-level BPE tokenizer carrying one family's special tokens, trained offline."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import Any

from workers.demo_model import _corpus as corpus  # the demo model's deterministic word corpus

VOCAB_SIZE = 1024


@lru_cache(maxsize=1)
def _base_model() -> str:
    """BPE vocabulary and merges (serialized), trained once per process, the same for every family."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tok.train_from_iterator(corpus(), trainer)
    return str(tok.to_str())


def train_tokenizer(
    specials: Sequence[str],
    *,
    bos: str | None,
    eos: str,
    pad: str,
    named: Mapping[str, str] | None = None,
    max_length: int = 8192,
) -> Any:
    """A fast tokenizer: the shared BPE vocabulary plus `specials` (added as special tokens, in
    order, after it) and `named` special tokens exposed as attributes (`image_token`, ...)."""
    from tokenizers import AddedToken, Tokenizer, decoders
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer.from_str(_base_model())
    tok.decoder = decoders.ByteLevel()
    every = list(dict.fromkeys([*specials, *(named or {}).values(), eos, pad, *([bos] if bos else [])]))
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in every])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        extra_special_tokens=dict(named or {}),
        model_max_length=max_length,
    )
