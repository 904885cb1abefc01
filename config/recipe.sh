#!/usr/bin/env bash
# The README's result: RCD against equally trained baselines on the accuracy-vs-passes frontier.
#   1. data (a data seed of its own), then stage 1, one model per training seed;
#   2. stage 2 from each, same data and schedule, one arm each (config/<arm>.py):
#        baseline       stage 1 continued (alpha = 0), STAGE2_ITERS iterations
#        baseline_long  the same for LONG_ITERS iterations: the rollout arms' compute (a rollout
#                       step costs 1.755 stage-1 steps: bench.py --sizes=sudoku, one H100)
#        rcd_paper      the paper's stage 2: the frozen stage-1 reference reads the same x_t,
#                       entropy alpha, every row a residual row
#        onpolicy       every row starts from a 0-4-step no-grad threshold-decoding rollout of the
#                       target itself, alpha = 0: decoding's own states, no residual
#        rcd_onpolicy   the same states; half the rows also read the rollout's residual
#                       (alpha x 0.25)
#        rcd_paper_alpha025  rcd_paper trained at alpha x 0.25 (not in the default ARMS)
#   3. every arm and seed decoded on val and test over the same menu of commit rules; an RCD arm
#      twice, residual on (the paper's decoding: a residual at every step) and off (`<arm>_off`);
#      rcd_paper also once per FIRST_STEPS init (`rcd_paper_<init>`, the paper's Table 5).
#      Each job starts as soon as what it reads exists (JOBS at once), not when a phase is done;
#   4. eval.py --report: each row's AUF, the paired differences, the claim; the plot.
# Two tasks, side by side in one run: hard (greedy digging, about 55 blanks) and easy (44 random
# blanks), each with its own data and seeds, in RUN_DIR/hard and RUN_DIR/easy.
#
#   bash config/recipe.sh gpu                     # the protocol: hard 5 seeds, easy 3 seeds
#   EASY_SEEDS= HARD_SEEDS="1 2" bash config/recipe.sh gpu   # the hard task alone, 2 seeds
#   bash config/recipe.sh cpu                     # 2 CPU cores: a toy of the same pipeline
# One 55-blank seed took 535-572 s and two side by side 942-1012 s on one H100 or H200: the 8 seeds
# need about an hour on one GPU. Run them in parts in one clone and read the parts' records,
# concatenated, with eval.py --report --val.
# Knobs (environment): HARD_SEEDS ["1 2 3 4 5" gpu, "" cpu], EASY_SEEDS ["1 2 3" gpu, "1" cpu],
# DATA_SEED [2026], ARMS [all five], STAGE1_ITERS [2500], STAGE2_ITERS [1000], LONG_ITERS [1755],
# GPUS [the GPUs nvidia-smi lists, gpu; 0, cpu], JOBS [8 per GPU, gpu; 1, cpu], RUN_DIR,
# FIRST_STEPS [none; of reference self dirichlet: rcd_paper's warm first steps]. A finished
# step is skipped and a cut one starts again: a rerun resumes.
set -euo pipefail
MODE=${1:-gpu}; DATA_SEED=${DATA_SEED:-2026}
ARMS=${ARMS:-baseline baseline_long rcd_paper onpolicy rcd_onpolicy}
THRESHOLDS=0.5,0.6,0.7,0.75,0.8,0.85,0.9,0.925,0.95,0.97,0.98,0.99,0.995,0.9975,0.999,0.9995
THRESHOLDS=$THRESHOLDS,0.9998,0.9999,0.99995,0.99998,0.99999
K=1,2,4,8,16,32
case $MODE in
  gpu) HARD=${HARD_SEEDS-1 2 3 4 5}; EASY=${EASY_SEEDS-1 2 3}
       GPUS=${GPUS:-$(nvidia-smi -L 2> /dev/null | grep -c '^GPU' || true)}; GPUS=${GPUS:-0}
       ITERS=${STAGE2_ITERS:-1000}; LONG=${LONG_ITERS:-1755}
       S1=(--max_iters="${STAGE1_ITERS:-2500}" --lr_decay_iters="${STAGE1_ITERS:-2500}")
       S2=(); N=()
       PREP=() ;;
  cpu) HARD=${HARD_SEEDS-}; EASY=${EASY_SEEDS-1}; GPUS=0; JOBS=${JOBS:-1}
       ITERS=${STAGE2_ITERS:-40}; LONG=${LONG_ITERS:-70}
       S1=(--device=cpu --n_layer=2 --n_embd=64 --n_head=2 --batch_size=16 --max_iters=60
           --lr_decay_iters=60 --warmup_iters=5 --eval_interval=60 --eval_iters=2 --log_interval=20)
       S2=(--device=cpu --batch_size=16 --eval_interval=40 --eval_iters=2 --log_interval=20
           --warmup_iters=5)
       N=(--n_problems=40 --batch_size=40); PREP=(--n_train=2000 --n_val=40 --n_test=40)
       THRESHOLDS=0.7,0.99; K=16,32 ;;
  *) echo "usage: [HARD_SEEDS=...] [EASY_SEEDS=...] bash config/recipe.sh gpu|cpu" >&2; exit 2 ;;
