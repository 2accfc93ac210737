#!/usr/bin/env bash
# Every GPU check and figure of record at HEAD on one lent GPU, in stages that survive a short
# session: the GPU tests first, then the timings the pages cite (benchmarks/RESULTS.md, README).
#
#   setsid nohup scripts/gpu_session.sh > /tmp/gpu_session.out 2>&1 < /dev/null &   # all stages, in the background
#   STAGES="gpu_tests fit1m" scripts/gpu_session.sh                                # some of them
#   scripts/gpu_session.sh --list                                                  # the stages and their commands
#   STAGES="acc gpu_tests" scripts/gpu_session.sh --plan                           # what would run, in order
#   scripts/gpu_session.sh --collect <folder>     # on the dev machine: a fetched $DEV -> benchmarks/records/, rendered (Figure 4 drawn where the grid has records)
#   scripts/gpu_session.sh --snapshot <dir>       # copy the tree (no .git, runs/, data/, .whl/) to <dir>: what the stages run from
#   scripts/gpu_session.sh --wheels               # on the dev machine: the test wheels a lent GPU lacks, into .whl/
#                                                 # (beside ../shared/tools/gpu-wheels.sh's; install them there as it says)
#   scripts/gpu_session.sh --pack "$OUT"          # on the GPU, in each poll: $DEV and the acc runs as a few archives
#   scripts/gpu_session.sh --unpack <fetched>     # on the dev machine: into runs/gpu_fetched/dev and runs/acc/
#
# A call brings back at most 8 files of 16 MiB, two folders deep: --pack writes dev.tar.gz ($DEV: records,
# logs, progress) and the accuracy run folders (checkpoints, records and log) as acc_<n>.tar archives of up to
# PACK_MIB (15) each, so a poll that copies them to $OUT loses nothing; --unpack restores them (then
# --collect runs/gpu_fetched/dev).
#
# The stages run from a snapshot of the tree (SNAPSHOT, default /tmp/flare_tree), taken when the script starts:
# each later `run` call copies the working tree onto the GPU machine again, and a stage that starts Python
# processes while its files are rewritten can read a half-written one (a mixer sweep's workers died so at
# 77fe692). GPU_SESSION_IN_PLACE=1 runs in the tree itself.
# Each stage writes its record(s) into $DEV/rec_<stage>/ (DEV: /tmp/dev), its output into $DEV/<stage>.log
# and a start/end line into $DEV/progress; a stage that finished on this machine is skipped when the script
# runs again, so a caller can poll $DEV/progress and copy $DEV back as it goes. $DEV/DONE marks the end.
# STAGE_LIMIT (seconds, default 1500) bounds each stage. Set FLARE_COMMIT where the copy has no .git.
#
# Opt-in stage `ddp1m` (two GPUs): the 1M config through `flare fit` on one GPU and under DDP on two,
# in one run (issue 26 item 4: samples per second of two against one).
# Opt-in stage `acc` (name it in STAGES; it runs last, so every timing runs alone): paper-protocol
# accuracy runs of issue 28's precision arms (benchmarks/accuracy_runs.py ARMS; ACC_ARMS, default fp16
# and 32-tf32: the candidate fast and exact mode beside the authors' precision), FLARE with the fast step on ACC_DATASETS (default elasticity), ACC_SEEDS
# (default 0), in ACC_LANES workers side by side on GPU 0 (default 2), or one worker per entry of ACC_DEVICES
# (GPU ids, e.g. "0 1 2 3 4 5 6 7" on a lent machine of eight: the whole ablation at once), each arm in runs/acc/<arm>/.
# The stage starts the runs in the background (one `accuracy.py launch`) and returns. A run outlives
# a short session by its folder: bring runs/acc/ back with --pack/--unpack, carry it into the next
# session's first call (never into a call while the runs go: a carried path replaces the one there),
# and `acc` again resumes each run from its last.ckpt.
# On the dev machine: python benchmarks/accuracy.py collect --out runs/acc.
# tss_fp16: the captured Darcy and elasticity steps under 16-mixed (its loss scale on the GPU) beside bf16-mixed,
# through flare fit in one run (issue 28 item 2's speed bound: within 1.3x of bf16).
# fit1m_tiles: the 1M fit with what is written but not yet shipped (train_step_small.py's rows ours-fast-grouped,
# ours-m128-fast-enc128: mixer tiles; -proj: the attention's out_proj folded into the feed-forward's kernels; -h0:
# the MLPs' backward recomputing LN(x) rather than writing it; -all: those two, the paired key/value MLPs and the
# feed-forward's residual gradient folded into its kernel; the -fused and -kvpair rows, not in the stage, time
# those two and the pair alone) beside the shipped config, in one run (~13 min):
# what a default change would gain in the step.
# FIT1M_ROWS="row ..." picks the fit1m stage's rows, KERNELS1M_CONFIGS="config ..." the kernels1m stage's;
# MLP_ONLY="regex ..." limits the mlp stage's sweep to the configurations whose row name one of them finds.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the scripts import benchmarks.*
DEV=${DEV:-/tmp/dev}
ACC_ROOT=${ACC_ROOT:-runs/acc}  # the acc stage's runs (its --out)
PY=${PYTHON:-python3}

