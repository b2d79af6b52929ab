#!/usr/bin/env bash
# The multi-agent architectures (README, Multi-agent architectures) compared on one task from the same demos: the
# demos are made once with every camera of the task, then one scripts/pipeline.sh per architecture runs at the same
# time (conversion, training with the same EPOCHS and TRAIN_MINUTES per policy, rollout) under OUT_DIR/<architecture>/,
# and a table of every rollout's success rates closes the run (OUT_DIR/table.md).
#   bash scripts/benchmark_architectures.sh                # LiftBarrier-rf, the four architectures, pipeline.sh's recipe
#   NUM=2 CAMERA_WIDTH=64 CAMERA_HEIGHT=48 PRESET=tiny EPOCHS=1 EPISODES=2 MAX_STEPS=20 bash scripts/benchmark_architectures.sh
# Settings: ARCHITECTURES (default "local-separate global-separate local-shared global-shared"; "local-separate+global"
# adds the global camera to each arm's own), TASK, NUM, DEMOS_FROM (state-only demos to render instead of planning),
# CAMERA_WIDTH, CAMERA_HEIGHT, NUM_PROCS (demo processes), OUT_DIR; every other pipeline.sh setting (PRESET, EPOCHS,
# TRAIN_MINUTES, TRAIN_PARALLEL, SAMPLERS, EPISODES, NUM_ENVS per rollout, ROLLOUT_ARGS such as "--max-minutes 8", ...)
# reaches each architecture's pipeline as it is. Logs: OUT_DIR/pipeline_<architecture>.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
export TASK=${TASK:-LiftBarrier-rf}
ARCHS=${ARCHITECTURES:-local-separate global-separate local-shared global-shared}
OUT=${OUT_DIR:-runs/architectures/$TASK}
W=${CAMERA_WIDTH:-320} H=${CAMERA_HEIGHT:-240}
START=$SECONDS
# a misspelt name fails here, before any work
$PY -c "import sys; from rf_dp_agents.architecture import Architecture; [Architecture.parse(a) for a in sys.argv[1:]]" \
  ${ARCHS//+global/}
SOURCE=()
[ -n "${DEMOS_FROM:-}" ] && SOURCE=(--replay-from "$DEMOS_FROM")
echo "== demos for every architecture: ${DEMOS_FROM:-${NUM:-150} planned} -> $OUT/demos at ${W}x${H}, every camera"
rm -rf "$OUT/demos"
$PY scripts/generate_data.py --task "$TASK" --num "${NUM:-150}" --num-procs "${NUM_PROCS:-$(nproc)}" \
  --camera-width "$W" --camera-height "$H" --out "$OUT/demos" "${SOURCE[@]}"
echo "   (demos: $((SECONDS - START)) s)"
pids=() names=()
for arch in $ARCHS; do
  base=${arch%+global} extra=0
  [ "$base" != "$arch" ] && extra=1
  echo "== $arch: scripts/pipeline.sh, log $OUT/pipeline_$arch.log"
  ARCHITECTURE=$base INCLUDE_GLOBAL_CAMERA=$extra DEMOS_DIR=$OUT/demos OUT_DIR=$OUT/$arch \
    bash scripts/pipeline.sh > "$OUT/pipeline_$arch.log" 2>&1 &
  pids+=($!) names+=("$arch")
done
failed=()
for k in "${!pids[@]}"; do
  wait "${pids[$k]}" || failed+=("${names[$k]}")
  echo "== ${names[$k]} ended after $((SECONDS - START)) s"
done
files=()
for arch in $ARCHS; do
  for f in "$OUT/$arch"/results*.json; do
    if [ -f "$f" ]; then files+=("$arch $(basename "${f%.json}")=$f"); fi
  done
done
if [ "${#files[@]}" -gt 0 ]; then $PY scripts/results_table.py "${files[@]}" | tee "$OUT/table.md"; fi
echo "total: $((SECONDS - START)) s"
[ "${#failed[@]}" = 0 ] || { echo "failed: ${failed[*]} (see $OUT/pipeline_<architecture>.log)" >&2; exit 1; }
