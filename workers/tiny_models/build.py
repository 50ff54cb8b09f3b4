"""Save a family's tiny model as a standard model folder, deterministically, once per folder."""

from __future__ import annotations

import fcntl
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any

from workers.tiny_models.spec import Family

MARKER = "omega_tiny_model.json"
EOS_SCALE = 1.5


def _shape_logits(model: Any, tokenizer: Any, eos_id: int) -> None:
    """As the demo model does: raw byte tokens rare (the text reads as words), end-of-sequence a
    real candidate (greedy rows end at varied lengths, like a real model's)."""
    import torch

    head = model.get_output_embeddings().weight
    with torch.no_grad():
        for index in range(len(tokenizer)):
            piece = tokenizer.decode([index]).strip()
            if not (piece.isascii() and piece.isprintable() and (len(piece) > 1 or piece.isalpha())):
                head[index] *= 0.2
        head[eos_id] *= EOS_SCALE


def build_family_model(family: Family, out_dir: Path, *, seed: int = 0) -> Path:
    """Write `family`'s tiny model to `out_dir` (atomically: a half-built folder is never left)."""
    import torch
    import transformers

    if not family.available:
        raise ValueError(f"{family.name}: not in transformers {transformers.__version__}")
    parts = family.build()
    torch.manual_seed(seed)
    model = parts.model_class(parts.config).eval()
    tok = parts.tokenizer
    ids = {name: tok.convert_tokens_to_ids(t) for name, t in (("eos", parts.eos), ("pad", parts.pad))}
    _shape_logits(model, tok, ids["eos"])
    generation = model.generation_config
    generation.eos_token_id, generation.pad_token_id = ids["eos"], ids["pad"]
    generation.bos_token_id = tok.convert_tokens_to_ids(parts.bos) if parts.bos else None

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{family.key}-", dir=out_dir.parent))
    try:
        model.save_pretrained(staging)
        parts.processor.save_pretrained(staging)
        marker = {"family": family.key, "seed": seed, "transformers": transformers.__version__}
        (staging / MARKER).write_text(json.dumps(marker, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def ensure_family_model(family: Family, root: Path) -> Path:
    """`root/<family key>`, built unless a complete one is there (one builder at a time)."""
    out_dir = Path(root) / family.key
    if (out_dir / MARKER).is_file():
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with open(out_dir.parent / f".{family.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (out_dir / MARKER).is_file():
            return out_dir
        return build_family_model(family, out_dir)


def main(argv: list[str] | None = None) -> int:
    """`python -m workers.tiny_models.build FAMILY OUT_DIR`: a model folder to serve or benchmark."""
    import argparse

    from workers.tiny_models.families import FAMILIES

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("family", choices=sorted(FAMILIES))
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(build_family_model(FAMILIES[args.family], args.out_dir, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
