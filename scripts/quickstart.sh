#!/usr/bin/env bash
# The main job end to end on a small built-in default, on a CPU machine:
#   motion-planned demos -> one zarr per agent -> train both agents (tiny preset) -> offline action error
#   per sampler -> roll out with a video.
# This is a smoke-sized run (a few low-resolution demos, a minute of CPU training per agent): it shows the
# pipeline working, not a trained agent. The full recipe is scripts/pipeline.sh with its defaults (README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export TASK=${TASK:-LiftBarrier-rf} NUM=${NUM:-4} CAMERA_WIDTH=${CAMERA_WIDTH:-64} CAMERA_HEIGHT=${CAMERA_HEIGHT:-48}
export NUM_PROCS=${NUM_PROCS:-2} PRESET=${PRESET:-tiny} EPOCHS=${EPOCHS:-10} EPISODES=${EPISODES:-2}
export MAX_STEPS=${MAX_STEPS:-150} OUT_DIR=${OUT_DIR:-runs/quickstart}
exec bash scripts/pipeline.sh