esac
[[ $GPUS =~ ^([0-9]|10)$ ]] || { echo "GPUS='$GPUS' must be a whole number 0..10" >&2; exit 2; }
if [ "$MODE" = gpu ]; then JOBS=${JOBS:-$(( 8 * (GPUS > 0 ? GPUS : 1) ))}; fi
[[ $JOBS =~ ^[1-9][0-9]*$ ]] || { echo "JOBS='$JOBS' must be a whole number >= 1" >&2; exit 2; }
for seeds in "$HARD" "$EASY"; do
  [[ $seeds =~ ^\ *([0-9]+(\ +[0-9]+)*)?\ *$ ]] || {
    echo "HARD_SEEDS / EASY_SEEDS='$seeds' must be seeds, e.g. '1 2 3'" >&2; exit 2; }
done
[ -n "${HARD// }${EASY// }" ] || { echo "HARD_SEEDS and EASY_SEEDS are both empty" >&2; exit 2; }
WARMUP=$([ "$MODE" = gpu ] && echo 50 || echo 5)  # stage 2's warm-up iterations
for n in "$ITERS" "$LONG"; do  # checked before any work: a bad value must not surface after stage 1
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge "$WARMUP" ] || {
    echo "STAGE2_ITERS and LONG_ITERS must be whole numbers >= $WARMUP, the warm-up (got $n)" >&2
    exit 2; }
done
arm_flags() {  # what each stage-2 arm trains with: its config file, then its schedule
  local n=$ITERS
  [ "$1" = baseline_long ] && n=$LONG
  [ -f "config/$1.py" ] || {
    echo "unknown arm '$1' (arms: baseline baseline_long rcd_paper rcd_paper_alpha025" \
      "onpolicy rcd_onpolicy)" >&2
    exit 2; }
  echo "config/$1.py" --max_iters="$n" --lr_decay_iters="$n"
}
decode_flags() {  # RCD arms decode at their trained alpha scale and at 0 (the `_off` row)
  case $1 in
    rcd_paper) echo --use_rcd=True --alpha_scales=1.0,0 ;;
    rcd_paper_alpha025|rcd_onpolicy) echo --use_rcd=True --alpha_scales=0.25,0 ;;
  esac
}
for f in ${FIRST_STEPS:-}; do  # as are first steps other than the warm ones
  case $f in reference|self|dirichlet) ;; *)
    echo "FIRST_STEPS='${FIRST_STEPS:-}' must name reference, self or dirichlet" >&2; exit 2 ;;
  esac
done
for arm in $ARMS; do  # an unknown arm stops here, before any work
  arm_flags "$arm" > /dev/null
done
RUN_DIR=${RUN_DIR:-out/recipe_$MODE}
START=$(date +%s)
mkdir -p "$RUN_DIR"

# JOBS slots, shared by every background job: a FIFO holds one token per free slot, the GPU that
# slot runs on (round robin over GPUS; '-' without GPUs). One character each: concurrent readers
# of a FIFO would interleave the bytes of longer tokens
mkfifo "$RUN_DIR/.slots" && exec 3<> "$RUN_DIR/.slots" && rm "$RUN_DIR/.slots"
for i in $(seq 0 $(( JOBS - 1 ))); do
  if [ "$GPUS" -gt 0 ]; then printf %s $(( i % GPUS )) >&3; else printf %s - >&3; fi
