#!/usr/bin/env bash
# The whole pipeline for one task: motion-planned demos -> one zarr per agent -> train every agent -> offline
# action error per sampler -> roll them out together (metrics, videos). Every setting is an environment
# variable; the defaults are the full recipe (150 demos at 320x240, the seed's training configuration).
#   bash scripts/pipeline.sh                                   # full recipe (a GPU for training is advised)
#   NUM=4 CAMERA_WIDTH=64 CAMERA_HEIGHT=48 PRESET=tiny EPOCHS=10 EPISODES=2 MAX_STEPS=150 bash scripts/pipeline.sh
# More knobs: DEMOS_FROM (render these state-only demos, e.g. from generate_data.py --no-render, instead of
# planning), DEMOS_DIR (use these rendered demos as they are and skip the demo stage), TRAIN_MINUTES (wall-clock
# budget per agent; the LR schedule is fitted to it, at most EPOCHS), TRAIN_PARALLEL=1 (train the agents side by side;
# TRAIN_THREADS: torch threads of each of them), TRAIN_ARGS (more train.py options, e.g. "--val-every 5"),
# SAMPLERS ("ddpm:100 ddpm:10": one rollout per sampler:steps, "ddpm:100:50" with its own episode count instead
# of EPISODES, "ddpm:10,execute=6" executing the first 6 actions of each chunk, "ddpm:10,ensemble=0.01" with ACT's
# temporal ensembling, "own,execute=6" with the policies' own sampler; default: the policies' own),
# OFFLINE_SAMPLERS (samplers of the offline stage, default
# "ddpm:100 ddpm:10 ddim:10"; empty skips it), OFFLINE_WINDOWS (held-out windows it samples, default 256), VIDEOS (record the
# first N episodes, 0 none; default all), NUM_ENVS (env worker processes of each rollout), ROLLOUT_PARALLEL=1 (the samplers'
# rollouts side by side, each with NUM_ENVS workers, logs in OUT_DIR/rollout_<name>.log), CAMERAS (cameras recorded
# in the demos, e.g. "head_camera_agent0 head_camera_agent1"; default all of the task's), ROLLOUT_ARGS (more
# rollout.py options, e.g. "--execute-steps 6"), ROLLOUT_UNTIL (a time in seconds since the epoch after which no
# rollout episode starts: each rollout gets --max-minutes up to it, e.g. the end of a machine booking), ARCHITECTURE
# (local-separate, the default; global-separate, local-shared, global-shared: README, Multi-agent architectures) and INCLUDE_GLOBAL_CAMERA=1 (the global camera
# beside each policy's own cameras), both given to conversion, from which training and rollout take them.
# Each stage prints its wall time when it ends, and a summary of all of them closes the run.
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
RUN_START=$SECONDS STAGE_START=$SECONDS STAGE_NAME="" TIMINGS=()
stage() {  # stage "<name>": closes the running stage (printing its wall time) and starts the next
  local now=$SECONDS
  if [ -n "$STAGE_NAME" ]; then
    TIMINGS+=("$(printf '%-10s %4d s' "$STAGE_NAME" $((now - STAGE_START)))")
    echo "   ($STAGE_NAME: $((now - STAGE_START)) s, $((now - RUN_START)) s since the start)"
  fi
  STAGE_NAME=$1 STAGE_START=$now
}
STEP_CAP=()
[ -n "${MAX_STEPS:-}" ] && STEP_CAP=(--max-episode-steps "$MAX_STEPS")
TRAIN_EXTRA=(${TRAIN_ARGS:-})
[ -n "${TRAIN_MINUTES:-}" ] && TRAIN_EXTRA+=(--max-minutes "$TRAIN_MINUTES")
VIDEO_CAP=(--record-video)  # VIDEOS=0: no video
[ -n "${VIDEOS:-}" ] && VIDEO_CAP+=(--video-episodes "$VIDEOS")
[ "${VIDEOS:-}" = 0 ] && VIDEO_CAP=()
DEMO_SOURCE=()
[ -n "${CAMERAS:-}" ] && DEMO_SOURCE=(--cameras $CAMERAS)
stage demos
DEMOS=$OUT/demos
if [ -n "${DEMOS_DIR:-}" ]; then
  DEMOS=$DEMOS_DIR
  echo "== 1/5 demos: the rendered episodes of $DEMOS (DEMOS_DIR)"
