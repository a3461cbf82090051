import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
# Tests never reach the hub: local files and tiny models only.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = Path(os.environ.get("TNL_DATA_DIR", SHARED_DATA))
    if not (path / "wikitext-2-raw" / "wiki.valid.raw").exists():
        pytest.skip(f"WikiText files not found under {path}; set TNL_DATA_DIR")
    return path


def pytest_collection_modifyitems(config, items):
    """Files with a Triton-interpreter child run (the slowest tests) come first, so that under pytest-xdist they
    start at once instead of ending the run alone; tests marked `gpu` are skipped where no CUDA device is visible."""
    slow_files = {item.path for item in items if item.name.endswith("_interpreted")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: the order within each group stays
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (GPU acceptance check; run with -m gpu on a GPU machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


_CHILD_RUNS_KEY = pytest.StashKey[int]()


def pytest_runtest_setup(item):
    from tests.helpers.interpret import RESULTS

    item.stash[_CHILD_RUNS_KEY] = len(RESULTS)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Child runs travel on the test's report, so the summary below sees them under pytest-xdist as well (where the
    tests run in worker processes and only reports reach the controller)."""
    outcome = yield
    if call.when != "call":
        return
    from dataclasses import asdict

    from tests.helpers.interpret import RESULTS

    for run in RESULTS[item.stash.get(_CHILD_RUNS_KEY, len(RESULTS)):]:
        outcome.get_result().user_properties.append(("interpreted", asdict(run)))


def pytest_terminal_summary(terminalreporter):
    """The Triton-interpreter child runs (tests/helpers/interpret.py): each file's counts, failures and skips."""
    from tests.helpers.interpret import ChildRun

    runs = [ChildRun(**{**value, "failed": [tuple(x) for x in value["failed"]],
                        "skipped": [tuple(x) for x in value["skipped"]]})
            for reports in terminalreporter.stats.values() for report in reports
            if getattr(report, "when", None) == "call"
            for name, value in getattr(report, "user_properties", ()) if name == "interpreted"]
    if not runs:
        return
    terminalreporter.section("Triton kernels under the interpreter (child pytest runs)")
    for run in sorted(runs, key=lambda r: r.file):
        note = f", {run.note}" if run.note else ""
        terminalreporter.write_line(f"{run.file}: {run.counts()} ({run.seconds:.0f} s{note})")
        for name, message in run.failed:
            terminalreporter.write_line(f"  FAILED {name} - {message}")
        for name, message in run.skipped:
            terminalreporter.write_line(f"  SKIPPED {name} - {message}")
