"""The API process never imports torch: the API image does not even install it."""

from __future__ import annotations

import subprocess
import sys

from tests.support.procs import ROOT


def test_importing_the_api_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "import api.app, api.server, api.chat.routes, shared.prompt\n"
        "from api.app import create_app\n"
        "from shared.settings_sources import load_settings\n"
        "create_app(load_settings(environ={}))\n"
        "import transformers.utils.chat_template_utils\n"
        "bad = sorted(m for m in sys.modules if m == 'torch' or m.startswith(('torch.', 'torchvision')))\n"
        "assert not bad, bad\n"
        "print('ok')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
