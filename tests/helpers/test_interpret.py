"""The interpreter runner reports every child test: a failure does not hide the tests after it, and the counts,
the failed test's name and the skips reach the parent."""

import pytest

from tests.helpers import interpret

CHILD = '''
import pytest

def test_a():
    pass

def test_b_fails():
    assert 1 == 2, "planted failure"

@pytest.mark.skip(reason="planted skip")
def test_c():
    pass

@pytest.mark.parametrize("n", [1, 2])
def test_d_after_the_failure(n):
    pass
'''


def test_child_failures_and_skips_reach_the_parent(tmp_path):
    child = tmp_path / "test_child.py"
    child.write_text(CHILD)
    with pytest.raises(AssertionError) as info:
        interpret.run_interpreted(str(child), timeout=120)
    run = interpret.RESULTS.pop()  # a planted failure: not for the session's summary
    assert run.passed == 3  # test_a and both test_d after the failure: no -x
    assert [name for name, _ in run.failed] == [f"{child}::test_b_fails"]
    assert "planted failure" in run.failed[0][1]
    assert [name for name, _ in run.skipped] == [f"{child}::test_c"] and "planted skip" in run.skipped[0][1]
    assert f"{child}::test_b_fails" in str(info.value) and "3 passed, 1 skipped, 1 failed" in str(info.value)
