#!/usr/bin/env bash
# RCD against an equally trained baseline on the accuracy-vs-passes frontier, every training seed side by side on
# one GPU:
#   1. stage 1, one model per seed;
#   2. stage 2 from each (the same data, iterations and schedule): `baseline` (stage 1 continued, alpha = 0),
#      `rcd_rollout_light_plain` (every row starts from a short no-grad threshold-decoding rollout of the target
#      itself; half the rows also read its residuals, alpha x 0.25, half read none) and `baseline_rollout_all`
#      (its control: the same rollout states, alpha = 0), which tells the residual's gain from the states';
#   3. every arm and seed scored on val and on test over the same grid of decoding settings (confidence thresholds,
#      tokens per step; for RCD also T_res, residuals in a block's first RES_STEPS steps only, and the residual
#      off: its model decoded by the plain sampler);
#   4. the frontier: at each budget of P passes per answer, the setting chosen on val, scored on test, paired to
#      the baseline's on the same puzzles; the ceiling (the best setting at any cost, chosen on val); each method
#      in half the passes of the baseline's ceiling; the plot; paired differences per setting.
#
#   bash config/recipe.sh gpu                        # 9x9 Sudoku (44 random blanks), 3 seeds, one GPU
#   DIG=greedy bash config/recipe.sh gpu             # the harder Sudoku (greedy digging, about 55 blanks)
#   bash config/recipe.sh cpu                        # 2 CPU cores: a toy of the same pipeline (poor numbers)
# Knobs (environment): SEEDS ["1 2 3" gpu, "1" cpu], STAGE1_ITERS [2500 gpu], STAGE2_ITERS [1000 gpu, 40 cpu],
# ARMS (also rcd: the paper's recipe, the frozen reference reads the same x_t; rcd_rollout_light: half the rows
# are rollout rows, all reading residuals, and baseline_rollout its control; rcd_rollout: the same, alpha x 1;
# rcd_rollout_mixed{,_light}: half the rollouts start at a noised state),
# FIRST_STEPS (RCD's first steps to sweep, e.g. zero,dirichlet) [zero], RES_STEPS (residual cutoffs to sweep:
# 0 = every step; 5 = the steps a 4-step rollout trains) [0,5], JOBS (processes at once) [8 gpu, 1 cpu],
# DATA (a prepared dataset directory), RUN_DIR. A step whose output exists is skipped: a rerun resumes.
set -euo pipefail
MODE=${1:-gpu}; DIG=${DIG:-random}
ARMS=${ARMS:-baseline baseline_rollout_all rcd_rollout_light_plain}
THRESHOLDS=0.5,0.7,0.9,0.95,0.97,0.99,0.999,0.9999,0.99999
case $MODE in
  gpu) SEEDS=${SEEDS:-1 2 3}; ITERS=${STAGE2_ITERS:-1000}; JOBS=${JOBS:-8}; S2=(); N=(); T_RES=1.0,2.0
       S1=(config/sudoku_gpu.py --max_iters="${STAGE1_ITERS:-2500}" --lr_decay_iters="${STAGE1_ITERS:-2500}")
       K_VAL=1,8,16,32; K_TEST=1,8,16,32 ;;
  cpu) SEEDS=${SEEDS:-1}; ITERS=${STAGE2_ITERS:-40}; JOBS=${JOBS:-1}; N=(--n_problems=40 --batch_size=40)
       S1=(config/sudoku_gpu.py --device=cpu --n_layer=2 --n_embd=64 --n_head=2 --batch_size=16 --max_iters=60
           --lr_decay_iters=60 --warmup_iters=5 --eval_interval=60 --eval_iters=2 --log_interval=20)
       S2=(--device=cpu --batch_size=16 --eval_interval="$ITERS" --eval_iters=2 --log_interval=20 --warmup_iters=5)
       T_RES=1.0; K_VAL=16,32; K_TEST=16,32; THRESHOLDS=0.7,0.99 ;;
  *) echo "usage: [DIG=random|greedy] bash config/recipe.sh gpu|cpu" >&2; exit 2 ;;
esac
RUN_DIR=${RUN_DIR:-out/recipe_sudoku_${DIG}_$MODE}
DATA=${DATA:-$RUN_DIR/data}
FIRST=${SEEDS%% *}
START=$(date +%s)
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/val" "$RUN_DIR/test"

