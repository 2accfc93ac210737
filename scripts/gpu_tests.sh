#!/usr/bin/env bash
# Every GPU test (`pytest -m "gpu or kernels"`: the fast step's CUDA graphs against eager steps,
# mixed precision on a GPU, and every Triton kernel test, which runs the compiled kernels where
# CUDA is visible instead of the interpreter), then one line per test file: passed, failed, skipped, time,
# and a record of the run (benchmarks/gpu_tests.py) that RESULTS.md renders.
# CI has no GPU: run this on a lent GPU before resolving any change to a GPU path.
#
#   scripts/gpu_tests.sh                      # all of them
#   scripts/gpu_tests.sh tests/training/test_fast_step.py -k resume    # a subset (arguments go to pytest)
#
# On the GPU machine set PYTHONPATH as ../shared/tools/gpu-wheels.sh prints (the CLI tests need
# jsonargparse, and scikit-fem for the elasticity tests); PYTHON picks the interpreter. A test module that
# cannot be imported (a missing package) is reported and the others still run. The two-GPU DDP test runs where two GPUs are
# visible and is skipped otherwise. With pytest-xdist importable (the `dev` extra; on a lent machine add its wheel and
# execnet's to .whl/) GPU_TEST_WORKERS processes (default 12: 227 s for the suite on a 16-core H100 host at 0d2271d, against ~8.5 min with 6) share the GPU, a test file each at a time: most of the time
# is compilation on the CPU. Exit status: pytest's.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
"$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_tests.sh: no CUDA device is visible')"
report=$(mktemp -d)/gpu_tests.xml
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=(tests)
# -p no:benchmark: a pytest-benchmark plugin on the GPU image (its `benchmark` fixture) must not meet our tests
opts=(-m "gpu or kernels" -q -p no:cacheprovider -p no:benchmark --continue-on-collection-errors)
# how many tests the run selects, so that the record counts any that an aborted session never ran
collected=$("$PYTHON" -m pytest "${opts[@]}" --collect-only "${targets[@]}" 2>/dev/null | grep -Eo '^[0-9]+(/[0-9]+)? tests? collected' | grep -Eo '^[0-9]+' || true)
workers=${GPU_TEST_WORKERS:-12}
parallel=()
if [ "$workers" -gt 1 ] && "$PYTHON" -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
else
  workers=1
fi
status=0
start=$SECONDS
"$PYTHON" -m pytest "${opts[@]}" ${parallel[@]+"${parallel[@]}"} -o junit_family=xunit1 --junitxml="$report" "${targets[@]}" || status=$?
wall=$((SECONDS - start))
# one line per test file, and a record (card, commit, counts, failing tests) for RESULTS.md: into $OUT on a
# device machine (copy it into benchmarks/records/gpu_tests/ and re-render), else benchmarks/records/gpu_tests/
"$PYTHON" benchmarks/gpu_tests.py "$report" ${collected:+--collected "$collected"} --wall-s "$wall" --workers "$workers" --command "scripts/gpu_tests.sh${*:+ $*}" || status=$?
exit $status
