#!/usr/bin/env bash
# The main job end to end on a small built-in default, on a CPU machine:
#   motion-planned demos -> one zarr per agent -> train both agents (tiny preset) -> roll out with a video.
# This is a smoke-sized run (a few low-resolution demos, a few minutes of CPU training): it shows the
# pipeline working, not a trained agent. The full recipe (150 demos, default preset, GPU) is in the README.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export PYTHONUNBUFFERED=1
PY=.venv/bin/python
TASK=${TASK:-LiftBarrier-rf}
NUM=${NUM:-4}
W=${CAMERA_WIDTH:-64}
H=${CAMERA_HEIGHT:-48}
EPOCHS=${EPOCHS:-10}
STEPS=${MAX_STEPS:-150}
OUT=${OUT_DIR:-runs/quickstart}

rm -rf "$OUT/demos"
echo "== 1/4 demos: $NUM motion-planned $TASK episodes at ${W}x${H}"
$PY scripts/generate_data.py --task "$TASK" --num "$NUM" --num-procs 2 --camera-width "$W" --camera-height "$H" \
  --out "$OUT/demos"
echo "== 2/4 convert: one zarr per agent"
$PY scripts/convert_to_zarr.py --task "$TASK" --all-agents --demos "$OUT/demos" --out "$OUT/zarr" --overwrite
echo "== 3/4 train: every agent, tiny preset, $EPOCHS epochs"
rm -rf "$OUT/checkpoints"
$PY scripts/train.py --task "$TASK" --all-agents --preset tiny --epochs "$EPOCHS" --data-root "$OUT/zarr" \
  --output-dir "$OUT/checkpoints"
echo "== 4/4 rollout: 2 episodes of at most $STEPS steps, with video"
$PY scripts/rollout.py --task "$TASK" --checkpoint-dir "$OUT/checkpoints" --num-episodes 2 --seed 1000 \
  --max-episode-steps "$STEPS" --record-video --video-dir "$OUT/videos" --output "$OUT/results.json"
echo "results: $OUT/results.json"
ls "$OUT/videos/$TASK"/*.mp4
