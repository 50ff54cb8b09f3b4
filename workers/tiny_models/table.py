"""The README's supported-models table, generated from the family matrix's declarations.

`python -m workers.tiny_models.table --write` rewrites the "## Supported models" section of
README.md; `--check` (and tests/models/test_supported_models_table.py) fails if it is stale. The
matrix (tests/models/test_family_matrix.py) asserts every cell: a ✅ is a passing check, a 400 is
a check that the request is refused with a 400.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from workers.tiny_models.families import FAMILIES
from workers.tiny_models.spec import CAPABILITIES, Family

HEADING = "## Supported models"
README = Path(__file__).resolve().parents[2] / "README.md"


def _row(family: Family, version: str) -> str:
    if not family.available:
        cells = [f"not in transformers {version}"] * len(CAPABILITIES)
    else:
        cells = ["✅" if family.supports(c) else "400" for c in CAPABILITIES]
    notes = "; ".join(filter(None, [*family.limits.values(), family.notes]))
    return f"| {family.name} | `{family.architecture}` | {' | '.join(cells)} | {notes} |"


def render_section() -> str:
    """The whole section, heading included, ending with a blank line."""
    import transformers

    version = transformers.__version__
    header = f"| Family | HF architecture | {' | '.join(CAPABILITIES)} | Notes |"
    rule = "|" + "---|" * (len(CAPABILITIES) + 3)
    rows = [_row(f, version) for f in FAMILIES.values()]
    intro = (
        f"Checked on transformers {version} by the family matrix (`tests/models/`, part of `make test`):\n"
        "for each family a tiny random-weight model with the family's real config structure, special\n"
        "tokens, chat format and processor class is built offline and served through the worker's own\n"
        "loader, engine and batch runner. ✅: the check passes — text-only and image requests, several\n"
        "images per request, rows of mixed image sizes batched giving the same text as alone (greedy and\n"
        "seeded sampling), streamed deltas equal to the final text. Every family is also checked for\n"
        "`/v1/apply_template` equal to the processor's `apply_chat_template`, left truncation that never\n"
        "cuts an image (a 400 instead), and a load with `ATTN_IMPL=flash_attention_2` falling back to\n"
        "SDPA. 400: the request is refused with a 400 naming the reason. A model type the worker cannot\n"
        "serve at all stops it at start-up with an error naming the type. `make models` runs the matrix\n"
        "alone; `make supported-models` regenerates this table; a test fails when it is stale. To try a\n"
        "family locally: `python -m workers.tiny_models.build qwen2_5_vl /tmp/qwen && MODEL_PATH=/tmp/qwen make run`\n"
        "(a test does exactly this for Qwen2.5-VL on a fresh port and data folder)."
    )
    return "\n".join([HEADING, "", intro, "", header, rule, *rows, ""]) + "\n"


def replace_section(readme: str, section: str) -> str:
    """`readme` with its supported-models section replaced (or added before "## Scaling out")."""
    start = readme.find(HEADING + "\n")
    if start < 0:
        anchor = readme.find("## Scaling out")
        start = end = anchor if anchor >= 0 else len(readme)
    else:
        following = readme.find("\n## ", start + len(HEADING))
        end = following + 1 if following >= 0 else len(readme)
    return readme[:start] + section + readme[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite the README section")
    parser.add_argument("--check", action="store_true", help="exit 1 if the README section is stale")
    args = parser.parse_args(argv)
    current = README.read_text()
    wanted = replace_section(current, render_section())
    if args.write:
        README.write_text(wanted)
    elif args.check:
        if wanted != current:
            print("README.md's supported-models table is stale: run python -m workers.tiny_models.table --write")
            return 1
    else:
        sys.stdout.write(render_section())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
