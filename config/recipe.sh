#!/usr/bin/env bash
# RCD against an equally trained baseline, end to end, every training seed side by side on one GPU:
#   1. stage 1, one model per seed;
#   2. stage 2 from each: the baseline (stage 1 continued with stage 2's data, iterations and schedule, alpha = 0) and
#      two RCD arms: `rcd` (the reference reads the same x_t, as in the paper) and `rcd_aligned` (a step-aligned
#      reference, --reference_extra_mask=0.25);
#   3. on val, first seed only: RCD's decoding knobs (first step x T_res) for each arm; the best mean accuracy over a
#      few tokens-per-step settings, among the first steps that cost no extra forward pass, is used on test;
#   4. on test, every arm and seed over the whole sweep (static tokens per step and confidence thresholds);
#   5. paired differences to the baseline per setting and seed, the plot, and how much the residual lowers each RCD
#      arm's stage-2 loss (the same weights scored with and without residuals).
#
#   bash config/recipe.sh gpu                    # Sudoku, 3 seeds, one GPU
#   bash config/recipe.sh cpu                    # 2 CPU cores: a toy of the same pipeline, 1 seed (poor numbers)
#   TASK=reasoning bash config/recipe.sh gpu     # the arithmetic task (block 8), where RCD does not pay
# Knobs (environment): SEEDS ["1 2 3" gpu, "1" cpu], STAGE1_ITERS (gpu) [4000], STAGE2_ITERS [1000 gpu, 60 cpu],
# JOBS (processes at once) [12 gpu, 1 cpu], RUN_DIR [out/recipe_<task>_<mode>]. A step whose output exists is
# skipped: a rerun resumes.
set -euo pipefail
MODE=${1:-gpu}; TASK=${TASK:-sudoku}
case $TASK in
  sudoku) S1=(config/sudoku_gpu.py); K_SWEEP=1,2,4,8,16,32; K_VAL=1,4,16 ;;
  reasoning) S1=(config/reasoning_gpu.py); K_SWEEP=1,2,4,8; K_VAL=1,2,4 ;;
  *) echo "usage: TASK=sudoku|reasoning bash config/recipe.sh gpu|cpu" >&2; exit 2 ;;
esac
case $MODE in
  gpu) SEEDS=${SEEDS:-1 2 3}; ITERS=${STAGE2_ITERS:-1000}; JOBS=${JOBS:-12}; S2=(); N=()
       [ -z "${STAGE1_ITERS:-}" ] || S1+=(--max_iters="$STAGE1_ITERS" --lr_decay_iters="$STAGE1_ITERS")
       T_VAL="0.5 1.0 2.0"; EXTRA_PASS="self reference"; THRESHOLDS=0.9,0.7,0.5; LOSS_ITERS=50 ;;
  cpu) SEEDS=${SEEDS:-1}; ITERS=${STAGE2_ITERS:-60}; JOBS=${JOBS:-1}; N=(--n_problems=50 --batch_size=50)
       S1+=(config/quick_cpu.py --batch_size=16 --max_iters=150 --lr_decay_iters=150 --eval_interval=150)
       S2=(config/quick_cpu_stage2.py --batch_size=16 --eval_interval="$ITERS")
       T_VAL="1.0"; EXTRA_PASS=""; THRESHOLDS=0.7; LOSS_ITERS=10; K_SWEEP=4,16; K_VAL=16 ;;
  *) echo "usage: TASK=sudoku|reasoning bash config/recipe.sh gpu|cpu" >&2; exit 2 ;;
esac
RUN_DIR=${RUN_DIR:-out/recipe_${TASK}_$MODE}
FIRST=${SEEDS%% *}
START=$(date +%s)
mkdir -p "$RUN_DIR/logs" "$RUN_DIR/val" "$RUN_DIR/test"

PIDS=()
job() {  # job NAME CMD...: run CMD in the background (output in logs/NAME.log), at most JOBS at once
  while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do sleep 1; done
  "${@:2}" > "$RUN_DIR/logs/$1.log" 2>&1 &
  PIDS+=($!)
}
join() {  # wait for every job; stop if any failed
  local ok=1 p
  for p in "${PIDS[@]}"; do wait "$p" || ok=0; done
  PIDS=()
  [ $ok = 1 ] || { echo "a job failed: see the logs in $RUN_DIR/logs" >&2; exit 1; }
}
arm_flags() {  # what each stage-2 arm trains with
  case $1 in
    baseline) echo --alpha_mode=none ;;
    rcd) echo --alpha_mode=entropy ;;
    rcd_aligned) echo --alpha_mode=entropy --reference_extra_mask=0.25 ;;
  esac
}
ARMS="baseline rcd rcd_aligned"

[ -f "data/$TASK/train.bin" ] || python "data/$TASK/prepare.py"  # once, before the jobs that read it
echo "[$(( $(date +%s) - START )) s] stage 1, seeds $SEEDS"
for s in $SEEDS; do
  [ -f "$RUN_DIR/s$s/stage1/ckpt.pt" ] || job "stage1_s$s" python train_stage1.py "${S1[@]}" --seed="$s" \
    --out_dir="$RUN_DIR/s$s/stage1"
done; join

