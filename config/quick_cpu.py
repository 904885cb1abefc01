# A few minutes on 2 CPU cores: a tiny model learns the format of the reasoning dataset (not yet the arithmetic).
out_dir = 'out/quick_cpu'
device = 'cpu'
n_layer = 4
n_head = 4
n_embd = 128
batch_size = 32
max_iters = 400
lr_decay_iters = 400
warmup_iters = 20
learning_rate = 2e-3
eval_interval = 50           # a checkpoint every 50 iterations: a stopped run can be resumed
eval_iters = 5
log_interval = 20
