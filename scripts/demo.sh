#!/usr/bin/env bash
# Set up (idempotent), generate the simulated demo datasets, recompute their reward statistics and
# train a short RWFM + anchor run with the tiny offline SmolVLA on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MUJOCO_GL="${MUJOCO_GL:-egl}"
py=.venv/bin/python
data=data/demo
manifest=crab/training/docs/dataset_manifest_cycle1_with_cracked.csv
stats=$data/reward_weighting_stats_cycle1_with_cracked.json
run=demo_rwfm_anchor_with_cracked

if [ ! -f "$data/.complete" ]; then
    rm -rf "$data"
    $py -m crab.sim.generate --out "$data" --episodes-per-dataset 8 --seed 0
    touch "$data/.complete"
fi
$py -m crab.training.reward_stats --manifest "$manifest" --data-root "$data" --chunk-size 10 --out "$stats" \
    --alpha 4 --clip-min 0  # the cycle configs' weighting, for the printed shares
rm -rf "outputs/$run"
$py crab/training/train.py \
    --config crab/training/configs/train_cycle1_rwfm_anchor_cracked_factor.yaml \
    --config crab/training/configs/demo_overrides.yaml \
    --set run_name=$run --set data.reward_stats="$stats"
echo
echo "demo data:        $data (manifests: crab/training/docs/dataset_manifest*.csv, statistics: $stats)"
echo "epoch summaries:  outputs/$run/epoch_summary.{json,jsonl,csv}"
echo "plots:            outputs/$run/plots/"
echo "checkpoints:      $(ls -d outputs/$run/step_* | tr '\n' ' ')"