# "$*" as quoted shell words for a CMD string: a regex's | or * stays one argument (MLP_ONLY="split_|dw_" is
# no pipe, "dw_*" no glob)
words() { local w q; read -ra w <<< "$*"; printf -v q '%q ' "${w[@]}"; printf '%s' "${q% }"; }
TSS="$PY benchmarks/train_step_small.py"  # paper-size and 1M steps through flare fit
STEP="$PY benchmarks/step.py"             # the bare 2^20-point step
TUNE="$PY benchmarks/mixer_tune.py --jobs 12"
ACC="$PY benchmarks/accuracy.py launch --models flare --datasets $(words "${ACC_DATASETS:-elasticity}") --seeds $(words "${ACC_SEEDS:-0}") --fast-step"
declare -A CMD=(
  [gpu_tests]="env PYTHON=$PY bash scripts/gpu_tests.sh"
  [acc]="$ACC --devices $(words "${ACC_DEVICES:-$(printf '0 %.0s' $(seq "${ACC_LANES:-2}"))}") --arms $(words "${ACC_ARMS:-fp16 32-tf32}") --out $ACC_ROOT"
  [fit1m]="$TSS --datasets drivaerml_1m --precisions bf16-mixed --rows $(words "${FIT1M_ROWS:-ours-eager ours-fast ours-m128 ours-m128-fast reference-compiled reference-m128-compiled}") --root /tmp/bench_1m --profile"
  [fit1m_tiles]="$TSS --datasets drivaerml_1m --precisions bf16-mixed --rows ours-fast ours-fast-grouped ours-fast-proj ours-fast-h0 ours-fast-all ours-m128-fast ours-m128-fast-enc128 ours-m128-fast-all reference-compiled --root /tmp/bench_1m"
  [tss]="$TSS --datasets darcy elasticity --precisions bf16-mixed 32-tf32 --rows ours-fast reference-compiled --root /tmp/bench_small"
  [tss_fp16]="$TSS --datasets darcy elasticity --precisions bf16-mixed 16-mixed --rows ours-fast --root /tmp/bench_small"
  [tss_mixed]="$TSS --datasets darcy elasticity --precisions bf16-fp32mixer-tf32 bf16-fp32mixer 32-tf32 --rows ours-fast --root /tmp/bench_small --profile"
  [eval]="$STEP --eval --n 8800000 --latents 256 --configs ours-fused-compiled-stored"
  [evaltest]="$PY benchmarks/eval_surface.py --root /tmp/eval_surface --points 8800000 --runs 4"
  [step]="$STEP --n 1048576 --latents 128 256 --configs reference-compiled ours-fused-compiled ours-fused-compiled-stored"
  [kernels1m]="$PY benchmarks/step_kernels.py --n 1048576 --latents 256 --configs $(words "${KERNELS1M_CONFIGS:-ours-fused-compiled-stored reference-compiled}")"
  [mixtune]="$TUNE --shapes 8:8:256,8:8:128"
  [mixtune_tf32]="$TUNE --shapes 16:4:256 --log2n 14 --dtype float32 --matmul-precision high"
  [mlp]="$PY benchmarks/mlp.py --sweep${MLP_ONLY:+ --only $(words "$MLP_ONLY")}"
  [maxpoints]="$PY benchmarks/max_points.py --latents 256 --configs ours-fused-compiled-stored ours-fused-compiled ours-memory --budget-s 90"
  [grid12]="$STEP --grid --grid-blocks 1 2 --configs reference-compiled ours-fused-compiled-stored"
  [grid48]="$STEP --grid --grid-blocks 4 8 --configs reference-compiled ours-fused-compiled-stored"
  [ddp1m]="$TSS --datasets drivaerml_1m --precisions bf16-mixed --rows ours-fast ours-eager --devices 1 2 --root /tmp/bench_1m"
)
ORDER=(gpu_tests fit1m fit1m_tiles kernels1m mixtune tss tss_fp16 tss_mixed mixtune_tf32 eval evaltest step mlp maxpoints grid12 grid48 ddp1m acc)
OPT_IN=" ddp1m acc "  # only when STAGES names them: ddp1m needs two GPUs, acc leaves runs going
DEFAULT=()
for s in "${ORDER[@]}"; do [[ "$OPT_IN" == *" $s "* ]] || DEFAULT+=("$s"); done

