# Character-level Shakespeare (nine plays shipped in data/shakespeare_char/) on one GPU.
out_dir = 'out/shakespeare_char'
dataset = 'shakespeare_char'
seq_len = 256
block_size = 16
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.2
batch_size = 64
max_iters = 5000
lr_decay_iters = 5000
learning_rate = 1e-3
