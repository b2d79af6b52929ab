"""Run a test script in a fresh Python process with ``TRITON_INTERPRET=1`` (set before Triton is first imported, so
Triton kernels run on CPU tensors through its interpreter) and return the JSON the script prints last."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def run_interpreted(script: str, timeout: float = 600) -> dict:
    """The last line of ``script``'s output, parsed as JSON; skips the test where Triton is not installed."""
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
