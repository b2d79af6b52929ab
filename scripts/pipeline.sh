#!/usr/bin/env bash
# The whole pipeline for one task: motion-planned demos -> one zarr per agent -> train every agent -> roll
# them out together (metrics, videos) -> offline action error per sampler. Every setting is an environment
# variable; the defaults are the full recipe (150 demos at 320x240, the seed's training configuration).
#   bash scripts/pipeline.sh                                   # full recipe (a GPU for training is advised)
#   NUM=4 CAMERA_WIDTH=64 CAMERA_HEIGHT=48 PRESET=tiny EPOCHS=10 EPISODES=2 MAX_STEPS=150 bash scripts/pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
TASK=${TASK:-LiftBarrier-rf}
NUM=${NUM:-150}
W=${CAMERA_WIDTH:-320}
H=${CAMERA_HEIGHT:-240}
PROCS=${NUM_PROCS:-$(nproc)}
PRESET=${PRESET:-default}
EPOCHS=${EPOCHS:-300}
EPISODES=${EPISODES:-100}
SEED=${EVAL_SEED:-1000}
ENVS=${NUM_ENVS:-1}
OUT=${OUT_DIR:-runs/$TASK}
STEP_CAP=()
[ -n "${MAX_STEPS:-}" ] && STEP_CAP=(--max-episode-steps "$MAX_STEPS")

echo "== 1/5 demos: $NUM motion-planned $TASK episodes at ${W}x${H}, $PROCS processes"
rm -rf "$OUT/demos"
$PY scripts/generate_data.py --task "$TASK" --num "$NUM" --num-procs "$PROCS" --camera-width "$W" \
  --camera-height "$H" --out "$OUT/demos"
echo "== 2/5 convert: one zarr per agent"
$PY scripts/convert_to_zarr.py --task "$TASK" --all-agents --demos "$OUT/demos" --out "$OUT/zarr" --overwrite
echo "== 3/5 train: every agent, preset $PRESET, $EPOCHS epochs"
rm -rf "$OUT/checkpoints"
$PY scripts/train.py --task "$TASK" --all-agents --preset "$PRESET" --epochs "$EPOCHS" --data-root "$OUT/zarr" \
  --output-dir "$OUT/checkpoints"
echo "== 4/5 rollout: $EPISODES episodes from seed $SEED, with video"
$PY scripts/rollout.py --task "$TASK" --checkpoint-dir "$OUT/checkpoints" --num-episodes "$EPISODES" --seed "$SEED" \
  --num-envs "$ENVS" "${STEP_CAP[@]}" --record-video --video-dir "$OUT/videos" --output "$OUT/results.json"
echo "== 5/5 offline action error per sampler, agent 0's held-out episodes"
$PY scripts/offline_eval.py "$OUT/checkpoints/${TASK}_Agent0" --samplers ddpm:100 ddim:10 --max-windows 256 \
  --output "$OUT/offline_eval.json"
echo "results: $OUT/results.json, $OUT/offline_eval.json"
ls "$OUT/videos/$TASK"/*.mp4