done
rm -f "$RUN_DIR"/*/logs/*.failed
job() {  # job TASK NAME CMD...: CMD in a slot (TASK/logs/NAME.log); a failure leaves NAME.failed
  local rc=0 gpu t0 t1
  read -r -n 1 -u 3 gpu
  local dev=${gpu#-}  # the slot's GPU, or none
  t0=$(date +%s)
  env ${dev:+CUDA_VISIBLE_DEVICES="$dev"} "${@:3}" > "$1/logs/$2.log" 2>&1 || rc=$?
  printf %s "$gpu" >&3
  t1=$(date +%s)
  echo "$2 $(( t0 - START )) $(( t1 - START ))" >> "$1/logs/times.txt"  # start, end (s)
  local what="${1##*/} $2: $(( t1 - t0 )) s"  # progress: one line per finished job
  if [ $rc -ne 0 ]; then
    say "$what, FAILED (${1##*/}/logs/$2.log)"
    touch "$1/logs/$2.failed"
    return 1
  fi
  say "$what"
}
train() {  # train TASK NAME SCRIPT DIR ARGS...: skip a finished run, resume a cut one
  local dir=$4 resume=()
  [ -f "$dir/DONE" ] && return 0
  [ -f "$dir/ckpt.pt" ] && resume=(--init_from=resume)
  job "$1" "$2" python "$3" "${@:5}" --out_dir="$dir" "${resume[@]}" && touch "$dir/DONE"
}
sweep() {  # sweep TASK ARM SEED SPLIT [INIT]: the arm's records over the menu, written whole or
  # not at all; with INIT, rcd_paper decoded with that first step (its own row, rcd_paper_INIT)
  local label=$2${5:+_$5} flags
  local out=$1/$4/${label}_s$3.jsonl
  [ -f "$out" ] && return 0
  rm -f "$out.part"
  flags=$(decode_flags "$2")
  if [ -n "${5:-}" ]; then flags="--use_rcd=True --alpha_scales=1.0 --first_steps=$5"; fi
  if [ "${5:-}" = reference ]; then flags="$flags --reference_ckpt=$1/s$3/stage1/ckpt.pt"; fi
  # shellcheck disable=SC2086
  job "$1" "$4_${label}_s$3" python eval.py --ckpt="$1/s$3/$2/ckpt.pt" --label="$label" \
    --split="$4" $flags --tokens_per_step_grid="$K" --threshold_grid="$THRESHOLDS" "${N[@]}" \
    --records="$out.part" && mv "$out.part" "$out"
}
arm() {  # arm TASK ARM SEED: stage 2, then its val and test sweeps as soon as it is done
  # shellcheck disable=SC2046
  train "$1" "$2_s$3" train_stage2.py "$1/s$3/$2" $(arm_flags "$2") "${S2[@]}" \
    --dataset="$1/data" --seed="$3" --init_from="$1/s$3/stage1/ckpt.pt" || return 1
  sweep "$1" "$2" "$3" val & sweep "$1" "$2" "$3" test &
  if [ "$2" = rcd_paper ]; then
    for f in ${FIRST_STEPS:-}; do
      sweep "$1" "$2" "$3" val "$f" & sweep "$1" "$2" "$3" test "$f" &
    done
  fi
  wait
}
seed() {  # seed TASK SEED: stage 1, then every arm side by side: nothing waits on another seed
  train "$1" "stage1_s$2" train_stage1.py "$1/s$2/stage1" "${S1[@]}" --dataset="$1/data" \
    --seed="$2" || return 1
  for a in $ARMS; do arm "$1" "$a" "$2" & done
  wait
}
task() {  # task TASK DIG SEEDS: its data (a data seed of its own), then every seed side by side
  mkdir -p "$1/logs" "$1/val" "$1/test"
  if [ ! -f "$1/data/DONE" ]; then
    job "$1" prepare python data/sudoku/prepare.py --dig="$2" --seed="$DATA_SEED" "${PREP[@]}" \
      --out_dir="$1/data" || return 1
    touch "$1/data/DONE"
  fi
  for s in $3; do seed "$1" "$s" & done
  wait
}
say() { echo "[$(( $(date +%s) - START )) s] $*"; }

say "hard: seeds ${HARD:-none}; easy: seeds ${EASY:-none}; arms $ARMS; $JOBS jobs at once" \
  "on $GPUS GPUs"
TASKS=()
if [ -n "${HARD// }" ]; then TASKS+=("$RUN_DIR/hard"); task "$RUN_DIR/hard" greedy "$HARD" & fi
if [ -n "${EASY// }" ]; then TASKS+=("$RUN_DIR/easy"); task "$RUN_DIR/easy" random "$EASY" & fi
wait
failed=()
for f in "$RUN_DIR"/*/logs/*.failed; do
  if [ -e "$f" ]; then failed+=("${f#"$RUN_DIR"/}"); fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed: ${failed[*]%.failed} (their .log beside them); run the same command again to" \
    "resume" >&2
  exit 1
fi
for t in "${TASKS[@]}"; do
  for split in val test; do cat "$t/$split"/*.jsonl > "$t/$split.jsonl"; done
  echo "## $(basename "$t")"
  python eval.py --report="$t/test.jsonl" --val="$t/val.jsonl" | grep -v '^config:' \
    | tee "$t/results.md"
  if python -c 'import matplotlib' 2> /dev/null; then
    python eval.py --plot="$t/test.jsonl" --val="$t/val.jsonl" | grep -v '^config:'
  fi
done
say "recipe ($MODE) done; tables in ${TASKS[*]/%//results.md}"
