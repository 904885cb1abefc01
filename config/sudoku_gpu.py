# One GPU, the embedded Sudoku task: the 81-digit answer is one diffusion block (data/sudoku/prepare.py).
out_dir = 'out/stage1'
dataset = 'sudoku'
seq_len = 192
block_size = 96
n_layer = 6
n_head = 6
n_embd = 384
batch_size = 256
max_iters = 4000
lr_decay_iters = 4000
learning_rate = 1e-3
