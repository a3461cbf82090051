"""Running a test file's Triton tests under the CPU interpreter.

Triton decides interpret-or-compile when `triton` is imported (its standard library is @jit too), so a file's
kernel tests run in a child pytest process started with TRITON_INTERPRET=1; in the parent, one test starts it.
"""

import os
import subprocess
import sys
from pathlib import Path

IN_CHILD = os.environ.get("TRITON_INTERPRET") == "1"


def run_interpreted(test_file: str, timeout: int = 600, **env: str) -> None:
    """Run `test_file` in a child pytest with TRITON_INTERPRET=1 (plus `env`); fail with its output if it fails."""
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test_file],
                       cwd=root, env={**os.environ, "TRITON_INTERPRET": "1", **env}, capture_output=True, text=True,
                       timeout=timeout)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
