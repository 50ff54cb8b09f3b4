"""The run's temporary files are one folder (tests/conftest.py): what the tests and the processes
they start put in temporary folders lands there, and a run that passes removes it."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.conftest import SESSION_TMP


def test_temporary_folders_of_tests_and_their_processes_are_in_the_runs_folder(tmp_path: Path) -> None:
    session = Path(os.environ[SESSION_TMP])
    assert session.is_dir() and session.name.startswith("omega-tests-")
    assert Path(tempfile.mkdtemp()).parent == session
    assert tmp_path.is_relative_to(session)
    child = subprocess.run(
        [sys.executable, "-c", "import tempfile; print(tempfile.mkdtemp())"], capture_output=True, text=True, check=True
    )
    assert Path(child.stdout.strip()).parent == session