elif [ -n "${DEMOS_FROM:-}" ]; then
  DEMO_SOURCE+=(--replay-from "$DEMOS_FROM")
  echo "== 1/5 demos: rendering the episodes of $DEMOS_FROM at ${W}x${H}, $PROCS processes"
else
  echo "== 1/5 demos: $NUM motion-planned $TASK episodes at ${W}x${H}, $PROCS processes"
fi
if [ -z "${DEMOS_DIR:-}" ]; then
  rm -rf "$OUT/demos"
  $PY scripts/generate_data.py --task "$TASK" --num "$NUM" --num-procs "$PROCS" --camera-width "$W" \
    --camera-height "$H" --out "$OUT/demos" "${DEMO_SOURCE[@]}"
fi
ARCH_FLAGS=(--architecture "${ARCHITECTURE:-local-separate}")
[ "${INCLUDE_GLOBAL_CAMERA:-0}" = 1 ] && ARCH_FLAGS+=(--include-global-camera)
stage convert
echo "== 2/5 convert: one zarr per policy (${ARCH_FLAGS[*]})"
rm -rf "$OUT/zarr"
$PY scripts/convert_to_zarr.py --task "$TASK" --all-agents --demos "$DEMOS" --out "$OUT/zarr" --overwrite \
  "${ARCH_FLAGS[@]}"
