"""The README stays true to the code: every setting is documented, the two commands come first."""

from __future__ import annotations

from pathlib import Path

import yaml

from shared.settings_sources import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_every_setting_is_in_the_readme() -> None:
    missing = [env for option in OPTIONS for env in option.envs[:1] if f"`{env}`" not in README]
    assert not missing, missing


def test_readme_starts_with_the_two_commands() -> None:
    head = README[:1500]
    assert "make run" in head and "make test" in head


def test_ci_runs_make_test() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_deployment_yaml_parses() -> None:
    files = [ROOT / "compose.yaml", *sorted((ROOT / "k8s").rglob("*.yaml"))]
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path


def test_the_exit_code_tables_match_the_codes() -> None:
    """README's table and shared/exit_codes.py's own list the same codes, which are the module's."""
    import re

    from shared import exit_codes

    codes = {v for k, v in vars(exit_codes).items() if k.startswith("EXIT_")}

    def table(text: str) -> set[int]:
        start = text.index("| code | meaning |")
        rows = re.findall(r"^\| (\d+) \|", text[start : text.index("\n\n", start)], re.M)
        return {int(code) for code in rows}

    assert table(README) == codes
    assert table(exit_codes.__doc__ or "") == codes
