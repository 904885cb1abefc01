# Under 3 minutes on 2 CPU cores: a tiny model learns 4x4 Sudoku (data/sudoku4); it solves about
# three quarters of the held-out puzzles at 1 token per step.
out_dir = 'out/quick_cpu'
dataset = 'sudoku4'
device = 'cpu'
seq_len = 40                 # the puzzle's block and the answer's block
block_size = 20
n_layer = 3
n_head = 4
n_embd = 128
batch_size = 64
max_iters = 700
lr_decay_iters = 700
warmup_iters = 20
learning_rate = 1e-3         # 2e-3 left 1 of 5 seeds stuck at val loss 0.57 (0% solved)
eval_interval = 50           # a checkpoint every 50 iterations: a stopped run can be resumed
eval_iters = 2
log_interval = 50
