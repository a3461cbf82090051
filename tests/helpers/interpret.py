"""Running a test file's Triton tests under the CPU interpreter.

Triton decides interpret-or-compile when `triton` is imported (its standard library is @jit too), so a file's
kernel tests run in a child pytest process started with TRITON_INTERPRET=1; in the parent, one test starts it.
The child runs every test (no -x: a first failure hides nothing after it) and writes a JUnit XML report; the parent
test fails naming each failed child test, and tests/conftest.py prints every child's passed/skipped/failed counts,
failures and skips in the parent's terminal summary.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

IN_CHILD = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ChildRun:
    """Outcome of one child pytest run: counts, and the failed and skipped tests with their messages."""

    file: str
    passed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    def counts(self) -> str:
        return f"{self.passed} passed, {len(self.skipped)} skipped, {len(self.failed)} failed"


RESULTS: list[ChildRun] = []  # every child run of this session, for the terminal summary


def read_junit(path: Path, file: str) -> ChildRun:
    """Counts and names from a pytest JUnit XML report (test ids as `file::name[params]`)."""
    run = ChildRun(file)
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{file}::{case.get('name')}"
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        skip = case.find("skipped")
        if problem is not None:
            run.failed.append((name, _first_line(problem.get("message"))))
        elif skip is not None:
            run.skipped.append((name, _first_line(skip.get("message"))))
        else:
            run.passed += 1
    return run


def _first_line(message: str | None) -> str:
    lines = (message or "").strip().splitlines()
    return lines[0][:200] if lines else ""


def run_interpreted(test_file: str, timeout: int = 600, **env: str) -> ChildRun:
    """Run `test_file` in a child pytest with TRITON_INTERPRET=1 (plus `env`); fail naming every failed child test
    (with the child's output) if any failed, or if it did not finish."""
    path = Path(test_file).resolve()
    rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "child.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-rfEs", "-p", "no:cacheprovider", f"--junitxml={report}", rel]
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "TRITON_INTERPRET": "1", **env},
                                  capture_output=True, text=True, timeout=timeout)
            output, rc = proc.stdout[-6000:] + proc.stderr[-2000:], proc.returncode
        except subprocess.TimeoutExpired as err:
            output, rc = f"timed out after {timeout} s\n" + str(err.stdout or "")[-6000:], None
        run = read_junit(report, rel) if report.exists() else ChildRun(rel)
    run.seconds = time.perf_counter() - start
    if rc != 0:
        run.note = "timed out" if rc is None else f"exit code {rc}"
    RESULTS.append(run)
    print(f"{rel} under the interpreter: {run.counts()} ({run.seconds:.0f} s)")
    for name, message in run.failed:
        print(f"FAILED {name} - {message}")
    if rc != 0:
        failed = "\n".join(f"  {name} - {message}" for name, message in run.failed) or "  (no test report)"
        raise AssertionError(f"{rel} under the interpreter: {run.counts()}, {run.note}\n{failed}\n{output}")
    return run