stage train
echo "== 3/5 train: every agent, preset $PRESET, $EPOCHS epochs${TRAIN_MINUTES:+, at most $TRAIN_MINUTES minutes each}"
rm -rf "$OUT/checkpoints"
if [ "${TRAIN_PARALLEL:-0}" = 1 ]; then
  pids=()
  for zarr in "$OUT/zarr/${TASK}"_*.zarr; do  # this run's datasets only: <task>_Agent<i>[tag]_<n> or <task>_Shared[tag]_<n>
    run=$(basename "$zarr"); run=${run%_*}; policy=${run#"${TASK}"_}; who=()
    case $policy in Agent*) id=${policy#Agent}; who=(--agent-id "${id%%_*}");; esac
    ${TRAIN_THREADS:+env OMP_NUM_THREADS=$TRAIN_THREADS} $PY scripts/train.py --task "$TASK" "${who[@]}" --preset "$PRESET" --epochs "$EPOCHS" --zarr-path "$zarr" \
      --output-dir "$OUT/checkpoints/$run" --no-progress "${TRAIN_EXTRA[@]}" > "$OUT/train_${policy,,}.log" 2>&1 &
    pids+=($!)
  done
  for pid in "${pids[@]}"; do wait "$pid"; done
  tail -n 3 "$OUT"/train_*.log
else
  $PY scripts/train.py --task "$TASK" --all-agents --preset "$PRESET" --epochs "$EPOCHS" --data-root "$OUT/zarr" \
    --output-dir "$OUT/checkpoints" "${ARCH_FLAGS[@]}" "${TRAIN_EXTRA[@]}"
fi
FIRST_RUN=$(ls -d "$OUT/checkpoints/${TASK}"_* | head -n 1)
stage offline
OFFLINE_SAMPLERS=${OFFLINE_SAMPLERS-ddpm:100 ddpm:10 ddim:10}
if [ -n "$OFFLINE_SAMPLERS" ]; then
  echo "== 4/5 offline action error per sampler, held-out episodes of $(basename "$FIRST_RUN")"
  $PY scripts/offline_eval.py "$FIRST_RUN" --samplers $OFFLINE_SAMPLERS \
    --max-windows "${OFFLINE_WINDOWS:-256}" --output "$OUT/offline_eval.json"
else
  echo "== 4/5 offline action error: skipped (OFFLINE_SAMPLERS is empty)"
fi
stage rollout
side=""; [ "${ROLLOUT_PARALLEL:-0}" = 1 ] && side=", the samplers side by side"
echo "== 5/5 rollout: $EPISODES episodes (or the count a sampler names) from seed $SEED$([ "${VIDEOS:-}" = 0 ] || echo ", with video")$side"
UNTIL=()
if [ -n "${ROLLOUT_UNTIL:-}" ]; then
  left=$((ROLLOUT_UNTIL - $(date +%s)))
  [ "$left" -gt 6 ] || { echo "ROLLOUT_UNTIL has passed ($left s left): no rollout" >&2; exit 1; }
  UNTIL=(--max-minutes "$(awk "BEGIN { print $left / 60 }")")
  echo "   no episode starts after $(date -d "@$ROLLOUT_UNTIL" +%T) (ROLLOUT_UNTIL: ${UNTIL[*]})"
fi
pids=()
for spec in ${SAMPLERS:-own}; do
  base=${spec%%,*} opts=(); [ "$base" = "$spec" ] || IFS=, read -ra opts <<< "${spec#*,}"
  IFS=: read -r sampler steps episodes <<< "$base"
  name=results; args=(); videos=$OUT/videos
  if [ "$sampler" != own ]; then
    [ -n "${steps:-}" ] || { echo "SAMPLERS: '$spec' is not sampler:steps[:episodes][,option...]" >&2; exit 2; }
    name=results_$sampler$steps; args=(--sampler "$sampler" --num-inference-steps "$steps")
  fi
  for opt in "${opts[@]}"; do  # chunk execution: execute=K (first K actions of each chunk), ensemble=M (ACT's)
    case $opt in
      execute=?*) args+=(--execute-steps "${opt#*=}"); name+=_execute${opt#*=} ;;
      ensemble=?*) args+=(--temporal-ensemble "${opt#*=}"); name+=_ensemble${opt#*=} ;;
      *) echo "SAMPLERS: '$opt' in '$spec' is not execute=K or ensemble=M" >&2; exit 2 ;;
    esac
  done
  [ "$name" = results ] || videos=$OUT/videos_$name
  cmd=($PY scripts/rollout.py --task "$TASK" --checkpoint-dir "$OUT/checkpoints" --num-episodes "${episodes:-$EPISODES}" \
    --seed "$SEED" --num-envs "$ENVS" "${STEP_CAP[@]}" "${args[@]}" "${VIDEO_CAP[@]}" \
    --video-dir "$videos" --output "$OUT/$name.json" "${UNTIL[@]}" ${ROLLOUT_ARGS:-})
  if [ "${ROLLOUT_PARALLEL:-0}" = 1 ]; then
    "${cmd[@]}" > "$OUT/rollout_$name.log" 2>&1 &
    pids+=($!)
  else
    "${cmd[@]}"
  fi
done
failed=0
for pid in "${pids[@]}"; do wait "$pid" || failed=1; done
[ "${#pids[@]}" -gt 0 ] && tail -n 4 "$OUT"/rollout_*.log
[ "$failed" = 0 ] || { echo "a rollout failed: see $OUT/rollout_*.log" >&2; exit 1; }
stage ""
echo "== wall time per stage"
printf '   %s\n' "${TIMINGS[@]}"
printf '   %-10s %4d s\n' total $((SECONDS - RUN_START))
echo "results: $(ls "$OUT"/results*.json "$OUT"/offline_eval.json 2>/dev/null | tr '\n' ' ')"
[ "${VIDEOS:-}" = 0 ] || ls "$OUT"/videos*/"$TASK"/*.mp4
