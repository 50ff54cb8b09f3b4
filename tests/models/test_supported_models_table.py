"""The README's supported-models table is the matrix's declarations, rendered; never stale."""

from __future__ import annotations

from workers.tiny_models import table
from workers.tiny_models.families import FAMILIES
from workers.tiny_models.spec import Family


def test_the_readme_table_is_up_to_date() -> None:
    readme = table.README.read_text()
    assert table.replace_section(readme, table.render_section()) == readme, (
        "README.md's supported-models table is stale: run python -m workers.tiny_models.table --write"
    )
    assert table.main(["--check"]) == 0


def test_every_family_has_a_row_and_missing_ones_say_so() -> None:
    section = table.render_section()
    for family in FAMILIES.values():
        assert f"| {family.name} | `{family.architecture}` |" in section
    missing = Family("no_such_family", "Imaginary-VL", "ImaginaryForConditionalGeneration", FAMILIES["qwen3"].build)
    assert not missing.available
    assert "| not in transformers " in table._row(missing, "5.24.0")


def test_replacing_the_section_keeps_the_rest_of_the_readme() -> None:
    readme = "# T\n\nintro\n\n## Supported models\n\nold table\n\n## Next\n\nmore\n"
    updated = table.replace_section(readme, "## Supported models\n\nnew\n\n")
    assert updated == "# T\n\nintro\n\n## Supported models\n\nnew\n\n## Next\n\nmore\n"
    assert table.replace_section(updated, "## Supported models\n\nnew\n\n") == updated
