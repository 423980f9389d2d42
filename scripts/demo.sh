#!/usr/bin/env bash
# Set up (idempotent), generate the simulated demo datasets, recompute their reward statistics, train an
# RWFM + anchor run with the tiny offline SmolVLA on the CPU (about four minutes), then evaluate its final
# checkpoint in closed loop in the simulator.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 MUJOCO_GL="${MUJOCO_GL:-egl}"
py=.venv/bin/python
episodes=20  # per dataset
data=data/demo
manifest=crab/training/docs/dataset_manifest_cycle1_with_cracked.csv
stats=$data/reward_weighting_stats_cycle1_with_cracked.json
run=demo_rwfm_anchor_with_cracked
start=$SECONDS

if [ ! -f "$data/.complete-$episodes" ]; then
    rm -rf "$data"
    # Only the datasets the demo's manifest names (the others serve the benchmarks): 0 episodes skips one.
    $py -m crab.sim.generate --out "$data" --episodes-per-dataset $episodes --seed 0 \
        --count egg_carton_to_tray_failed=0 --count close_the_carton=0 --count egg_carton_to_tray_sloppy=0 \
        --count egg_carton_to_tray_squeezed=0 --count egg_carton_to_tray_tightened=0
    touch "$data/.complete-$episodes"
fi
$py -m crab.training.reward_stats --manifest "$manifest" --data-root "$data" --chunk-size 10 --out "$stats" \
    --alpha 4 --clip-min 0  # the cycle configs' weighting, for the printed shares
rm -rf "outputs/$run"
$py crab/training/train.py \
    --config crab/training/configs/train_cycle1_rwfm_anchor_cracked_factor.yaml \
    --config crab/training/configs/demo_overrides.yaml \
    --set run_name=$run --set data.reward_stats="$stats"
checkpoint=$(ls -d outputs/$run/step_* | tail -n 1)
echo
echo "closed-loop evaluation of $checkpoint (20 seeded episodes per task, new scenes):"
$py -m crab.sim.policy_eval --checkpoint "$checkpoint" --episodes 20 --n-action-steps 5 --out "outputs/$run/eval.json" \
    --task "Put the egg into the tray." --task "Open the carton."  # the tasks of the run's manifest
echo
echo "demo done in $((SECONDS - start)) s"
echo "plots:            outputs/$run/plots/overview.png (losses, validation loss per quality group), more beside it"
echo "epoch summaries:  outputs/$run/epoch_summary.{json,jsonl,csv}; interval log: outputs/$run/train_log.jsonl"
echo "checkpoints:      $(ls -d outputs/$run/step_* | tr '\n' ' ')"
echo "next:             python -m crab.sim.compare --help  (RWFM against imitation learning and filtering, 3 seeds)"
