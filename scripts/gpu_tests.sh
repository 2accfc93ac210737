#!/usr/bin/env bash
# Every GPU test (`pytest -m "gpu or kernels"`: the fast step's CUDA graphs against eager steps,
# mixed precision on a GPU, and every Triton kernel test, which runs the compiled kernels where
# CUDA is visible instead of the interpreter), then one line per test file: passed, failed, skipped, time.
# CI has no GPU: run this on a lent GPU before resolving any change to a GPU path.
#
#   scripts/gpu_tests.sh                      # all of them
#   scripts/gpu_tests.sh tests/training/test_fast_step.py -k resume    # a subset (arguments go to pytest)
#
# On the GPU machine set PYTHONPATH as ../shared/tools/gpu-wheels.sh prints (the CLI tests need
# jsonargparse, and scikit-fem for the elasticity tests); PYTHON picks the interpreter. A test module that
# cannot be imported (a missing package) is reported and the others still run. The two-GPU DDP test runs where two GPUs are
# visible and is skipped otherwise. Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_tests.sh: no CUDA device is visible')"
report=$(mktemp -d)/gpu_tests.xml
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tests)
status=0
"$PYTHON" -m pytest -m "gpu or kernels" -q -p no:cacheprovider --continue-on-collection-errors -o junit_family=xunit1 --junitxml="$report" "${targets[@]}" || status=$?
"$PYTHON" - "$report" <<'EOF'
"""One line per test file of the JUnit report: passed, failed, skipped, seconds."""
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict

files = defaultdict(lambda: {"passed": 0, "failed": 0, "skipped": 0, "seconds": 0.0})
for case in ET.parse(sys.argv[1]).iter("testcase"):
    row = files[case.get("file") or case.get("classname", "?")]
    row["seconds"] += float(case.get("time") or 0)
    outcome = {child.tag for child in case}
    row["failed" if outcome & {"failure", "error"} else "skipped" if "skipped" in outcome else "passed"] += 1
for name, row in sorted(files.items()):
    print(f"{name}: {row['passed']} passed, {row['failed']} failed, {row['skipped']} skipped ({row['seconds']:.0f} s)")
EOF
exit $status