echo "[$(( $(date +%s) - START )) s] stage 2: $ARMS"
for s in $SEEDS; do
  D=$RUN_DIR/s$s
  for arm in $ARMS; do
    # shellcheck disable=SC2046
    [ -f "$D/$arm/ckpt.pt" ] || job "${arm}_s$s" python train_stage2.py "${S2[@]}" --dataset="$TASK" --seed="$s" \
      --max_iters="$ITERS" --lr_decay_iters="$ITERS" --init_from="$D/stage1/ckpt.pt" \
      --reference_ckpt="$D/stage1/ckpt.pt" $(arm_flags $arm) --out_dir="$D/$arm"
  done
done; join

echo "[$(( $(date +%s) - START )) s] val (seed $FIRST): RCD's first step and T_res"
D=$RUN_DIR/s$FIRST
VAL=(--split=val --tokens_per_step="$K_VAL" --thresholds= "${N[@]}")
[ -f "$RUN_DIR/val/baseline.jsonl" ] || job val_baseline python eval.py --ckpt="$D/baseline/ckpt.pt" \
  --records="$RUN_DIR/val/baseline.jsonl" "${VAL[@]}"
for arm in rcd rcd_aligned; do
  for first in zero dirichlet $EXTRA_PASS; do
    temps=$T_VAL; ref=()
    case $first in self) temps=1.0 ;; reference) temps=1.0; ref=(--reference_ckpt="$D/stage1/ckpt.pt") ;; esac
    for T in $temps; do
      out=$RUN_DIR/val/${arm}_${first}_T$T.jsonl
      [ -f "$out" ] || job "val_${arm}_${first}_T$T" python eval.py --ckpt="$D/$arm/ckpt.pt" --label="$arm" \
        --rcd=True --first_step="$first" --residual_temperature="$T" "${ref[@]}" --records="$out" "${VAL[@]}"
    done
  done
done; join
cat "$RUN_DIR"/val/*.jsonl > "$RUN_DIR/val.jsonl"
python eval.py --select="$RUN_DIR/val.jsonl" | grep -v '^config:' | tee "$RUN_DIR/val_choice.txt"

echo "[$(( $(date +%s) - START )) s] test: every arm and seed"
TEST=(--tokens_per_step="$K_SWEEP" --thresholds="$THRESHOLDS" "${N[@]}")
for s in $SEEDS; do
  D=$RUN_DIR/s$s
  [ -f "$RUN_DIR/test/baseline_s$s.jsonl" ] || job "test_baseline_s$s" python eval.py --ckpt="$D/baseline/ckpt.pt" \
    --records="$RUN_DIR/test/baseline_s$s.jsonl" "${TEST[@]}"
  while read -r arm first T _; do  # each RCD arm with the decoding chosen on val
    [ -f "$RUN_DIR/test/${arm}_s$s.jsonl" ] || job "test_${arm}_s$s" python eval.py --ckpt="$D/$arm/ckpt.pt" \
      --label="$arm" --rcd=True --first_step="$first" --residual_temperature="$T" \
      --records="$RUN_DIR/test/${arm}_s$s.jsonl" "${TEST[@]}"
  done < <(grep '^rcd' "$RUN_DIR/val_choice.txt")
done
echo "[$(( $(date +%s) - START )) s] stage-2 loss with and without residuals (seed $FIRST, val split)"
for arm in rcd rcd_aligned; do
  for frac in 1.0 0.0; do
    [ -f "$RUN_DIR/loss/${arm}_$frac/log.jsonl" ] || job "loss_${arm}_$frac" python train_stage2.py "${S2[@]}" \
      --dataset="$TASK" --init_from="$RUN_DIR/s$FIRST/$arm/ckpt.pt" --reference_ckpt="$RUN_DIR/s$FIRST/stage1/ckpt.pt" \
      $(arm_flags $arm) --residual_fraction="$frac" --eval_only=True --eval_iters="$LOSS_ITERS" \
      --out_dir="$RUN_DIR/loss/${arm}_$frac"
  done
done; join

cat "$RUN_DIR"/test/*.jsonl > "$RUN_DIR/results.jsonl"
{
  echo "# $TASK, seeds $SEEDS: paired differences to the baseline on test"
  python eval.py --compare="$RUN_DIR/results.jsonl" | grep -v '^config:'
  echo
  echo "# stage-2 val loss of each RCD model (seed $FIRST), the same weights with residuals on every row / on none"
  for arm in rcd rcd_aligned; do
    python -c "import json,sys; w, wo = (json.loads(open(f).readlines()[-1])['val_loss'] for f in sys.argv[2:]); \
print(f'{sys.argv[1]}: with {w:.4f}, without {wo:.4f}, lowered by {100 * (1 - w / wo):.1f}%')" \
      "$arm" "$RUN_DIR/loss/${arm}_1.0/log.jsonl" "$RUN_DIR/loss/${arm}_0.0/log.jsonl"
  done
} | tee "$RUN_DIR/results.md"
if python -c 'import matplotlib' 2> /dev/null; then python eval.py --plot="$RUN_DIR/results.jsonl"
else echo "note: no plot without matplotlib (pip install matplotlib); the records are in $RUN_DIR/results.jsonl"; fi
echo "recipe ($TASK, $MODE, seeds $SEEDS) done in $(( $(date +%s) - START )) s; records and tables in $RUN_DIR"
