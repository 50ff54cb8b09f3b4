"""The API's layout rules: slices as folders, errors.py a leaf, guards and services wired once."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

from litestar.routes import HTTPRoute

from api.app import create_app
from api.auth import require_api_key
from shared.settings_sources import load_settings

ROOT = Path(__file__).resolve().parents[2]
OPEN_PATHS = {"/health", "/livez", "/readyz", "/metrics"}
SERVICE_KEYS = {"chat_service", "submit_poll_service", "batch_service", "file_service", "ops_service"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    return names | {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}


def test_api_top_level_is_small_and_slices_are_folders() -> None:
    modules = sorted(p.name for p in (ROOT / "api").glob("*.py") if p.name != "__init__.py")
    assert len(modules) <= 10, modules
    for slice_ in ("chat", "jobs", "batches", "files", "ops"):
        assert (ROOT / "api" / slice_ / "protocol.py").is_file(), slice_


def test_errors_module_is_a_leaf() -> None:
    assert not [m for m in _imports(ROOT / "api" / "errors.py") if m == "api" or m.startswith("api.")]


def test_only_the_app_reaches_the_service_locator() -> None:
    users = [
        str(p.relative_to(ROOT))
        for p in sorted((ROOT / "api").rglob("*.py"))
        if "api.services" in _imports(p) and p.name != "app.py"
    ]
    assert not users


def test_rq_is_imported_by_the_queue_adapter_only() -> None:
    """Every use of rq (and of its Redis keys) goes through shared/queue/: an rq upgrade is one folder."""
    users = [
        str(path.relative_to(ROOT))
        for package in ("api", "workers", "shared", "omega_vlm", "benchmarks")
        for path in sorted((ROOT / package).rglob("*.py"))
        if any(m == "rq" or m.startswith("rq.") for m in _imports(path))
    ]
    assert users and all(u.startswith("shared/queue/") for u in users), users


def test_each_final_state_has_one_writer() -> None:
    """rq's result and registry writes for a job's end live in shared/queue/finish.py alone."""
    writes = ("Result.create(", "_handle_failure(", "finished_job_registry.add(", "failed_job_registry.add(")
    writers = {
        str(path.relative_to(ROOT))
        for package in ("api", "workers", "shared", "omega_vlm")
        for path in sorted((ROOT / package).rglob("*.py"))
        if any(w in path.read_text() for w in writes)
    }
    assert writers == {"shared/queue/finish.py"}, writers


def test_one_class_per_name() -> None:
    names = Counter(
        node.name
        for package in ("api", "workers", "shared", "omega_vlm")
        for path in sorted((ROOT / package).rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
    )
    assert not [name for name, count in names.items() if count > 1]


def test_guards_once_and_each_handler_asks_for_one_service() -> None:
    app = create_app(load_settings(environ={"API_KEY": "k"}))
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            guards = handler.resolve_guards()
            expected = [] if route.path in OPEN_PATHS else [require_api_key]
            assert list(guards) == expected, (route.path, guards)
            asked = set(handler.parsed_fn_signature.parameters) & SERVICE_KEYS
            assert len(asked) <= 1, (route.path, asked)
            assert "svc" not in handler.parsed_fn_signature.parameters, route.path
