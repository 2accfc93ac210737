"""A GPU test run (scripts/gpu_tests.sh) becomes a record that RESULTS.md renders."""

from __future__ import annotations

from benchmarks import gpu_tests, render
from benchmarks.sections import BY_BENCHMARK


def test_a_gpu_test_report_becomes_a_record_with_its_failures(tmp_path):
    """scripts/gpu_tests.sh's JUnit report -> one row per file and an ``all`` row; the failing
    tests are named; the record renders in RESULTS.md's GPU section."""
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase file="tests/a.py" name="test_ok" time="1.5"/>'
        '<testcase file="tests/a.py" name="test_bad" time="0.5"><failure message="x"/></testcase>'
        '<testcase file="tests/b.py" name="test_skip" time="0"><skipped message="no 2 GPUs"/></testcase>'
        '<testcase file="tests/b.py" name="test_err" time="0.1"><error message="y"/></testcase>'
        '</testsuite></testsuites>')
    rows = gpu_tests.main([str(report), "--collected", "7", "--wall-s", "1.2", "--workers", "4",
                           "--out", str(tmp_path / "records" / "gpu_tests")])
    assert rows[0] == {"file": "tests/a.py", "passed": 1, "failed": 1, "skipped": 0, "seconds": 2.0, "failures": ["test_bad"]}
    assert rows[-1] == {"file": "all", "passed": 1, "failed": 2, "skipped": 1, "seconds": 2.1, "not_run": 3,
                        "failures": ["tests/a.py::test_bad", "tests/b.py::test_err"],  # 7 selected, 4 reported
                        "wall_s": 1.2, "workers": 4}
    (entry,) = render.load(tmp_path / "records")
    text = "\n".join(render.table(BY_BENCHMARK["gpu_tests"].columns, entry.rows))
    assert "| all | 1 | 2 | 1 | 3 | 2 | 1 | 4 | tests/a.py::test_bad, tests/b.py::test_err |" in text
    assert "| tests/a.py | 1 | 1 | 0 | - | 2 | - | - | test_bad |" in text


def test_an_aborted_session_counts_its_unrun_tests(tmp_path):
    """pytest's internal error ends a session early: its own row is a failure, and the tests
    it never reached are counted, not silently missing."""
    report = tmp_path / "r.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase file="tests/a.py" name="test_ok" time="1"/>'
        '<testcase classname="pytest" name="internal" time="0"><error message="internal error"/></testcase>'
        '</testsuite></testsuites>')
    rows = gpu_tests.main([str(report), "--collected", "5", "--no-record"])
    assert rows[-1]["not_run"] == 4 and rows[-1]["failures"] == ["pytest::internal"]
