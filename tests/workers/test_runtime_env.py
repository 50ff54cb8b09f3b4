"""TRANSFORMERS_INSTALL_PATH / --transformers-path: pip-installs the given transformers before a
worker starts and says which one is in use; a source pip cannot install stops start-up plainly.
The install goes into a throwaway venv, never into the project's environment."""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from workers.runtime_env import TransformersInstallError, install_transformers, transformers_origin

ROOT = Path(__file__).resolve().parents[2]
VERSION = "99.0.0"


def fake_transformers_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel named transformers (what a vendored build would be)."""
    dist = f"transformers-{VERSION}.dist-info"
    files = {
        "transformers/__init__.py": f'__version__ = "{VERSION}"\n',
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: transformers\nVersion: {VERSION}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: omega-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for name, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{name},sha256={digest},{len(text.encode())}")
    files[f"{dist}/RECORD"] = "\n".join([*record, f"{dist}/RECORD,,"]) + "\n"
    wheel = folder / f"transformers-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return wheel


@pytest.fixture(scope="module")
def venv_python(tmp_path_factory: pytest.TempPathFactory) -> str:
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    return str(venv / "bin" / "python")


@pytest.fixture(autouse=True)
def no_index(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # everything installs from local files


def test_the_override_installs_and_reports_what_is_used(
    venv_python: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    assert transformers_origin(venv_python) == "transformers is not importable"
    origin = install_transformers(str(fake_transformers_wheel(tmp_path)), python=venv_python)
    venv = str(Path(venv_python).parents[1])
    assert origin.startswith(f"transformers {VERSION} from {venv}/") and origin.endswith("transformers/__init__.py")
    out = capfd.readouterr().out
    assert f"[entrypoint] {origin}\n[entrypoint] Using {origin}\n" in out


def test_a_source_pip_cannot_install_is_a_plain_error(venv_python: str, tmp_path: Path) -> None:
    with pytest.raises(TransformersInstallError, match=r"TRANSFORMERS_INSTALL_PATH \(--transformers-path\)"):
        install_transformers(str(tmp_path / "absent-transformers"), python=venv_python)


def test_the_worker_stops_with_one_line_when_the_install_fails(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL_", "OMEGA_"))}
    env.update(PYTHONPATH=str(ROOT), PIP_NO_INDEX="1", DATA_DIR=str(tmp_path))
    absent = str(tmp_path / "absent-transformers")
    out = subprocess.run(
        [sys.executable, "-m", "omega_vlm.cli", "worker", "--device", "cpu", "--transformers-path", absent],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert f"omega-vlm: TRANSFORMERS_INSTALL_PATH (--transformers-path): pip could not install {absent!r}" in out.stderr
    assert "Traceback" not in out.stderr