case "${1:-}" in
  --list)
    for s in "${ORDER[@]}"; do echo "$s: ${CMD[$s]}"; done
    exit 0 ;;
  --plan) ;;  # below: the stages this call would run (STAGES, or the default), in order, and nothing else
  --collect)  # then the pages, and Figure 4 where the grid has records
    "$PY" benchmarks/records.py collect "${2:?usage: gpu_session.sh --collect <folder>}" && "$PY" benchmarks/render.py || exit
    if compgen -G "benchmarks/records/step_grid/*.json" > /dev/null; then exec "$PY" benchmarks/figure4.py; fi
    exit 0 ;;
  --pack)  # on the GPU machine: $DEV as dev.tar.gz, the accuracy run folders as acc_<n>.tar, into $2
    dest=${2:?usage: gpu_session.sh --pack <folder>}
    mkdir -p "$dest"
    [ -d "$DEV" ] && tar -czf "$dest/.dev.tar.gz.tmp" --exclude=".*.tmp" -C "$(dirname "$DEV")" "$(basename "$DEV")" \
      && mv "$dest/.dev.tar.gz.tmp" "$dest/dev.tar.gz"
    n=0 group=() group_bytes=0 limit=$(( ${PACK_MIB:-15} * 1024 * 1024 ))
    flush() {  # the runs gathered so far as one archive
      [ ${#group[@]} -gt 0 ] || return 0
      n=$((n + 1))
      tar -cf "$dest/.acc_$n.tar.tmp" --exclude=".*.tmp" -C "$ACC_ROOT" "${group[@]}" \
        && mv "$dest/.acc_$n.tar.tmp" "$dest/acc_$n.tar"
      group=() group_bytes=0
    }
    for run in "$ACC_ROOT"/*/*_*/seed*/; do  # runs share an archive up to PACK_MIB (15): eight arms fit the 8 files
      [ -d "$run" ] || continue
      rel=${run#"$ACC_ROOT"/}; rel=${rel%/}                 # <arm>/<model>_<dataset>/seed<S>_<budget>
      log=${rel%%/*}/logs/$(basename "${rel%/*}")_${rel##*/}.log  # <arm>/logs/<model>_<dataset>_seed<S>_<budget>.log
      [ -f "$ACC_ROOT/$log" ] || log=
      bytes=$(du -sb "$run" ${log:+"$ACC_ROOT/$log"} | awk '{s += $1} END {print s}')
      [ $((group_bytes + bytes)) -gt "$limit" ] && flush
      group+=("$rel" ${log:+"$log"}) group_bytes=$((group_bytes + bytes))
    done
    flush
    for archive in "$dest"/*.tar*; do  # what a call brings back: 16 MiB a file
      [ -f "$archive" ] && [ "$(stat -c %s "$archive")" -gt $((16 * 1024 * 1024)) ] \
        && echo "gpu_session.sh: $archive is over the 16 MiB a file comes back with" >&2
    done
    exit 0 ;;
  --unpack)  # on the dev machine: a fetched (read-only) --pack folder into <dest>/dev and $ACC_ROOT
    src=${2:?usage: gpu_session.sh --unpack <fetched folder> [<dest>]}
    dest=${3:-runs/gpu_fetched}
    mkdir -p "$dest"
    [ -f "$src/dev.tar.gz" ] && tar -xzf "$src/dev.tar.gz" -C "$dest" \
      && echo "records and logs: $dest/$(basename "$DEV") (then: $0 --collect $dest/$(basename "$DEV"))"
    mkdir -p "$ACC_ROOT"
    for archive in "$src"/acc_*.tar; do
      [ -f "$archive" ] || continue
      tar -xf "$archive" -C "$ACC_ROOT" && echo "accuracy run: $(tar -tf "$archive" | head -1) -> $ACC_ROOT"
    done
    exit 0 ;;
  --snapshot)  # the tree as the stages see it: tracked and untracked files, not .git, runs/, data/ or .whl/
    dest=${2:?usage: gpu_session.sh --snapshot <dir>}
    mkdir -p "$dest"
    tar -cf - --exclude=./.git --exclude=./runs --exclude=./data --exclude=./.whl . | tar -xf - -C "$dest" || exit
    echo "$dest"
    exit 0 ;;
  --wheels)  # pytest-xdist (parallel GPU tests), scikit-fem (elasticity data): pure Python, for the device's Python 3.12
    mkdir -p .whl
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux2014_x86_64 -d .whl pytest-xdist execnet scikit-fem 2>&1 | grep -v "is ignored" || true
    ls .whl
    exit 0 ;;
  "") ;;
  *) echo "gpu_session.sh: unknown argument '$1' (--list, --plan, --collect <folder>, --pack <folder>, --unpack <folder>, --snapshot <dir>, --wheels, or none)" >&2; exit 2 ;;
esac

wanted=${STAGES:-${DEFAULT[*]}}
for s in $wanted; do
  [ -n "${CMD[$s]+x}" ] || { echo "gpu_session.sh: unknown stage '$s' in STAGES (known: ${ORDER[*]})" >&2; exit 2; }
done
if [ "${1:-}" = --plan ]; then
  for s in "${ORDER[@]}"; do [[ " $wanted " == *" $s "* ]] && echo "$s"; done
  exit 0
fi
"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_session.sh: no CUDA device is visible')" || exit 1
if [ -z "${GPU_SESSION_IN_PLACE:-}" ]; then  # run from a snapshot that later calls' copies cannot touch
  snap=$(bash "$0" --snapshot "${SNAPSHOT:-/tmp/flare_tree}") || exit 1
  mkdir -p "$ACC_ROOT"
  commit=${FLARE_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null)}
  GPU_SESSION_IN_PLACE=1 ACC_ROOT=$(realpath "$ACC_ROOT") FLARE_COMMIT=$commit exec bash "$snap/scripts/gpu_session.sh" "$@"
fi
mkdir -p "$DEV"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv > "$DEV/gpu.txt" 2>&1
for s in "${ORDER[@]}"; do
  [[ " $wanted " == *" $s "* ]] || continue
  [ -e "$DEV/$s.done" ] && continue
  echo "$(date +%T) start $s" >> "$DEV/progress"
  mkdir -p "$DEV/rec_$s"
  OUT="$DEV/rec_$s" timeout "${STAGE_LIMIT:-1500}" bash -c "${CMD[$s]}" > "$DEV/$s.log" 2>&1
  echo "$(date +%T) end $s rc=$?" >> "$DEV/progress"
  touch "$DEV/$s.done"
done
touch "$DEV/DONE"
