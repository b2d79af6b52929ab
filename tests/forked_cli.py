"""The project's command-line scripts run as forked children of one Python process that has already imported
torch and the trainer (a helper of the test files, not a test module).

A fresh ``python scripts/train.py`` spends about 4 s of a 2-core machine importing torch, torch._dynamo and the
library before its first step; the SIGKILL-and-resume tests start a dozen of them. Here a server process imports
those modules once (running no torch operation, so it holds no thread pool that a fork would break) and forks one
child per command, which runs the script as ``__main__`` with its own ``sys.argv``, its own stdout and stderr
files and its own pid: a real process of the script, killed with a real SIGKILL.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
from pathlib import Path
from typing import Sequence

SERVER = r"""
import importlib, json, os, runpy, select, sys
for name in sys.argv[1:]:
    importlib.import_module(name)
print(json.dumps({"ready": True}), flush=True)
while True:
    while True:  # report every child that ended
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        print(json.dumps({"exit": pid, "code": os.waitstatus_to_exitcode(status)}), flush=True)
    if not select.select([sys.stdin], [], [], 0.02)[0]:
        continue
    line = sys.stdin.readline()
    if not line:
        break
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            for fd, path in ((1, job["stdout"]), (2, job["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
            sys.stdin.close()
            sys.argv = list(job["argv"])
            runpy.run_path(job["argv"][0], run_name="__main__")
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        sys.stdout.flush(), sys.stderr.flush()
        os._exit(code)
    print(json.dumps({"pid": pid}), flush=True)
"""


class ForkedProcess:
    """One forked command: ``pid``, ``poll()``, ``wait()``, ``returncode`` (negative: killed by that signal), its
    ``stdout_path`` and ``stderr_path``."""

    def __init__(self, server: "ForkServer", pid: int, stdout: Path, stderr: Path) -> None:
        self.server, self.pid, self.stdout_path, self.stderr_path = server, pid, stdout, stderr

    @property
    def returncode(self) -> int | None:
        return self.server.exits.get(self.pid)

    def poll(self) -> int | None:
        self.server.read(0.0)
        return self.returncode

    def wait(self, timeout: float = 600.0) -> int:
        self.server.read(timeout, until=lambda: self.pid in self.server.exits)
        if self.returncode is None:
            raise TimeoutError(f"forked process {self.pid} still running after {timeout} s")
        return self.returncode

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text()


class ForkServer:
    """``ForkServer(preload, env)``: the server process, started with ``env`` and the modules ``preload`` imported;
    ``start(argv, log_dir)`` forks a child running ``argv`` (``[script, *args]``); ``close()`` ends the server."""

    def __init__(self, preload: Sequence[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SERVER, *preload], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, env=env, cwd=cwd, text=True, bufsize=1)
        self.exits: dict[int, int] = {}
        self._count = 0
        assert self._message(600.0) == {"ready": True}, "the fork server did not start"

    def _message(self, timeout: float) -> dict | None:
        assert self.proc.stdout is not None
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            return None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the fork server ended (exit code {self.proc.poll()})")
        return json.loads(line)

    def read(self, timeout: float, until=lambda: True) -> None:
        """Record the exits reported within ``timeout`` seconds, returning early once ``until()`` holds."""
        end = None if timeout <= 0 else os.times().elapsed + timeout
        while True:
            left = 0.0 if end is None else max(0.0, end - os.times().elapsed)
            msg = self._message(left)
            if msg is None:
                return
            if "exit" in msg:
                self.exits[msg["exit"]] = msg["code"]
            if until() and end is not None:
                return

    def start(self, argv: Sequence[str], log_dir: Path) -> ForkedProcess:
        self._count += 1
        out, err = log_dir / f"forked_{self._count}.out", log_dir / f"forked_{self._count}.err"
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": [str(a) for a in argv], "stdout": str(out), "stderr": str(err)}) + "\n")
        while True:
            msg = self._message(600.0)
            assert msg is not None, "the fork server did not answer"
            if "exit" in msg:
                self.exits[msg["exit"]] = msg["code"]
            elif "pid" in msg:
                return ForkedProcess(self, msg["pid"], out, err)

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        self.proc.wait(timeout=60)