PIDS=()
job() {  # job NAME CMD...: run CMD in the background (output in logs/NAME.log), at most JOBS at once
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  "${@:2}" > "$RUN_DIR/logs/$1.log" 2>&1 &
  PIDS+=($!)
}
first() {  # first PATTERN: the arms that match it, then the others (long jobs start first, short ones fill in)
  local arm
  for arm in $ARMS; do if [[ $arm == $1 ]]; then echo "$arm"; fi; done
  for arm in $ARMS; do if [[ $arm != $1 ]]; then echo "$arm"; fi; done
}
join() {  # wait for every job; stop if any failed
  local ok=1 p
  for p in "${PIDS[@]}"; do wait "$p" || ok=0; done
  PIDS=()
  [ $ok = 1 ] || { echo "a job failed: see the logs in $RUN_DIR/logs" >&2; exit 1; }
}
arm_flags() {  # what each stage-2 arm trains with (and decodes with: --alpha_scale, and 0)
  case $1 in
    baseline) echo --alpha_mode=none ;;
    baseline_rollout) echo --alpha_mode=none --rollout_steps=4 ;;  # light's control: its states, no residual
    baseline_rollout_all) echo --alpha_mode=none --rollout_steps=4 --residual_fraction=1.0 ;;  # plain's control
    rcd) echo --alpha_mode=entropy ;;
    rcd_rollout) echo --alpha_mode=entropy --rollout_steps=4 ;;
    rcd_rollout_light) echo --alpha_mode=entropy --rollout_steps=4 --alpha_scale=0.25 ;;
    rcd_rollout_mixed) echo --alpha_mode=entropy --rollout_steps=4 --rollout_noised=0.5 ;;  # not in the default ARMS
    rcd_rollout_mixed_light) echo --alpha_mode=entropy --rollout_steps=4 --rollout_noised=0.5 --alpha_scale=0.25 ;;
    rcd_rollout_light_plain) echo --alpha_mode=entropy --rollout_steps=4 --alpha_scale=0.25 --residual_fraction=1.0 \
      --rollout_plain=0.5 ;;  # light's residual rows and the control's rows, half each
    *) echo "unknown arm '$1'" >&2; exit 2 ;;
  esac
}
for arm in $ARMS; do arm_flags "$arm" > /dev/null; done  # an unknown arm stops here, before any work
scale_of() { case $1 in *_light*) echo 0.25 ;; *) echo 1.0 ;; esac; }

if [ ! -f "$DATA/train.bin" ]; then
  case $MODE in
    gpu) python data/sudoku/prepare.py --dig="$DIG" --out_dir="$DATA" ;;
    cpu) python data/sudoku/prepare.py --dig="$DIG" --n_train=2000 --n_val=40 --n_test=40 --out_dir="$DATA" ;;
  esac
fi
echo "[$(( $(date +%s) - START )) s] stage 1, seeds $SEEDS"
for s in $SEEDS; do
  [ -f "$RUN_DIR/s$s/stage1/ckpt.pt" ] || job "stage1_s$s" python train_stage1.py "${S1[@]}" --dataset="$DATA" \
    --seed="$s" --out_dir="$RUN_DIR/s$s/stage1"
done; join

echo "[$(( $(date +%s) - START )) s] stage 2: $ARMS"
for arm in $(first '*rollout*'); do  # the rollout arms are the long jobs
  for s in $SEEDS; do
    D=$RUN_DIR/s$s
    # shellcheck disable=SC2046
    [ -f "$D/$arm/ckpt.pt" ] || job "${arm}_s$s" python train_stage2.py "${S2[@]}" --dataset="$DATA" --seed="$s" \
      --max_iters="$ITERS" --lr_decay_iters="$ITERS" --init_from="$D/stage1/ckpt.pt" \
      --reference_ckpt="$D/stage1/ckpt.pt" $(arm_flags "$arm") --out_dir="$D/$arm"
  done
done; join

echo "[$(( $(date +%s) - START )) s] val and test: every arm and seed over the decoding grid"
for arm in $(first 'rcd*'); do  # the RCD arms' sweeps are the long jobs
  rcd=()  # the baselines decode with the plain sampler; RCD arms sweep their knobs too
  case $arm in baseline*) ;; *) rcd=(--use_rcd=True --alpha_scales="$(scale_of "$arm"),0" \
    --residual_temperatures="$T_RES" --first_steps="${FIRST_STEPS:-zero}" --residual_steps="${RES_STEPS:-0,5}") ;;
  esac
  for split in val test; do
    K=$K_TEST; [ $split = val ] && K=$K_VAL
    for s in $SEEDS; do
      out=$RUN_DIR/$split/${arm}_s$s.jsonl
      [ -f "$out" ] || job "${split}_${arm}_s$s" python eval.py --ckpt="$RUN_DIR/s$s/$arm/ckpt.pt" --label="$arm" \
        --split=$split "${rcd[@]}" --tokens_per_step_grid="$K" --threshold_grid="$THRESHOLDS" "${N[@]}" \
        --records="$out"
    done
  done
done; join
for split in val test; do
  cat "$RUN_DIR/$split"/*.jsonl > "$RUN_DIR/$split.jsonl"
done

{
  echo "# Sudoku ($DIG digging), seeds $SEEDS"
  echo
  python eval.py --report="$RUN_DIR/test.jsonl" --val="$RUN_DIR/val.jsonl" | grep -v '^config:'
} | tee "$RUN_DIR/results.md"
if python -c 'import matplotlib' 2> /dev/null; then python eval.py --plot="$RUN_DIR/test.jsonl" --val="$RUN_DIR/val.jsonl"
else echo "note: no plot without matplotlib (pip install matplotlib); the records are in $RUN_DIR/test.jsonl"; fi
echo "recipe (sudoku $DIG, $MODE, seeds $SEEDS) done in $(( $(date +%s) - START )) s; tables in $RUN_DIR/results.md"
