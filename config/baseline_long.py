# The recipe's baseline_long arm: the baseline trained for the rollout arms' compute (a rollout
# step costs 1.755 stage-1 steps: bench.py --sizes=sudoku, one H100).
out_dir = 'out/baseline_long'
alpha_mode = 'none'
rollout_steps = 0
max_iters = 1755
lr_decay_iters = 1755
