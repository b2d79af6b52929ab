#!/usr/bin/env bash
# The AccumulateGrad stream warning before and after the graphed step's fix: the default preset on a seed-size
# synthetic zarr, CUDA graphs on (the default on CUDA), one process each, the same data.
# .devkit/site-train.tar.xz: the device kit's site.tar.xz (tools/device-kit.sh) without mani_skill, sapien, lxml, trimesh and
# the kinematics packages, which training does not import; .gpurun/graphed_before.py: graphed.py before the fix.
set -u
ROOT=$PWD O=${OUT:-/tmp/out}
mkdir -p /tmp/site && tar -xJf .devkit/site-train.tar.xz -C /tmp/site
rm -rf /tmp/before && mkdir -p /tmp/before && cp -r rf_dp_agents scripts envs pyproject.toml /tmp/before/
cp .gpurun/graphed_before.py /tmp/before/rf_dp_agents/training/graphed.py
export PYTHONUNBUFFERED=1
PYTHONPATH=/tmp/site:$ROOT python3 -c "from rf_dp_agents.data.synthetic import write_synthetic_dataset as w; w('/tmp/syn.zarr', n_episodes=24, episode_length=100, image_hw=(240, 320))"
for side in after before; do
  code=$ROOT; [ $side = before ] && code=/tmp/before
  ( cd $code && PYTHONPATH=/tmp/site:$code timeout 100 python3 scripts/train.py --preset default --zarr-path /tmp/syn.zarr \
      --output-dir /tmp/run_$side --epochs 2 --no-progress > $O/train_$side.log 2>&1; echo "rc=$?" >> $O/train_$side.log )
  echo "$side: $(grep -c 'AccumulateGrad' $O/train_$side.log) warning lines; $(grep -E 'epoch [0-9]+:|samples/s|rc=' $O/train_$side.log | tail -4 | cut -c1-200)"
done
