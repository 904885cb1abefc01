#!/usr/bin/env bash
# RCD against an equally trained baseline on the reasoning dataset, end to end: stage 1, stage 2 (RCD), the baseline
# (stage 1 continued for the same iterations, batch and schedule as stage 2, with alpha = 0), the decoding sweep over
# the test split for both with the same sampler, and the plot.
#
#   bash config/recipe.sh gpu        # one GPU (an H100: about 7 minutes)
#   bash config/recipe.sh cpu        # 2 CPU cores: a toy that runs the same pipeline (the numbers are poor)
#
# Ablations, one value each (environment variables; defaults in brackets). Models already trained under RUN_DIR are
# reused, so an ablation after the main run costs only its own stage 2 and sweep:
#   ALPHA=entropy|confidence|constant|none   the residual weight, in stage 2 and in sampling [entropy]
#   WARM=1                                    warm-start each block's first step from the stage-1 model [0]
#   REF=small                                 stage 2's reference: a separately trained 2-layer stage-1 model [stage1]
#   REF=self                                  residuals from the target's own current predictions
#   BLOCK=4|8|16                              diffusion block size of every model [8]
#   STAGE2_ITERS=N                            stage-2 and baseline iterations [1000 gpu, 150 cpu]
#   RUN_DIR=dir                               checkpoints, records, plot [out/recipe_<mode>_b<BLOCK>]
set -euo pipefail
MODE=${1:-gpu}
ALPHA=${ALPHA:-entropy}; WARM=${WARM:-0}; REF=${REF:-stage1}; BLOCK=${BLOCK:-8}
case $MODE in
  gpu) S1=(config/reasoning_gpu.py); S2=(); N_TEST=0; ITERS=${STAGE2_ITERS:-1000} ;;
  cpu) S1=(config/quick_cpu.py); S2=(config/quick_cpu_stage2.py); N_TEST=200; ITERS=${STAGE2_ITERS:-150} ;;
  *) echo "usage: bash config/recipe.sh gpu|cpu" >&2; exit 2 ;;
esac
RUN_DIR=${RUN_DIR:-out/recipe_${MODE}_b$BLOCK}
S1+=(--block_size="$BLOCK")
S2+=(--max_iters="$ITERS" --lr_decay_iters="$ITERS" --init_from="$RUN_DIR/stage1/ckpt.pt")
EVAL=(--n_test="$N_TEST")
START=$(date +%s)
mkdir -p "$RUN_DIR"

[ -f "$RUN_DIR/stage1/ckpt.pt" ] || python train_stage1.py "${S1[@]}" --out_dir="$RUN_DIR/stage1"
# the baseline: stage 1 continued with exactly stage 2's data, iterations and schedule, without residuals
[ -f "$RUN_DIR/baseline_$ITERS/ckpt.pt" ] || python train_stage2.py "${S2[@]}" --reference_ckpt="$RUN_DIR/stage1/ckpt.pt" \
  --alpha_mode=none --out_dir="$RUN_DIR/baseline_$ITERS"
[ -f "$RUN_DIR/baseline_$ITERS.jsonl" ] || python eval.py --ckpt="$RUN_DIR/baseline_$ITERS/ckpt.pt" --label=baseline \
  --records="$RUN_DIR/baseline_$ITERS.jsonl" "${EVAL[@]}"

REF_CKPT=$RUN_DIR/stage1/ckpt.pt
if [ "$REF" = small ]; then
  REF_CKPT=$RUN_DIR/reference_small/ckpt.pt
  [ -f "$REF_CKPT" ] || python train_stage1.py "${S1[@]}" --n_layer=2 --out_dir="$RUN_DIR/reference_small"
elif [ "$REF" = self ]; then
  REF_CKPT=self
fi
RCD=$RUN_DIR/rcd_${ALPHA}_ref-${REF}_$ITERS
[ -f "$RCD/ckpt.pt" ] || python train_stage2.py "${S2[@]}" --reference_ckpt="$REF_CKPT" --alpha_mode="$ALPHA" \
  --out_dir="$RCD"

RECORDS=$RCD/results.jsonl; LABEL="RCD ($ALPHA)"; WARM_ARGS=()
if [ "$WARM" = 1 ]; then
  RECORDS=$RCD/results_warm.jsonl; LABEL="RCD ($ALPHA, warm start)"; WARM_ARGS=(--warm_start="$RUN_DIR/stage1/ckpt.pt")
fi
cp "$RUN_DIR/baseline_$ITERS.jsonl" "$RECORDS"
python eval.py --ckpt="$RCD/ckpt.pt" --label="$LABEL" --rcd=True --alpha_mode="$ALPHA" --records="$RECORDS" \
  "${WARM_ARGS[@]}" "${EVAL[@]}"
python eval.py --plot="$RECORDS" || echo "(no plot without matplotlib; the records are in $RECORDS)"
echo "recipe ($MODE, block $BLOCK, alpha $ALPHA, reference $REF, warm start $WARM) done in $(( $(date +%s) - START )) s"
echo "records: $RECORDS"
