"""Imports: the core library imports with the simulator hidden (only envs/ and rollout may need mani_skill), and
the modules every training, rollout and load_policy process loads leave out the packages that cost seconds of
start-up (diffusers, torchvision and the torch._dynamo they pull in, scipy.stats)."""

from __future__ import annotations

import subprocess
import sys

BLOCKER = r"""
import importlib.abc, pkgutil, sys

BLOCKED = ("mani_skill", "sapien", "mplib", "envs")

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is hidden in this test")
        return None

sys.meta_path.insert(0, Block())
import rf_dp_agents
names = []
for info in pkgutil.walk_packages(rf_dp_agents.__path__, "rf_dp_agents."):
    if info.name == "rf_dp_agents.rollout" or info.name.startswith("rf_dp_agents.rollout."):
        continue
    __import__(info.name)
    names.append(info.name)
leaked = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
assert not leaked, leaked
print(len(names), "modules imported:", " ".join(names))
"""


def test_library_imports_without_simulator():
    result = subprocess.run([sys.executable, "-c", BLOCKER], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "rf_dp_agents.data.dataset" in result.stdout


def test_process_start_imports_no_heavy_package():
    code = (
        "import sys\n"
        "import rf_dp_agents.model, rf_dp_agents.training.cli, rf_dp_agents.checkpoint, rf_dp_agents.policy\n"
        "print(sorted(m for m in ('diffusers', 'torchvision', 'torch._dynamo', 'scipy.stats') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
