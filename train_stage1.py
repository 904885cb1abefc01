"""
Stage 1: train the ordinary block-diffusion model. Its checkpoint is stage 2's starting point (and
the frozen reference of the paper's recipe). The defaults are the README's result: 9x9 Sudoku on one
GPU, the 81-digit answer one diffusion block.

    python train_stage1.py                                  # 9x9 Sudoku, one GPU (minutes)
    python train_stage1.py config/quick_cpu.py              # 4x4 Sudoku: minutes on a CPU
    python train_stage1.py config/reasoning_gpu.py          # the arithmetic task
    python train_stage1.py --init_from=resume               # continue out_dir/ckpt.pt exactly

Reads top to bottom: config, setup, one training step's loss, then the training loop.
"""
import os
import signal
import sys
from functools import partial

# Ctrl-C while torch loads: quit quietly (until configure())
signal.signal(signal.SIGINT, lambda *_: os._exit(130))

import torch

import common
from checkpoint import build_model, start_run
from configurator import configure
from data.datasets import Batches, load_dataset
from model import add_noise, loss_weights

# --------------------------------------------------------------------------------------------------
# config: override with config/*.py files and --key=value flags
out_dir = 'out/stage1'
init_from = 'scratch'        # 'scratch', or 'resume' from out_dir/ckpt.pt
dataset = 'sudoku'           # data/<dataset>/ (prepared on first use), or a prepared directory
# model
n_layer = 6
n_head = 6
n_embd = 384
dropout = 0.0
seq_len = 192                # L, the context; for row datasets it must equal the rows' length
block_size = 96              # B, the diffusion block; must divide seq_len
# noise and loss
mask_rate_min = 0.0          # a block's masking rate t: uniform in (mask_rate_min, mask_rate_max]
mask_rate_max = 1.0
loss_weighting = 'elbo'      # 'elbo' (1/t-weighted, per token) or 'mean' (over masked positions)
# optimization
batch_size = 256
grad_accum_steps = 1
max_iters = 2500
learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
lr_decay_iters = 2500
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
# evaluation, logging, checkpoints
eval_interval = 500
eval_iters = 20
log_interval = 50
always_save_checkpoint = False
eval_only = False            # measure train/val loss once and exit: no training, no checkpoint
# system
device = 'auto'              # 'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:1', ...
dtype = 'auto'               # 'auto' (bf16 autocast on CUDA, fp32 on CPU), 'bfloat16', 'float32'
compile = True               # torch.compile on CUDA (FlexAttention is fused only when compiled)
seed = 1337
config_keys = [k for k, v in globals().items()
               if not k.startswith('_') and isinstance(v, (int, float, bool, str))]
configure(globals(), config_keys, sys.argv[1:])
config = {k: globals()[k] for k in config_keys}
# --------------------------------------------------------------------------------------------------

common.check_train_config(config, stage=1)  # a bad setting is one line, before any work
device, autocast, n_proc = common.setup(config)  # seed, device, torchrun's processes
meta = load_dataset(dataset)
batches = Batches(meta, seq_len, batch_size, device)
model_args = dict(vocab_size=meta['vocab_size'], mask_id=meta['mask_id'], seq_len=seq_len,
                  block_size=block_size, n_layer=n_layer, n_head=n_head, n_embd=n_embd,
                  dropout=dropout)
ckpt = start_run(config, meta, 1, model_args)  # a fresh run, or out_dir/ckpt.pt resumed
model = build_model(ckpt['model_args'], ckpt['model']).to(device)
optimizer = model.configure_optimizer(weight_decay, learning_rate, (beta1, beta2), device.type)
if init_from == 'resume':
    optimizer.load_state_dict(ckpt['optimizer'])
compiled, forward = common.compile_and_wrap(model, compile, device, n_proc)


def batch_loss(forward, split, batch_seed):
    """Noise every block at its own rate, denoise all blocks in one pass against their clean
    prefixes, and score the masked positions."""
    x0, prompt_mask, gen = batches.get(split, batch_seed)
    x_t, masked, t = add_noise(x0, prompt_mask, block_size, meta['mask_id'], mask_rate_min,
                               mask_rate_max, gen)
    return forward(x_t, x0, loss_weights=loss_weights(masked, t, prompt_mask, loss_weighting))


# --------------------------------------------------------------------------------------------------
# the training loop
run = common.Run(config, ckpt, model, optimizer, device, n_proc)  # log, progress, MFU, saving
iter_num = run.start
while True:
    lr = common.lr_at(iter_num, learning_rate, min_lr, warmup_iters, lr_decay_iters)
    for group in optimizer.param_groups:
        group['lr'] = lr
    if iter_num % eval_interval == 0 or iter_num == max_iters:
        run.evaluate(iter_num, partial(batch_loss, compiled), autocast)  # saves a better model
        if eval_only:
            break
    if iter_num >= max_iters:
        break
    for batch_seed in run.micro_batches(forward, iter_num):  # this process's share of them
        with autocast:
            loss = batch_loss(forward, 'train', batch_seed) / run.micro_batches_per_process
        loss.backward()
        run.add_loss(loss)
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    iter_num += 1
    run.log(iter_num, lr)  # every log_interval: loss, tokens/s, MFU, time left
run.leave(forward)
