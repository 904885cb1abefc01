# One GPU, the embedded arithmetic dataset (data/reasoning; minutes on an H100).
out_dir = 'out/stage1'
dataset = 'reasoning'
seq_len = 96
block_size = 8
n_layer = 6
n_head = 6
n_embd = 384
batch_size = 256
max_iters = 4000
lr_decay_iters = 4000
learning_rate = 1e-3
