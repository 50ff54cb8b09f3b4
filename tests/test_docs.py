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
