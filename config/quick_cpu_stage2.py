# Stage 2 after the CPU quick start (config/quick_cpu.py): the README's RCD arm, about 90 s.
out_dir = 'out/quick_cpu_stage2'
dataset = 'sudoku4'
init_from = 'out/quick_cpu/ckpt.pt'
device = 'cpu'
batch_size = 64
max_iters = 150
lr_decay_iters = 150
warmup_iters = 10
learning_rate = 1e-3
eval_interval = 50
eval_iters = 5
log_interval = 25
