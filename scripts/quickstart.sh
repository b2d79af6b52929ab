#!/usr/bin/env bash
# The main job end to end on a small built-in default, on a CPU machine:
#   motion-planned demos -> one zarr per agent -> train both agents (tiny preset) -> offline action error
#   per sampler -> roll out with a video.
# This is a smoke-sized run (4 low-resolution demos, 3 epochs of CPU training per agent, the two agents
# side by side on one torch thread each): it shows the pipeline working, not a trained agent. The full recipe is
# scripts/pipeline.sh with its defaults (README). Every setting below can be overridden from the environment.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
bash scripts/install.sh
echo "   (install: $((SECONDS - start)) s)"
export TASK=${TASK:-LiftBarrier-rf} NUM=${NUM:-4} CAMERA_WIDTH=${CAMERA_WIDTH:-64} CAMERA_HEIGHT=${CAMERA_HEIGHT:-48}
# The demos keep the cameras the policies train on (each render costs; the global view is only for videos).
[ "$TASK" = LiftBarrier-rf ] && export CAMERAS=${CAMERAS-head_camera_agent0 head_camera_agent1}
export NUM_PROCS=${NUM_PROCS:-2} PRESET=${PRESET:-tiny} EPOCHS=${EPOCHS:-3} EPISODES=${EPISODES:-2}
# Two agents on two cores: one process and one torch thread each (two threads per process on a busy 2-core
# machine ran 3-5x slower per step); validate and save at the last epoch only.
export TRAIN_PARALLEL=${TRAIN_PARALLEL:-1} TRAIN_THREADS=${TRAIN_THREADS:-1}
export TRAIN_ARGS=${TRAIN_ARGS---val-every $EPOCHS --save-every $EPOCHS --val-action-windows 64}
export OFFLINE_WINDOWS=${OFFLINE_WINDOWS:-16} NUM_ENVS=${NUM_ENVS:-2}
export MAX_STEPS=${MAX_STEPS:-80} OUT_DIR=${OUT_DIR:-runs/quickstart}
exec bash scripts/pipeline.sh
