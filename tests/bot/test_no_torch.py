from __future__ import annotations

import subprocess
import sys

from tests.bot.slack_http import REPO


def test_the_bot_never_imports_the_ml_stack():
    # The engine's pure-Python statistics (the Wilson interval the cards show) may load; the ML
    # stack, the model code and the workers may not.
    code = ("import sys, bot.slack_app, bot.server, portllm_cli.console; "
            "heavy = sorted(m for m in ('torch', 'transformers', 'peft', 'safetensors', 'portllm_engine.models', "
            "'portllm_engine.transplant', 'workers') "
            "if m in sys.modules); print(','.join(heavy))")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
